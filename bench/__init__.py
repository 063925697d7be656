"""Benchmarks that print their figures.

Run each with ``python -m bench.<name>`` from the repository root; ``--quick`` is a smoke run.

Results, with the command, date and machine, are recorded in docs/benchmarks.md.
"""
