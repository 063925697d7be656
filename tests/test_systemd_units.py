"""The systemd units pass ``systemd-analyze verify`` against a staged install tree.

The units name ``/usr/bin/dvrlinkd`` and ``/usr/bin/dvrlink-broker``: the install path of a
distribution package, a Buildroot image or ``pip install --prefix /usr``. The stage is made the
way a package build makes it (``pip install --root STAGE --prefix /usr``), with the host's
systemd targets beside the units, and ``systemd-analyze`` runs with ``--root=STAGE``, so it checks
the programs the stage really holds. The units' sandboxing keeps its exposure score.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = {"dvrlinkd.service": 2.2, "dvrlink-broker.service": 1.6}  # exposure scores to keep
HOST_UNITS = Path("/lib/systemd/system")
UNIT_DIR = "usr/lib/systemd/system"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not HOST_UNITS.is_dir(),
    reason="systemd-analyze is not installed (Debian package systemd; `make test` installs it as root)",
)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stage")
    build = tmp_path_factory.mktemp("build")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--ignore-installed",  # stage a copy: never uninstall the running environment's dvrlink
            "--no-warn-script-location",
            "--root",
            str(root),
            "--prefix",
            "/usr",
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=build,
    )
    assert result.returncode == 0, f"staged install failed:\n{result.stdout}\n{result.stderr}"
    own = Path(sys.executable).parent / "dvrlinkd"
    assert own.exists(), f"staging the install removed {own} from the environment running the tests"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for target in HOST_UNITS.glob("*.target"):
        shutil.copy(target, units)
    for name in UNITS:
        shutil.copy(REPO / "systemd" / name, units / name)
    sysusers = root / "usr/lib/sysusers.d"
    sysusers.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "systemd/dvrlink.sysusers.conf", sysusers / "dvrlink.conf")
    return root


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", str(root / UNIT_DIR / unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_verifies_against_the_staged_install(stage: Path, unit: str) -> None:
    for program in ("dvrlinkd", "dvrlink-broker", "dvrlink"):
        assert (stage / "usr/bin" / program).is_file(), f"the staged install has no /usr/bin/{program}"
    result = verify(stage, unit)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"systemd-analyze verify {unit}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    )


def test_verify_fails_when_the_program_is_not_where_the_unit_says(stage: Path, tmp_path: Path) -> None:
    program = stage / "usr/bin/dvrlinkd"
    moved = tmp_path / "dvrlinkd"
    shutil.move(program, moved)
    try:
        result = verify(stage, "dvrlinkd.service")
    finally:
        shutil.move(moved, program)
    assert result.returncode != 0, "verify passed although /usr/bin/dvrlinkd is missing from the stage"
    assert "/usr/bin/dvrlinkd" in result.stderr, result.stderr


@pytest.mark.parametrize(("unit", "limit"), sorted(UNITS.items()))
def test_unit_keeps_its_exposure_score(stage: Path, unit: str, limit: float) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={stage}", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    output = result.stdout + result.stderr
    assert found, f"no exposure level in the output of systemd-analyze security:\n{output}"
    assert float(found.group(1)) <= limit, f"{unit}: exposure {found.group(1)} is worse than {limit}"
