"""List the Kconfig symbols a Buildroot checkout defines, for buildroot/core-symbols.txt.

    python3 buildroot/tools/core_symbols.py BUILDROOT_DIR [--commit SHA] > buildroot/core-symbols.txt

It reads every ``Config.in*`` file of the checkout (``Config.in``, ``Config.in.host``,
``arch/Config.in.arm``, ...) except ``Config.in.legacy`` (options Buildroot removed: a defconfig
that sets one is out of date) and the test suite's own external trees, and prints each symbol
defined by ``config`` or ``menuconfig``, sorted, after a header naming the Buildroot version (from
the checkout's Makefile) and the commit (``--commit``, else ``git rev-parse HEAD`` in the checkout).
The tree's structure test checks every symbol a defconfig sets against this list and the
external tree's own Config.in files.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

DEFINITION = re.compile(r"^\s*(?:menu)?config\s+(BR2_\w+)\s*$")
VERSION = re.compile(r"^export BR2_VERSION\s*:=\s*(\S+)\s*$", re.MULTILINE)
SKIPPED_PARTS = ("support/testing/",)


def kconfig_files(root: Path) -> list[Path]:
    """The checkout's Kconfig files, sorted, without Config.in.legacy and the test suite's."""
    found = []
    for path in root.rglob("Config.in*"):
        relative = path.relative_to(root).as_posix()
        if path.name == "Config.in.legacy" or relative.startswith(SKIPPED_PARTS) or not path.is_file():
            continue
        found.append(path)
    return sorted(found)


def defined_symbols(lines: Iterable[str]) -> set[str]:
    """The symbols that ``config NAME`` and ``menuconfig NAME`` lines define."""
    return {match.group(1) for line in lines if (match := DEFINITION.match(line))}


def checkout_version(root: Path) -> str:
    """BR2_VERSION from the checkout's Makefile.

    Raises:
        SystemExit: no Makefile with BR2_VERSION: not a Buildroot checkout.
    """
    try:
        match = VERSION.search((root / "Makefile").read_text(encoding="utf-8"))
    except OSError as exc:
        raise SystemExit(
            f"{root}: cannot read its Makefile ({exc.strerror}); pass a Buildroot checkout"
        ) from None
    if match is None:
        raise SystemExit(f"{root}/Makefile sets no BR2_VERSION; pass a Buildroot checkout")
    return match.group(1)


def checkout_commit(root: Path) -> str:
    """The checkout's commit, or ``unknown`` when it is not a git work tree."""
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def render(symbols: Iterable[str], version: str, commit: str) -> str:
    """The list file: a header of comment lines, then one symbol per line."""
    header = [
        "# Buildroot Kconfig symbols (config/menuconfig in Config.in* files, without Config.in.legacy)",
        f"# Buildroot version: {version}",
        f"# Buildroot commit: {commit}",
        "# Made by buildroot/tools/core_symbols.py; to refresh:",
        "#   python3 buildroot/tools/core_symbols.py BUILDROOT_DIR > buildroot/core-symbols.txt",
    ]
    return "\n".join([*header, *sorted(set(symbols))]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the list for the checkout named on the command line; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a Buildroot source tree")
    parser.add_argument("--commit", help="the checkout's commit (default: git rev-parse HEAD in it)")
    args = parser.parse_args(argv)
    root: Path = args.checkout
    version = checkout_version(root)
    symbols: set[str] = set()
    for path in kconfig_files(root):
        symbols |= defined_symbols(path.read_text(encoding="utf-8", errors="replace").splitlines())
    if not symbols:
        raise SystemExit(f"{root}: no Config.in file defines a symbol; pass a Buildroot checkout")
    sys.stdout.write(render(symbols, version, args.commit or checkout_commit(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
