"""The modem rig of ``support.modem_rig`` works: it brings an emulated Quectel EC25 online with
its APN, identity, operator and signal.
"""

from __future__ import annotations

from pathlib import Path

from support.aio import run
from support.modem_rig import needs_database, running

from hil.modememu import SimCard


@needs_database
def test_rig_brings_a_quectel_ec25_online(tmp_path: Path) -> None:
    sim = SimCard.for_network(
        "26201", iccid="89490200001234500001", working_apns=frozenset({"internet.telekom"})
    )

    async def main() -> None:
        async with running("quectel-ec25", sim, tmp_path) as rig:
            status = await rig.online()
            assert status.apn == "internet.telekom"
            assert (status.vendor, status.model) == ("Quectel", "EC25")
            status = await rig.wait(lambda s: s.signal_dbm is not None and s.operator != "")
            assert (status.rat, status.operator) == ("LTE", "Emulated Net")
            # +CSQ 20 is -73 dBm; +CESQ's RSRP index 60 is -81 dBm (whichever came last)
            assert status.signal_dbm in (-73, -81)
            assert rig.runner.steps_taken == []

    run(main)
