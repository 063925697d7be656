"""The census of ModemManager's vectors: the modem parsers are checked against at least 120 real
modem replies taken from ModemManager's test suite, each row citing the test function it comes
from. The rows live in the modules that run them; each of those modules checks its own rows here
against its share of the 120, so that a row dropped or left without its source shows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MINIMUM = 120
"""Rows the issue asks for, over all modules."""
SHARES = {
    "test_modem_registration_vectors": 44,
    "test_modem_identity_vectors": 19,
    "test_modem_pdp_vectors": 90,
    "test_modem_sms_vectors": 37,
}
"""Rows each module holds today (190 in all): a module with fewer lost one."""


def check_census(module: str, sources: Sequence[str]) -> None:
    """Fail unless ``module`` has its share of rows and each cites a ModemManager test function
    by its C name (``test_creg2_ublox_solicited``)."""
    bad = [s for s in sources if not re.fullmatch(r"[a-z_][a-z0-9_]*", s)]
    assert not bad, f"{module}: rows without a ModemManager test function as their source: {bad}"
    assert len(sources) >= SHARES[module], (
        f"{module}: {len(sources)} ModemManager vectors, {SHARES[module]} before: a row was dropped"
    )
