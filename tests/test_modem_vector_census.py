"""The census of ModemManager's vectors (``support.vectors``): each vector module checks its own
rows; here, that their shares add up to the 120 the issue asks for."""

from __future__ import annotations

from support.vectors import MINIMUM, SHARES


def test_the_modules_shares_add_up_to_at_least_120_vectors() -> None:
    total = sum(SHARES.values())
    assert total >= MINIMUM, f"only {total} ModemManager vectors ({SHARES}); the issue asks for {MINIMUM}"
