"""An idle dvrlinkd loads neither the session stack nor the modem stack (issue 13, a lean daemon).

Each check imports in a fresh interpreter, since this test process has loaded everything already.
The figures behind it are in docs/benchmarks.md, section 4 (``bench.daemon_memory``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SESSION_STACK = ("aioquic", "aioice", "dns", "dvrlink.session.connectivity", "dvrlink.protocol.session")
MODEM_STACK = (
    "dvrlink.modem.manager",
    "dvrlink.modem.profiles",
    "dvrlink.modem.apn",
    "dvrlink.protocol.at_engine",
    "dvrlink.daemon.modem_service",
    "dvrlink.modem.ppp",
)
"""The package ``dvrlink.modem`` itself may load (it names the provider database's path)."""
ON_DEMAND = (
    "importlib.metadata",
    "xml.etree.ElementTree",
    "dvrlink.daemon.console",
    "dvrlink.daemon.supervisor_service",
    "dvrlink.daemon.supervisor_link",
    "serial",
)
"""Each loads only when used: ``--version`` or the ``info`` RPC, the APN database, a console, the
board's supervisor (``[board] supervisor``, with pyserial)."""


def loaded_after(*imports: str) -> set[str]:
    """The modules a fresh interpreter holds after ``imports``."""
    program = (
        "import importlib, json, sys\n"
        f"for name in {list(imports)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"importing {imports} failed:\n{done.stderr}"
    return set(json.loads(done.stdout))


def offenders(loaded: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(name for name in loaded if any(name == p or name.startswith(p + ".") for p in packages))


@pytest.mark.parametrize("entry", ["dvrlink.daemon.config", "dvrlink.daemon.app", "dvrlink.daemon.cli"])
def test_the_idle_daemon_imports_no_session_or_modem_stack(entry: str) -> None:
    loaded = loaded_after(entry)
    assert "dvrlink.daemon.session_server" in loaded or entry == "dvrlink.daemon.config", sorted(loaded)
    for stack in (SESSION_STACK, MODEM_STACK, ON_DEMAND):
        found = offenders(loaded, stack)
        assert not found, f"import {entry} loaded {found}: import them where they are first needed"


def test_the_stacks_load_when_a_session_or_a_modem_needs_them() -> None:
    loaded = loaded_after("dvrlink.daemon.cli", "dvrlink.session.runner", "dvrlink.daemon.modem_service")
    assert offenders(loaded, ("aioquic",)) and offenders(loaded, ("aioice",)), (
        "the session stack did not load"
    )
    assert "dvrlink.modem.manager" in loaded, "the modem stack did not load"
