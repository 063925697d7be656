"""Connectivity matrix: the real broker, daemon and viewer in every device NAT × viewer NAT cell
of the NAT lab (needs root).

    python -m hil.matrix                 # LAN cells once, print the table (what make test asserts)
    python -m hil.matrix --full          # LAN + the 3G/GPRS subset, median of 5, write docs/
    python -m hil.matrix --cell symmetric:full_cone --cell hairpin:hairpin:gprs

``cells`` names the cells and judges them (no I/O), ``rig`` runs one cell, ``report`` writes
``docs/connectivity.md`` and ``docs/connectivity.json``. ``tests/test_matrix.py`` runs the LAN
cells in ``make test``; ``make matrix`` runs ``--full`` and regenerates the docs.
"""

from hil.matrix.cells import Cell, CellPlan, full_plan, lan_cells, profile_cells, quick_plan
from hil.matrix.rig import CellRecord, MatrixError, MatrixRig, matrix_rig
from hil.matrix.runner import meta, run_plans

__all__ = [
    "Cell",
    "CellPlan",
    "CellRecord",
    "MatrixError",
    "MatrixRig",
    "full_plan",
    "lan_cells",
    "matrix_rig",
    "meta",
    "profile_cells",
    "quick_plan",
    "run_plans",
]
