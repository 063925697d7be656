"""The modem stack's timers scaled down for the emulator, which answers at once.

A real modem takes seconds to find its SIM and the network; the defaults of ``ModemConfig`` and
``DriverConfig`` wait that long. Against the emulator the same steps take milliseconds, so the
tests and ``bench.modem_online`` poll and back off on this scale instead. One place for both,
so a benchmark's "fast" run measures what the tests exercise.

The command cap (1 s) and the unresponsive threshold (1.5 s) leave room for a busy machine: with
0.4 s and 0.6 s a loaded two-core host delayed the emulator's answers past them, and the ladder
climbed rungs the fault under test did not call for.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dvrlink.modem.apn import DEFAULT_DATABASE, ApnConfig
from dvrlink.modem.driver import DriverConfig
from dvrlink.modem.ladder import LadderConfig
from dvrlink.modem.manager import ModemConfig
from dvrlink.modem.profiles import profile_by_name
from dvrlink.protocol.at_engine import AtConfig

COMMAND_CAP_S = 1.0
"""Every AT command's timeout is capped at this (``DriverConfig.command_timeout_cap_s``): a reply
later than this counts as none."""


def emulator_modem_config(profile: str, **overrides: Any) -> ModemConfig:
    """``ModemConfig`` for ``profile`` with the emulator's timers; ``overrides`` replace fields."""
    base = ModemConfig(
        profile=profile_by_name(profile),
        apn=ApnConfig(database=DEFAULT_DATABASE),
        sim_poll_s=0.3,
        sim_debounce_s=0.05,
        iccid_check_s=1.0,
        registration_poll_s=0.5,
        registration_timeout_s=5.0,
        registration_backoff_s=0.2,
        registration_backoff_max_s=0.8,
        signal_poll_s=0.5,
        probe_interval_s=0.2,
        data_backoff_s=0.2,
        at_unresponsive_s=1.5,
        reset_wait_s=1.5,
        ecm_result_timeout_s=1.0,
    )
    return replace(base, **overrides)


def emulator_driver_config(**overrides: Any) -> DriverConfig:
    """``DriverConfig`` with the emulator's timers: quick AT resync, no pause between ladder
    rungs, short command caps and port polls; ``overrides`` replace fields."""
    base = DriverConfig(
        at=AtConfig(resync_timeout=0.15, resync_settle=0.05),
        ladder=LadderConfig(min_interval_s=(0.0,) * 8, stable_s=60.0, round_pause_s=0.5),
        command_timeout_cap_s=COMMAND_CAP_S,
        port_poll_s=0.02,
        port_wait_s=2.0,
    )
    return replace(base, **overrides)
