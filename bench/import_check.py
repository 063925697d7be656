"""Does a (pruned) Python tree still hold everything ``dvrlinkd`` imports? Standard library only.

It runs under the interpreter and tree being checked, e.g. the image's own ``python3`` over the
image's pruned ``/usr/lib/python3.X``, or the host's interpreter with ``PYTHONHOME`` set to a
pruned copy (``tests/test_python_prune.py``, ``bench/image_size.py``, ``bench/hil_guest.py``)::

    python3 import_check.py [--package-dirs protocol,modem,hal,daemon]

1. Imports every module of the dvrlink packages the image ships.
2. Reads the source of every module that step loaded (dvrlink's, its dependencies', the standard
   library's) and finds each ``import`` in it, also those inside functions, which run later. A
   module named there that the tree cannot find is missing, unless the import sits under
   ``if TYPE_CHECKING:`` or in a ``try`` that catches ImportError (the code copes without it), or
   it is in ``UNTAKEN`` below with the reason dvrlinkd never gets there.
3. Looks up every codec that dvrlink names in ``.encode``/``.decode`` calls and ``encoding=``.
4. If dnspython is there (aioice's mDNS), parses a response with an A record and with record
   types whose modules may have been pruned: dnspython falls back to generic records for those.

Prints one line per problem and a summary; exits 1 when something is missing, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import codecs
import importlib
import importlib.util
import pkgutil
import struct
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

SHIPPED = ("compat", "store", "driver", "protocol", "modem", "hal", "daemon", "session")
"""dvrlink's packages in the image (the broker and the viewer stay out); absent ones are skipped."""

UNTAKEN: dict[str, str] = {
    "concurrent.futures.process": "concurrent.futures.__getattr__ loads it for ProcessPoolExecutor; "
    "dvrlinkd's executors are threads",
    "multiprocessing": "only ProcessPoolExecutor and platform's helpers import it; dvrlinkd uses neither",
    "pydoc": "pdb's help command (construct imports pdb for its Debugger; dvrlinkd never enters pdb)",
    "unittest": "dnspython's and the standard library's test helpers only",
    "unittest.mock": "test helpers only",
    "_pyio": "io's pure-Python fallback, not used when the C io module is built in",
    "doctest": "the self-tests of difflib, heapq, pickle and others (their _test functions)",
    "ifaddr._win32": "ifaddr's Windows branch (os.name == 'nt')",
    "serial.serialwin32": "pyserial's Windows branch",
    "serial.serialjava": "pyserial's Jython branch",
    "serial.serialcli": "pyserial's IronPython branch",
}
"""Lazy imports in loaded code that dvrlinkd never executes, with the reason; a pruned module named
here is not reported."""

ABSENT: dict[str, str] = {
    "nt": "Windows",
    "winreg": "Windows",
    "_winapi": "Windows",
    "msvcrt": "Windows",
    "_overlapped": "Windows",
    "java": "Jython (platform.py)",
    "annotationlib": "Python 3.14 and later, behind a version test",
    "numpy": "construct's array and numpy fields, which dvrlink's layouts do not use",
    "lz4": "construct's CompressedLZ4, not used",
    "arrow": "construct's Timestamp, not used",
    "ruamel": "construct's YAML export, not used",
    "idna": "dnspython's IDNA 2008 names, an optional extra it looks for first; not installed",
    "ctypes.macholib": "macOS: ctypes.util's darwin branch",
}
"""Modules an image never had (another platform, an optional extra of a dependency that dvrlink does
not install): a lazy import of one is not reported."""


def _guarded(parents: Sequence[ast.AST]) -> bool:
    """True when an import is under ``if TYPE_CHECKING`` or in a try that copes with ImportError."""
    for node in parents:
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if "TYPE_CHECKING" in test:
                return True
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                caught = ast.unparse(handler.type) if handler.type is not None else "BaseException"
                if any(n in caught for n in ("ImportError", "ModuleNotFoundError", "Exception")):
                    return True
    return False


def _walk(tree: ast.AST) -> Iterator[tuple[ast.AST, tuple[ast.AST, ...]]]:
    stack: list[tuple[ast.AST, tuple[ast.AST, ...]]] = [(tree, ())]
    while stack:
        node, parents = stack.pop()
        yield node, parents
        for child in ast.iter_child_nodes(node):
            # A try guards only its body, ``if TYPE_CHECKING`` only its body: an import in a
            # handler, an else or a finally runs whatever happened.
            guards_child = not isinstance(node, (ast.Try, ast.If)) or child in node.body
            inner = (*parents, node) if guards_child else parents
            stack.append((child, inner))


def imports_of(source: str, module: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """``(module, names)`` for each unguarded import in ``source``; ``names`` from ``from X import``."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    for node, parents in _walk(tree):
        if isinstance(node, ast.Import) and not _guarded(parents):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and not _guarded(parents):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield name, [a.name for a in node.names if a.name != "*"]


def _findable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _untaken(name: str) -> bool:
    return any(name == u or name.startswith(u + ".") for u in (*UNTAKEN, *ABSENT))


def missing_imports(modules: Sequence[str]) -> tuple[int, list[str]]:
    """Scan the sources of ``modules``; returns (imports scanned, problems)."""
    scanned = 0
    problems: list[str] = []
    for module in modules:
        mod = sys.modules.get(module)
        path = getattr(mod, "__file__", None)
        if not path or not path.endswith(".py") or not Path(path).is_file():
            continue
        try:
            source = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        is_package = hasattr(mod, "__path__")
        try:
            found = list(imports_of(source, module, is_package))
        except SyntaxError:
            continue
        for name, names in found:
            scanned += 1
            if _untaken(name):
                continue
            if not _findable(name):
                problems.append(f"{module} imports {name}: not in this tree")
                continue
            target = sys.modules.get(name)
            if target is None or not hasattr(target, "__path__"):
                continue
            for sub in names:
                full = f"{name}.{sub}"
                if hasattr(target, sub) or _untaken(full) or _findable(full):
                    continue
                if hasattr(target, "__getattr__"):
                    continue  # a lazy attribute: its own import is scanned above
                problems.append(f"{module}: from {name} import {sub}: neither a name nor a module here")
    return scanned, problems


def codec_names(sources: Sequence[Path]) -> set[str]:
    """The codec names dvrlink's code spells out (``x.encode("utf-16-be")``, ``encoding="ascii"``)."""
    names: set[str] = set()
    for path in sources:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("encode", "decode") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
            for keyword in node.keywords:
                value = keyword.value
                if (
                    keyword.arg == "encoding"
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    names.add(value.value)
    return names


def _dns_message() -> bytes:
    """An mDNS-style response: one A record (aioice reads these) and one MX, one CAA record."""
    header = struct.pack("!6H", 0, 0x8400, 0, 3, 0, 0)
    name = b"\x04host\x05local\x00"
    a = name + struct.pack("!HHIH", 1, 1, 120, 4) + bytes([192, 0, 2, 1])
    mx_data = struct.pack("!H", 10) + b"\x02mx\x05local\x00"
    mx = name + struct.pack("!HHIH", 15, 1, 120, len(mx_data)) + mx_data
    caa_data = b"\x00\x05issueca.example"
    caa = name + struct.pack("!HHIH", 257, 1, 120, len(caa_data)) + caa_data
    return header + a + mx + caa


def check_dns() -> list[str]:
    """dnspython still parses records whose type modules were pruned (as generic records)."""
    try:
        import dns.message  # noqa: PLC0415  (optional: only when aioice brought dnspython)
        import dns.rdtypes.IN.A  # noqa: PLC0415
    except ImportError as exc:
        if "dns" in str(exc) and importlib.util.find_spec("dns") is None:
            return []
        return [f"dnspython: {exc}"]
    try:
        message = dns.message.from_wire(_dns_message())
    except Exception as exc:
        return [f"dnspython cannot parse an mDNS response here: {exc!r}"]
    kinds = [type(rrset[0]).__name__ for rrset in message.answer]
    if kinds[:1] != ["A"]:
        return [f"dnspython parsed the A record as {kinds[:1]} (expected A)"]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; see the module's docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packages", default=",".join(SHIPPED), help="dvrlink packages the image ships")
    args = parser.parse_args(argv)
    problems: list[str] = []
    shipped = [p for p in args.packages.split(",") if p]
    before = set(sys.modules)
    own: list[str] = []
    sources: list[Path] = []
    for package in shipped:
        name = f"dvrlink.{package}"
        if importlib.util.find_spec(name) is None:
            continue
        try:
            module = importlib.import_module(name)
        except Exception:
            problems.append(f"import {name} failed:\n{traceback.format_exc()}")
            continue
        own.append(name)
        for info in pkgutil.walk_packages(module.__path__, name + "."):
            try:
                importlib.import_module(info.name)
                own.append(info.name)
            except Exception:
                problems.append(f"import {info.name} failed:\n{traceback.format_exc()}")
        sources += [p for d in module.__path__ for p in Path(d).rglob("*.py")]
    if not own:
        problems.append(f"no dvrlink package of {shipped} is importable here (sys.path: {sys.path})")
    loaded = sorted(set(sys.modules) - before | set(own))
    scanned, missing = missing_imports(sorted(sys.modules))
    problems += missing
    codecs_named = sorted(codec_names(sources))
    for codec in codecs_named:
        try:
            codecs.lookup(codec)
        except LookupError:
            problems.append(f"dvrlink uses codec {codec!r}: not in this tree")
    problems += check_dns()
    for problem in problems:
        print(f"MISSING {problem}")
    print(
        f"import_check: {len(own)} dvrlink modules imported, {len(loaded)} modules loaded in all, "
        f"{scanned} import statements in their sources checked, codecs {', '.join(codecs_named)}; "
        f"{len(problems)} problems ({sys.executable}, Python {sys.version.split()[0]}, prefix {sys.prefix})"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
