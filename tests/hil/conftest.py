"""The QEMU rig's fixtures: the cached arm64 image (built here if the tree changed).

These tests boot an emulated board for minutes, so the default run (``pytest``, ``make test``)
does not collect this folder (``norecursedirs`` in pyproject.toml). Run them with
``pytest tests/hil`` as root; the first run builds the image (docs/hil.md).
"""

from __future__ import annotations

import sys

import pytest

from hil.qemu.build import Image, build
from hil.qemu.targets import Target, target


@pytest.fixture(scope="session")
def arm64() -> Target:
    return target("arm64")


@pytest.fixture(scope="session")
def arm64_image(arm64: Target) -> Image:
    """The image for the tree as it is now: seconds when cached, minutes on a cold cache."""
    return build(arm64, out=sys.stderr)
