"""Type-check the supervisor firmware (supervisor/*.py) against MicroPython's stubs.

    python tests/support/micropython_typecheck.py       (make typecheck-supervisor)

The stubs are the PyPI distributions ``micropython-rp2-rpi-pico-stubs`` (machine, time, select,
micropython for the RP2040) and ``micropython-stdlib-stubs`` (MicroPython's cut of the standard
library, laid out as a typeshed), installed by pyproject's dev extra. mypy reads stubs from
site-packages only for packages marked PEP 561, which these are not, so this links their files
into one folder under .typecheck/ and hands it to mypy as MYPYPATH and as the typeshed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
STUB_DISTRIBUTIONS = ("micropython-rp2-rpi-pico-stubs", "micropython-stdlib-stubs")
TREE = ROOT / ".typecheck" / "supervisor-stubs"


def link_stubs() -> Path:
    """Link the stubs' top-level modules and folders into TREE; return it.

    Raises SystemExit naming the missing distribution and how to install it.
    """
    TREE.mkdir(parents=True, exist_ok=True)
    for name in STUB_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(
                f"{name} is not installed in {sys.prefix}: pip install -e '.[dev]' (make venv) installs it"
            ) from None
        tops = {Path(str(f)).parts[0] for f in dist.files or () if str(f).endswith((".pyi", "VERSIONS"))}
        for top in sorted(tops):
            target = Path(str(dist.locate_file(top)))
            link = TREE / top
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
    return TREE


def main() -> int:
    tree = link_stubs()
    files = sorted(str(p) for p in (ROOT / "supervisor").glob("*.py"))
    env = dict(os.environ, MYPYPATH=str(tree))
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "supervisor" / "mypy.ini"),
        "--custom-typeshed-dir",
        str(tree),
        "--cache-dir",
        str(ROOT / ".typecheck" / "supervisor-cache"),
        *files,
    ]
    return subprocess.run(command, env=env, cwd=ROOT / "supervisor", check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
