"""The QEMU rig's fixtures: the cached arm64 image (built here if the tree changed) and a broker
on the host.

These tests boot an emulated board for minutes, so the default run (``pytest``, ``make test``)
does not collect this folder (``norecursedirs`` in pyproject.toml). Run them with
``pytest tests/hil`` (or ``make hil``) as root; the first run builds the image (docs/hil.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from hil.qemu.build import Image, build
from hil.qemu.host import HostBroker
from hil.qemu.targets import Target, target


@pytest.fixture(scope="session")
def arm64() -> Target:
    return target("arm64")


@pytest.fixture(scope="session")
def arm64_image(arm64: Target) -> Image:
    """The image for the tree as it is now: seconds when cached, minutes on a cold cache."""
    return build(arm64, out=sys.stderr)


@pytest.fixture(scope="module")
def host_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostBroker]:
    """dvrlink-broker on the host (all addresses, free ports); the guest reaches it as 10.0.2.2."""
    broker = HostBroker.start(tmp_path_factory.mktemp("broker"))
    try:
        yield broker
    finally:
        code = broker.stop()
    assert code == 0, f"dvrlink-broker exited with {code}:\n" + "".join(broker.process.lines[-20:])
