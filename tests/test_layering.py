"""The import direction of DESIGN.md, read from the source with ``ast``.

    viewer ─┐            ┌─ broker
            ├─► session ─┤
    daemon ─┘            └─► protocol ◄─ modem, hal
    daemon ─► modem, hal

Nothing imports ``daemon``, ``viewer`` or ``broker`` but themselves (their CLIs, ``hil/``,
``bench/`` and the tests may). ``store`` (state files) and ``compat`` (other libraries' private
names) are neutral homes below everything; so is ``driver`` (the loops that run a sans-I/O core:
the datagram core driver, the AT port's link), below everything but ``protocol``, which does no
I/O and whose cores ``driver`` runs. Every import counts, also those inside
functions (the daemon imports its session and modem stacks where they are first needed).

The checks: each package imports only what the drawing allows; no package cycle; ``protocol``
imports nothing that does I/O; no module imports another module's private name, and only
``compat`` imports another library's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("store", "compat", "driver", "protocol", "modem", "hal", "session", "daemon", "broker", "viewer")
ALLOWED: dict[str, frozenset[str]] = {
    "store": frozenset(),
    "compat": frozenset(),
    "driver": frozenset({"protocol", "compat"}),
    "protocol": frozenset({"compat"}),
    "modem": frozenset({"protocol", "store", "compat", "driver"}),
    "hal": frozenset({"protocol", "store", "compat", "driver"}),
    "session": frozenset({"protocol", "store", "compat", "driver"}),
    "broker": frozenset({"protocol", "store", "compat", "driver"}),
    "daemon": frozenset({"session", "protocol", "modem", "hal", "store", "compat", "driver"}),
    "viewer": frozenset({"session", "protocol", "store", "compat", "driver"}),
}
"""What each package may import besides itself."""
IO_MODULES = frozenset(
    {
        "asyncio",
        "socket",
        "selectors",
        "subprocess",
        "threading",
        "multiprocessing",
        "time",
        "serial",
        "pyudev",
        "aiohttp",
        "sqlite3",
        "shutil",
        "tempfile",
    }
)
"""What ``protocol`` must not import: sockets, processes, threads, clocks, devices, files. (``ssl``
is not here: aioquic's configuration takes an ``ssl.VerifyMode``, and importing the module opens
nothing.)"""
PROTOCOL_IO_FREE_DVRLINK = frozenset({"dvrlink.compat.aioquic_compat"})
"""The neutral modules ``protocol`` may use: pure accessors, no I/O."""


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's target, where it is."""

    path: Path
    line: int
    module: str
    """The imported module (``from X import y``: X)."""
    names: tuple[str, ...]
    """The names of a ``from`` import; empty for ``import X``."""

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_of(path: Path) -> str:
    """``dvrlink.pkg.mod`` for ``ROOT/pkg/mod.py``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "dvrlink." + ".".join(parts)


def imports_of(path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_of(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_of(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, ())
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            yield Import(path, node.lineno, module, tuple(alias.name for alias in node.names))


def sources(package: str) -> list[Path]:
    folder = ROOT / package
    return sorted(folder.rglob("*.py")) if folder.is_dir() else []


ALL_IMPORTS = {
    package: [imp for path in sources(package) for imp in imports_of(path)] for package in PACKAGES
}


def dvrlink_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "dvrlink" else None


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for package, found in ALL_IMPORTS.items():
        for imp in found:
            target = dvrlink_package(imp.module)
            if target is not None and target != package:
                graph[package].add(target)
    return graph


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_the_design_allows(package: str) -> None:
    wrong = [
        f"{imp.where()}: {package} imports {imp.module}"
        for imp in ALL_IMPORTS[package]
        if (target := dvrlink_package(imp.module)) is not None
        and target != package
        and target not in ALLOWED[package]
    ]
    assert not wrong, "imports against DESIGN.md's import direction:\n" + "\n".join(wrong)


def test_no_package_cycle() -> None:
    graph = package_graph()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif len(path) < len(PACKAGES):
                visit(target, [*path, target])

    for package in PACKAGES:
        visit(package, [package])
    assert not cycles, "package cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_protocol_imports_nothing_with_io() -> None:
    wrong = []
    for imp in ALL_IMPORTS["protocol"]:
        top = imp.module.split(".")[0]
        if top in IO_MODULES:
            wrong.append(f"{imp.where()}: {imp.module}")
        elif dvrlink_package(imp.module) == "compat":
            # ``from dvrlink.compat import x`` names the submodule x
            used = (
                [f"{imp.module}.{name}" for name in imp.names]
                if imp.module == "dvrlink.compat"
                else [imp.module]
            )
            wrong += [
                f"{imp.where()}: {name} (a compat module with I/O)"
                for name in used
                if name not in PROTOCOL_IO_FREE_DVRLINK
            ]
    assert not wrong, "protocol is sans-I/O (time is passed in), yet it imports:\n" + "\n".join(wrong)


def test_no_private_name_is_imported_across_modules() -> None:
    wrong = []
    for package, found in ALL_IMPORTS.items():
        for imp in found:
            private_module = any(
                part.startswith("_") and not part.startswith("__") for part in imp.module.split(".")
            )
            private_names = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
            if dvrlink_package(imp.module) is None and package == "compat":
                continue  # compat is where other libraries' private names live
            if private_module or private_names:
                wrong.append(f"{imp.where()}: from {imp.module} import {', '.join(imp.names)}")
    assert not wrong, "private names imported across modules:\n" + "\n".join(wrong)


def test_the_checks_see_the_whole_tree() -> None:
    # A check that reads no file passes for nothing: the packages are where this test looks.
    counted = {package: len(sources(package)) for package in PACKAGES}
    missing = [package for package, count in counted.items() if count == 0 and (ROOT / package).exists()]
    assert not missing, f"no Python files found in {missing}"
    assert sum(len(found) for found in ALL_IMPORTS.values()) > 500, counted
