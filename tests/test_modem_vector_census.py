"""The census of ModemManager's vectors: the modem parsers are checked against at least 120 real
modem replies taken from ModemManager's test suite, each row citing the test function it comes
from. The rows live in the modules that run them; this counts them, so that a row dropped or left
without its source shows here.
"""

from __future__ import annotations

import re
from collections import Counter

import test_modem_identity_vectors as identity
import test_modem_pdp_vectors as pdp
import test_modem_registration_vectors as registration
import test_modem_sms_vectors as sms

SOURCES: dict[str, list[str]] = {
    "test_modem_registration_vectors": [row[0] for row in registration.VECTORS],
    "test_modem_identity_vectors": [row[0] for row in identity.ICCID_VECTORS + identity.IMEI_VECTORS],
    "test_modem_pdp_vectors": [row[0] for row in pdp.VECTORS],
    "test_modem_sms_vectors": [row[0] for row in sms.VECTORS],
}
MINIMUM = 120


def test_every_vector_cites_a_modemmanager_test_function_by_its_c_name() -> None:
    bad = [
        (module, s)
        for module, sources in SOURCES.items()
        for s in sources
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", s)
    ]
    assert not bad, f"rows without a ModemManager test function as their source: {bad}"


def test_at_least_120_vectors_from_modemmanager_run() -> None:
    counts = Counter({module: len(sources) for module, sources in SOURCES.items()})
    total = sum(counts.values())
    assert total >= MINIMUM, (
        f"only {total} ModemManager vectors ({dict(counts)}); the issue asks for {MINIMUM}"
    )
