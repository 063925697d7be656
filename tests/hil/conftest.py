"""The QEMU rig's fixtures: the cached arm64 image (built here if the tree changed) and a broker
on the host.

These tests boot an emulated board for minutes, so the default run (``pytest``, ``make test``)
does not collect this folder (``norecursedirs`` in pyproject.toml). Run them with
``pytest tests/hil`` (or ``make hil``) as root; the first run builds the image (docs/hil.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvrlink.broker.state import BrokerInfo, read_info
from hil.qemu.build import Image, build
from hil.qemu.host import LoggedProcess
from hil.qemu.targets import Target, target

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def arm64() -> Target:
    return target("arm64")


@pytest.fixture(scope="session")
def arm64_image(arm64: Target) -> Image:
    """The image for the tree as it is now: seconds when cached, minutes on a cold cache."""
    return build(arm64, out=sys.stderr)


@pytest.fixture(scope="module")
def host_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoggedProcess, BrokerInfo]]:
    """dvrlink-broker on the host (all addresses, free ports); the guest reaches it as 10.0.2.2."""
    state = tmp_path_factory.mktemp("broker")
    argv = [str(BIN / "dvrlink-broker"), "serve", "--state-dir", str(state)]
    for option in ("--udp-port", "--https-port", "--turn-port", "--presence-tcp-port"):
        argv += [option, "0"]
    broker = LoggedProcess(argv, state / "broker.log")
    try:
        broker.wait_for("dvrlink-broker ready", 60)
        yield broker, read_info(state)
    finally:
        code = broker.stop()
    assert code == 0, f"dvrlink-broker exited with {code}:\n" + "".join(broker.lines[-20:])
