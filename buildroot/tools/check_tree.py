"""Structure checks of the BR2_EXTERNAL tree that need no Buildroot build (no downloads).

    python3 buildroot/tools/check_tree.py [TREE]     (TREE: default, the buildroot/ folder)

Exit status 0 when the tree passes, 1 with one line per problem otherwise. It checks that:

- every package folder's Config.in is sourced from the tree's Config.in, and every source line
  names a file that exists;
- every variable a package's .mk sets or defines starts with the prefix its folder name gives
  (``python-aioice`` -> ``PYTHON_AIOICE_``), and its Config.in defines ``BR2_PACKAGE_<prefix>``;
- every package that downloads has a .hash file with a sha256 line for its source archive and for
  each of its license files;
- every symbol a defconfig sets (``BR2_X=...`` or ``# BR2_X is not set``), and every symbol the
  tree's Config.in files select or depend on, is defined by the tree or listed in core-symbols.txt
  (Buildroot's own symbols, from tools/core_symbols.py).

Buildroot's own ``utils/check-package`` checks the files' style (``make buildroot-check``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

EXTERNAL_PATH = re.compile(r"\$\(?BR2_EXTERNAL_(\w+)_PATH\)?")
SOURCE_LINE = re.compile(r'^\s*source\s+"([^"]+)"\s*$')
DEFINITION = re.compile(r"^\s*(?:menu)?config\s+(BR2_\w+)\s*$")
REFERENCE = re.compile(r"^\s*(?:select|depends\s+on|imply)\s+(.*)$")
SYMBOL = re.compile(r"\bBR2_\w+")
MK_ASSIGNMENT = re.compile(r"^([A-Za-z0-9_]+)\s*(?::=|\+=|\?=|=)")
MK_DEFINE = re.compile(r"^define\s+([A-Za-z0-9_]+)")
MK_VALUE = re.compile(r"^([A-Z0-9_]+)\s*=\s*(.*?)\s*$")
MAKE_REFERENCE = re.compile(r"\$\(([A-Z0-9_]+)\)")
DEFCONFIG_SET = re.compile(r"^(BR2_\w+)=")
DEFCONFIG_UNSET = re.compile(r"^# (BR2_\w+) is not set$")
HASH_LINE = re.compile(r"^sha256\s+([0-9a-f]{64})\s+(\S+)\s*$")
DOWNLOAD_INFRA = ("python-package", "generic-package", "autotools-package", "cmake-package", "meson-package")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the tree: where, and what to do."""

    path: Path
    line: int
    """1-based line number; 0 for the file as a whole."""
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.message}"


def external_name(tree: Path) -> str:
    """The ``name:`` of the tree's external.desc (``DVRLINK``).

    Raises:
        ValueError: no external.desc, or it has no name.
    """
    desc = tree / "external.desc"
    try:
        text = desc.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{desc}: cannot read it ({exc.strerror}); a BR2_EXTERNAL tree needs one") from None
    for line in text.splitlines():
        if line.startswith("name:"):
            return line.partition(":")[2].strip()
    raise ValueError(f"{desc}: no 'name:' line; add one, e.g. 'name: DVRLINK'")


def package_prefix(folder_name: str) -> str:
    """The make variable prefix Buildroot derives from a package folder name."""
    return folder_name.upper().replace("-", "_").replace(".", "_")


def check_tree(tree: Path, core_symbols: Iterable[str]) -> list[Problem]:
    """Every structural problem of the BR2_EXTERNAL tree at ``tree``; empty when it passes."""
    tree = Path(tree)
    try:
        name = external_name(tree)
    except ValueError as exc:
        return [Problem(tree / "external.desc", 0, str(exc))]
    problems: list[Problem] = []
    packages = sorted(p for p in (tree / "package").iterdir() if p.is_dir())
    problems += _check_sources(tree, name, packages)
    defined: set[str] = set()
    for config in sorted(tree.rglob("Config.in*")):
        defined |= {m.group(1) for line in _lines(config) if (m := DEFINITION.match(line))}
    for package in packages:
        problems += _check_package(package)
    known = defined | set(core_symbols)
    for config in sorted(tree.rglob("Config.in*")):
        problems += _check_references(config, known)
    for defconfig in sorted((tree / "configs").glob("*_defconfig")):
        problems += _check_defconfig(defconfig, known)
    return problems


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _check_sources(tree: Path, name: str, packages: Sequence[Path]) -> list[Problem]:
    top = tree / "Config.in"
    problems = []
    sourced: set[Path] = set()
    for number, line in enumerate(_lines(top), 1):
        match = SOURCE_LINE.match(line)
        if match is None:
            continue
        text = match.group(1)
        used = EXTERNAL_PATH.search(text)
        if used is None or used.group(1) != name:
            problems.append(
                Problem(top, number, f"source {text!r} does not start with $BR2_EXTERNAL_{name}_PATH")
            )
            continue
        target = (tree / EXTERNAL_PATH.sub("", text, count=1).lstrip("/")).resolve()
        if not target.is_file():
            problems.append(Problem(top, number, f"source {text!r} names a file that does not exist"))
        sourced.add(target)
    for package in packages:
        config = (package / "Config.in").resolve()
        if not config.is_file():
            problems.append(Problem(package, 0, "package folder without a Config.in"))
        elif config not in sourced:
            problems.append(
                Problem(
                    top,
                    0,
                    f"package/{package.name}/Config.in is not sourced; add "
                    f'source "$BR2_EXTERNAL_{name}_PATH/package/{package.name}/Config.in"',
                )
            )
    return problems


def _check_package(package: Path) -> list[Problem]:
    prefix = package_prefix(package.name)
    mk = package / f"{package.name}.mk"
    if not mk.is_file():
        return [Problem(package, 0, f"no {mk.name}: a package's .mk is named after its folder")]
    problems = []
    values: dict[str, str] = {}
    lines = _lines(mk)
    in_define = False
    for number, line in enumerate(lines, 1):
        if in_define:
            in_define = line.strip() != "endef"
            continue
        define = MK_DEFINE.match(line)
        assignment = MK_ASSIGNMENT.match(line)
        variable = define.group(1) if define else assignment.group(1) if assignment else None
        in_define = define is not None
        if variable is None:
            continue
        if not variable.startswith(prefix + "_"):
            problems.append(
                Problem(
                    mk, number, f"{variable} does not start with {prefix}_ (the folder is {package.name})"
                )
            )
        value = MK_VALUE.match(line)
        if value is not None:
            values[value.group(1)] = value.group(2)
    symbol = f"BR2_PACKAGE_{prefix}"
    config = package / "Config.in"
    if config.is_file() and not any(
        (m := DEFINITION.match(line)) and m.group(1) == symbol for line in _lines(config)
    ):
        problems.append(Problem(config, 0, f"does not define {symbol}, the symbol of package {package.name}"))
    if values.get(f"{prefix}_SITE_METHOD") == "local":
        return problems
    if not any(f"$(eval $({infra}))" in line for line in lines for infra in DOWNLOAD_INFRA):
        return problems
    problems += _check_hashes(package, prefix, values)
    return problems


def _expand(text: str, values: dict[str, str]) -> str:
    for _ in range(5):  # nested references, bounded
        text = MAKE_REFERENCE.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    return text


def _check_hashes(package: Path, prefix: str, values: dict[str, str]) -> list[Problem]:
    mk = package / f"{package.name}.mk"
    if f"{prefix}_SITE" not in values:
        return [Problem(mk, 0, f"{prefix}_SITE is not set: where does the source come from?")]
    version = values.get(f"{prefix}_VERSION")
    if version is None:
        return [Problem(mk, 0, f"{prefix}_VERSION is not set")]
    source = _expand(values.get(f"{prefix}_SOURCE", f"{package.name}-$({prefix}_VERSION).tar.gz"), values)
    wanted = [source, *_expand(values.get(f"{prefix}_LICENSE_FILES", ""), values).split()]
    hash_file = package / f"{package.name}.hash"
    if not hash_file.is_file():
        return [Problem(package, 0, f"no {hash_file.name}: add a sha256 line for {source}")]
    hashed = {m.group(2) for line in _lines(hash_file) if (m := HASH_LINE.match(line))}
    return [
        Problem(hash_file, 0, f"no sha256 line for {name}; add 'sha256  <64 hex digits>  {name}'")
        for name in wanted
        if name not in hashed
    ]


def _check_references(config: Path, known: set[str]) -> list[Problem]:
    problems = []
    for number, line in enumerate(_lines(config), 1):
        match = REFERENCE.match(line.split("#", 1)[0])
        if match is None:
            continue
        for symbol in SYMBOL.findall(match.group(1)):
            if symbol not in known:
                problems.append(Problem(config, number, f"{symbol} is defined neither here nor by Buildroot"))
    return problems


def _check_defconfig(defconfig: Path, known: set[str]) -> list[Problem]:
    problems = []
    for number, line in enumerate(_lines(defconfig), 1):
        match = DEFCONFIG_SET.match(line) or DEFCONFIG_UNSET.match(line)
        if match is not None and match.group(1) not in known:
            problems.append(
                Problem(
                    defconfig,
                    number,
                    f"{match.group(1)} is defined neither by the tree nor in core-symbols.txt "
                    "(a typo, an option Buildroot dropped, or a list to refresh with tools/core_symbols.py)",
                )
            )
    return problems


def read_core_symbols(path: Path) -> set[str]:
    """The symbols of a core-symbols.txt (comment lines skipped)."""
    return {line.strip() for line in _lines(path) if line.strip() and not line.startswith("#")}


def main(argv: Sequence[str] | None = None) -> int:
    """Check the tree named on the command line (default: this file's tree); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    tree = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    problems = check_tree(tree, read_core_symbols(tree / "core-symbols.txt"))
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{tree}: structure OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
