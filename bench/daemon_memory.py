"""Where dvrlinkd's memory goes: each layer of what it imports, measured in a fresh interpreter.

    python -m bench.daemon_memory [--quick]

Each row is its own child interpreter that imports the layers above it and then its own, so the
figure of a row is what that layer adds on top of everything it sits on. For each layer:

- the change in VmRSS, and its split into RssAnon (Python objects, malloc) and RssFile (mapped
  code: libpython, OpenSSL, cryptography's Rust extension), from ``/proc/self/status``;
- the change in bytes Python itself allocated (``tracemalloc``, in a second child started with
  ``-X tracemalloc``: tracing costs memory, so it never runs in the RSS child);
- how many modules it adds.

The layers follow what ``dvrlinkd run`` loads: the interpreter, asyncio (which loads ``ssl`` and
with it the system's libssl/libcrypto), the cryptography primitives of the presence protocol,
construct, then dvrlink's idle daemon (``dvrlink.daemon.cli``). The session stack (aioquic,
aioice and dnspython, the connectivity layer) and the modem stack load only when a session or a
modem needs them; their rows show what that costs. Last, the largest mappings of the idle daemon's
layer, from ``/proc/self/smaps``.

``--quick`` measures once per row; the full run takes the median of three.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import BenchError, run_main

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Layer:
    """One row: a name and the imports it adds."""

    name: str
    imports: tuple[str, ...]


LAYERS = (
    Layer("interpreter (python3 with site)", ()),
    Layer("asyncio (with ssl: the system's libssl and libcrypto)", ("asyncio",)),
    Layer(
        "cryptography: Ed25519, X25519, ChaCha20-Poly1305, HKDF",
        (
            "cryptography.hazmat.primitives.asymmetric.ed25519",
            "cryptography.hazmat.primitives.asymmetric.x25519",
            "cryptography.hazmat.primitives.ciphers.aead",
            "cryptography.hazmat.primitives.kdf.hkdf",
        ),
    ),
    Layer("construct (wire layouts)", ("construct",)),
    Layer("dvrlink idle daemon (dvrlink.daemon.cli)", ("dvrlink.daemon.cli",)),
    Layer(
        "session stack (aioquic, aioice, dnspython, connectivity)",
        ("dvrlink.session.connectivity", "dvrlink.session.runner", "dvrlink.protocol.session"),
    ),
    Layer("modem stack (dvrlink.daemon.modem_service)", ("dvrlink.daemon.modem_service",)),
)
IDLE_LAYER = 4
"""Index of the layer that is what an idle ``dvrlinkd`` has loaded."""

_CHILD = r"""
import importlib, json, sys
names = json.loads(sys.argv[1])
for name in names:
    importlib.import_module(name)
values = {}
for line in open("/proc/self/status"):
    key, _, rest = line.partition(":")
    if key in ("VmRSS", "RssAnon", "RssFile"):
        values[key] = int(rest.split()[0]) * 1024
values["modules"] = len(sys.modules)
try:
    import tracemalloc
    if tracemalloc.is_tracing():
        values["traced"] = tracemalloc.get_traced_memory()[0]
except ImportError:
    pass
if len(sys.argv) > 2:
    sizes = {}
    name = None
    for line in open("/proc/self/smaps"):
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":"):
            name = parts[5] if len(parts) > 5 else "[anonymous]"
        elif parts and parts[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(parts[1]) * 1024
    values["maps"] = sorted(sizes.items(), key=lambda item: -item[1])[: int(sys.argv[2])]
print(json.dumps(values))
"""


def sample(imports: Sequence[str], *, traced: bool = False, maps: int = 0) -> dict[str, object]:
    """Import ``imports`` in a fresh interpreter and return its figures.

    Raises:
        BenchError: the child failed (its stderr is in the message).
    """
    argv = [
        sys.executable,
        *(["-X", "tracemalloc"] if traced else []),
        "-c",
        _CHILD,
        json.dumps(list(imports)),
    ]
    if maps:
        argv.append(str(maps))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BenchError(f"importing {', '.join(imports) or 'nothing'} failed:\n{done.stderr.strip()}")
    values = json.loads(done.stdout)
    if not isinstance(values, dict):
        raise BenchError(f"the child printed {done.stdout!r}, not a JSON object")
    return values


def number(values: dict[str, object], key: str) -> int:
    """One integer figure of a child's output."""
    value = values.get(key)
    if not isinstance(value, int):
        raise BenchError(f"no {key} in the child's figures: {values}")
    return value


def run(repeats: int) -> None:
    """The whole benchmark."""
    print(f"dvrlinkd memory by layer: each row a fresh {sys.implementation.name} {sys.version.split()[0]}")
    print(f"  (median of {repeats} per row; RSS from /proc/self/status, Python allocations from tracemalloc)")
    heads = " ".join(f"{head:>8s}" for head in ("VmRSS", "Anon", "File", "Python", "modules"))
    print(f"  {'layer':58s} {heads}   (added; MB)")
    previous: dict[str, float] = {}
    cumulative: list[str] = []
    totals: dict[str, float] = {}
    for index, layer in enumerate(LAYERS):
        cumulative.extend(layer.imports)
        runs = [sample(cumulative) for _ in range(repeats)]
        traced = sample(cumulative, traced=True)
        figures = {
            key: statistics.median(number(values, key) for values in runs)
            for key in ("VmRSS", "RssAnon", "RssFile", "modules")
        }
        figures["traced"] = number(traced, "traced")
        added = {key: value - previous.get(key, 0) for key, value in figures.items()}
        print(
            f"  {layer.name:58s} {added['VmRSS'] / MB:8.1f} {added['RssAnon'] / MB:8.1f} "
            f"{added['RssFile'] / MB:8.1f} {added['traced'] / MB:8.1f} {added['modules']:8.0f}"
        )
        previous = figures
        if index == IDLE_LAYER:
            totals = dict(figures)
    print(
        f"  idle daemon's imports in all: VmRSS {totals['VmRSS'] / MB:.1f} MB "
        f"(anon {totals['RssAnon'] / MB:.1f}, file {totals['RssFile'] / MB:.1f}), "
        f"{totals['traced'] / MB:.1f} MB allocated by Python, {totals['modules']:.0f} modules"
    )
    idle_imports = [name for layer in LAYERS[: IDLE_LAYER + 1] for name in layer.imports]
    largest = sample(idle_imports, maps=8).get("maps")
    if not isinstance(largest, list):
        raise BenchError(f"no mappings in the child's figures: {largest!r}")
    print("  largest mappings of the idle daemon's imports (Rss):")
    for name, size in largest:
        print(f"    {size / MB:6.1f} MB  {name}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="where dvrlinkd's memory goes, layer by layer")
    parser.add_argument("--quick", action="store_true", help="one sample per row instead of three")
    args = parser.parse_args(argv)
    return run_main(lambda: run(1 if args.quick else 3))


if __name__ == "__main__":
    sys.exit(main())
