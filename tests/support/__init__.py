"""What the tests share: fixtures, fakes, rigs and the one way to wait.

Test modules import from here (``from support.waiting import wait_until``); no test module imports
another. ``tests`` is on pytest's ``pythonpath`` (pyproject.toml), so this package is ``support``.
"""
