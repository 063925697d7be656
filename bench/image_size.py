"""Installed size of the image's Python (runtime, dependencies, dvrlink) before and after pruning.

``python -m bench.image_size [--arch arm64|armhf] [--no-check]`` (root: it reads the QEMU rig's
cached layers and runs the guest's interpreter under qemu-user in a chroot).

What is measured is what a Buildroot image with ``BR2_PACKAGE_PYTHON3_PYC_ONLY`` ships, as one
``mksquashfs -comp xz`` of:

- the interpreter, ``usr/bin/python3.X`` (Debian links libpython into it);
- the standard library ``usr/lib/python3.X`` with ``lib-dynload``;
- ``site-packages``: the dependencies' wheels for the target and dvrlink without the broker and
  the viewer (as ``dvrlink.mk`` installs it);

with every ``.py`` compiled to a ``.pyc`` in its place and the sources and ``__pycache__`` gone
(Buildroot's ``pycompile -b``). Shared libraries of the base system (libc, libssl, libffi,
libexpat, libudev) are not counted. The files come from the rig's layers under
``~/.cache/dvrlink-hil`` (``python -m hil.qemu build --arch ARCH`` makes them): the base layer's
``rootfs.tar``, the deps and dvrlink layers' ``site`` trees.

"After" is the same tree after ``buildroot/board/dvrlink/prune-python.sh`` (the step
``post-build.sh`` runs, with ``python-prune.txt``). Then, unless ``--no-check``, the guest's own
``python3`` runs ``bench/import_check.py`` over the pruned tree in a chroot (qemu-user through
binfmt_misc), and ``dvrlinkd --help`` and ``dvrlinkd status --json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import BenchError, run_main, verdict

REPO = Path(__file__).resolve().parents[1]
BOARD = REPO / "buildroot/board/dvrlink"
PRUNE_SCRIPT = BOARD / "prune-python.sh"
IMPORT_CHECK = Path(__file__).resolve().parent / "import_check.py"
TARGET_BYTES = 12_000_000
"""Issue 12: Python runtime + dependencies + dvrlink, compiled bytecode, squashfs xz, at most 12 MB."""
SHIPPED = ("compat", "store", "driver", "protocol", "modem", "hal", "daemon", "session")
"""dvrlink's packages in the image; dvrlink.mk removes the broker and the viewer."""
RUNTIME_LIBS = (
    "./usr/lib/ld-linux-aarch64.so.1",
    "./usr/lib/ld-linux-armhf.so.3",
    "./usr/lib/aarch64-linux-gnu",
    "./usr/lib/arm-linux-gnueabihf",
    "./usr/sbin/ldconfig",
    "./etc/ld.so.cache",
)
"""What the guest's interpreter needs besides its own files to run in a chroot (merged /usr)."""
CHROOT_LINKS = {"lib": "usr/lib", "bin": "usr/bin", "sbin": "usr/sbin"}


def prune(root: Path, prune_list: Path | None = None) -> str:
    """Run prune-python.sh over ``root`` (a TARGET_DIR); returns its report line(s).

    Raises:
        BenchError: the script failed; the message quotes it.
    """
    argv = ["sh", str(PRUNE_SCRIPT), str(root)] + ([str(prune_list)] if prune_list else [])
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(
            f"{PRUNE_SCRIPT.name} {root} failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout.strip()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_tree(src: Path, dst: Path, *, skip: Sequence[str] = ()) -> None:
    """Copy ``src`` into ``dst`` with hard links where the filesystem allows (pruning unlinks only)."""
    shutil.copytree(
        src,
        dst,
        symlinks=True,
        dirs_exist_ok=True,
        copy_function=_link_or_copy,
        ignore=shutil.ignore_patterns(*skip) if skip else None,
    )


def install_dvrlink_sources(site: Path) -> None:
    """dvrlink's shipped packages from this tree into ``site/dvrlink`` (no broker, no viewer)."""
    for name in SHIPPED:
        if (REPO / name / "__init__.py").is_file():
            copy_tree(REPO / name, site / "dvrlink" / name, skip=("__pycache__",))


def runtime_distributions(name: str = "dvrlink") -> list[str]:
    """``name``'s runtime requirements and theirs (no extras), as installed here."""
    from importlib import metadata  # noqa: PLC0415

    from packaging.requirements import Requirement  # noqa: PLC0415  (pip's and pytest's dependency)

    seen: dict[str, str] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            key = req.name.lower().replace("_", "-")
            if key not in seen:
                seen[key] = req.name
                todo.append(req.name)
    return sorted(seen.values())


def host_tree(root: Path) -> Path:
    """This host's Python as the image would hold it, under ``root`` (a TARGET_DIR); the interpreter.

    ``root/usr/lib/python3.X``: a hard-linked copy of this interpreter's standard library (without
    its site-packages); its ``site-packages``: the files of dvrlink's runtime dependencies (their
    RECORDs) and dvrlink's shipped packages from this tree. Run the returned interpreter with
    ``PYTHONHOME=root/usr`` to use only these files.
    """
    import sysconfig  # noqa: PLC0415
    from importlib import metadata  # noqa: PLC0415

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lib = root / "usr/lib" / stdlib.name
    copy_tree(stdlib, lib, skip=("site-packages", "__pycache__"))
    site = lib / "site-packages"
    site.mkdir(exist_ok=True)
    for name in runtime_distributions():
        dist = metadata.distribution(name)
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                (site / file).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(str(source), str(site / file))
    install_dvrlink_sources(site)
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def check_config(path: Path) -> Path:
    """The board's dvrlinkd.toml with a serial and a broker set, so ``dvrlinkd status`` gets past
    the config and says whether a daemon runs."""
    from hil.qemu.rigconfig import with_values  # noqa: PLC0415

    text = (BOARD / "rootfs-overlay/etc/dvrlink/dvrlinkd.toml").read_text()
    key = base64.b64encode(bytes(range(1, 33))).decode()
    path.write_text(
        with_values(
            text,
            {
                "device": {"serial": "DL-SIZE-0001"},
                "broker": {"host": "127.0.0.1", "port": 4433, "public_key": key},
            },
        )
    )
    return path


def python_dirs(root: Path) -> tuple[Path, Path]:
    """The interpreter and the standard library folder of a TARGET_DIR with one usr/lib/python3.X."""
    libs = sorted(p for p in (root / "usr/lib").glob("python3.*") if p.is_dir())
    if len(libs) != 1:
        raise BenchError(f"expected one usr/lib/python3.X in {root}, found {[p.name for p in libs]}")
    return root / "usr/bin" / libs[0].name, libs[0]


def sourceless_size(root: Path, work: Path) -> tuple[int, int]:
    """(bytes on disk, bytes of squashfs xz) of root's Python as PYC_ONLY ships it.

    Raises:
        BenchError: mksquashfs is missing or failed, or the host's Python cannot compile for the
        guest's (their versions differ).
    """
    interpreter, lib = python_dirs(root)
    guest_version = lib.name.removeprefix("python")
    host_version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if guest_version != host_version:
        raise BenchError(
            f"the image's Python is {guest_version} and this one {host_version}: the bytecode would "
            f"differ; run this with a Python {guest_version}"
        )
    if shutil.which("mksquashfs") is None:
        raise BenchError("mksquashfs is missing: apt-get install squashfs-tools (make hil-packages has it)")
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "usr/bin").mkdir(parents=True)
    if interpreter.is_file():
        shutil.copy2(interpreter, stage / "usr/bin" / interpreter.name)
    shutil.copytree(
        lib, stage / "usr/lib" / lib.name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-b", "-j", "0", str(stage / "usr/lib")],
        capture_output=True,
        check=False,  # a few test files do not compile on purpose; pruned trees have none
    )
    raw = 0
    for path in list((stage / "usr/lib").rglob("*")):
        if path.suffix == ".py" and path.is_file():
            path.unlink()
        elif path.is_file() and not path.is_symlink():
            raw += path.stat().st_size
    raw += sum(p.stat().st_size for p in (stage / "usr/bin").iterdir())
    image = work / "python.sqfs"
    result = subprocess.run(
        ["mksquashfs", str(stage), str(image), "-comp", "xz", "-noappend", "-quiet", "-no-progress"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"mksquashfs failed: {result.stderr.strip()}")
    size = image.stat().st_size
    image.unlink()
    shutil.rmtree(stage)
    return raw, size


def layer_dirs(arch: str, cache: Path) -> tuple[Path, Path, Path]:
    """The base, deps and dvrlink layers of the cached image for ``arch``.

    Raises:
        BenchError: no image has been built for ``arch``.
    """
    images = sorted((cache / arch).glob("image-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not images:
        raise BenchError(f"no cached {arch} image under {cache}: run python -m hil.qemu build --arch {arch}")
    manifest = json.loads(images[-1].read_text())
    keys = manifest["keys"]
    base = Path(manifest["base_dir"])
    deps = cache / arch / f"deps-{keys['deps']}"
    dvrlink = cache / arch / f"dvrlink-{keys['dvrlink']}"
    for layer in (base, deps, dvrlink):
        if not layer.is_dir():
            raise BenchError(f"layer {layer} of {images[-1].parent.name} is gone: rebuild the image")
    return base, deps, dvrlink


def guest_tree(root: Path, arch: str, cache: Path, *, with_libs: bool) -> None:
    """The guest's Python as the image has it, from the layers, under ``root`` (a TARGET_DIR)."""
    base, deps, dvrlink = layer_dirs(arch, cache)
    with tarfile.open(base / "rootfs.tar") as tar:
        wanted = ("./usr/lib/python3.", "./usr/bin/python3.", *(RUNTIME_LIBS if with_libs else ()))
        members = [m for m in tar if m.name.startswith(wanted) and not m.isdev()]
        tar.extractall(root, members=members, filter="tar")
    _interpreter, lib = python_dirs(root)
    site = lib / "site-packages"
    for tree in (deps / "site", dvrlink / "site"):
        for entry in tree.iterdir():
            if entry.name == "bin":
                continue
            if entry.is_dir():
                copy_tree(entry, site / entry.name)
            else:
                shutil.copy2(entry, site / entry.name)
    for gone in ("broker", "viewer"):
        shutil.rmtree(site / "dvrlink" / gone, ignore_errors=True)
    if with_libs:
        for name, target in CHROOT_LINKS.items():
            if not (root / name).exists():
                (root / name).symlink_to(target)


def guest_checks(root: Path) -> list[tuple[str, int, str]]:
    """Run import_check.py, ``dvrlinkd --help`` and ``dvrlinkd status --json`` in a chroot of ``root``."""
    interpreter, lib = python_dirs(root)
    shutil.copy(IMPORT_CHECK, root / "import_check.py")
    check_config(root / "dvrlinkd.toml")
    inside = f"/usr/bin/{interpreter.name}"
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
        "HOME": "/",
        "PYTHONPATH": f"/usr/lib/{lib.name}/site-packages",
    }
    daemon = "import sys; from dvrlink.daemon.cli import main; sys.argv[0] = 'dvrlinkd'; sys.exit(main())"
    runs = [
        ("import_check.py", [inside, "-B", "/import_check.py"]),
        ("dvrlinkd --help", [inside, "-B", "-c", daemon, "--help"]),
        (
            "dvrlinkd status --json",
            [inside, "-B", "-c", daemon, "--config", "/dvrlinkd.toml", "status", "--json"],
        ),
    ]
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    results = []
    for name, argv in runs:
        result = subprocess.run(
            [chroot, str(root), *argv], capture_output=True, text=True, env=env, timeout=600, check=False
        )
        results.append((name, result.returncode, (result.stdout + result.stderr).strip()))
    return results


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB ({n / 2**20:.2f} MiB)"


def measure(arch: str, cache: Path, check: bool) -> None:
    """Print the sizes before and after pruning, and the checks' results."""
    with tempfile.TemporaryDirectory(prefix="dvrlink-image-size-") as tmp:
        work = Path(tmp)
        root = work / "root"
        started = time.monotonic()
        guest_tree(root, arch, cache, with_libs=check)
        _interpreter, lib = python_dirs(root)
        print(f"image_size: {arch}, Python {lib.name}, layers from {cache / arch}")
        raw_before, sq_before = sourceless_size(root, work)
        report = prune(root)
        raw_after, sq_after = sourceless_size(root, work)
        print(f"  {report}")
        print(f"  before pruning: {raw_before / 1e6:.1f} MB of files, squashfs xz {_mb(sq_before)}")
        print(f"  after pruning:  {raw_after / 1e6:.1f} MB of files, squashfs xz {_mb(sq_after)}")
        print(
            f"  target: at most {TARGET_BYTES / 1e6:.0f} MB: {verdict(sq_after <= TARGET_BYTES)} "
            f"({(sq_before - sq_after) / 1e6:.2f} MB saved; {time.monotonic() - started:.0f} s)"
        )
        if not check:
            return
        if os.geteuid() != 0:
            raise BenchError("the checks chroot into the guest's tree: run as root, or pass --no-check")
        failed = False
        for name, code, text in guest_checks(root):
            last = text.splitlines()[-1] if text else ""
            # status exits 1 for "not running": no daemon runs in the chroot.
            ok = code == 0 or (name.startswith("dvrlinkd status") and code == 1 and "Traceback" not in text)
            failed |= not ok
            print(f"  guest {name}: exit {code} {verdict(ok)}: {last[:200]}")
            if not ok:
                print("    " + text.replace("\n", "\n    "))
        if failed:
            print("  FAIL: the pruned tree lacks something dvrlinkd imports (lines above)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.image_size``: see the module's docstring."""
    parser = argparse.ArgumentParser(description="size of the image's Python before and after pruning")
    parser.add_argument("--arch", default="arm64", choices=("arm64", "armhf"))
    parser.add_argument("--cache", type=Path, default=None, help="the rig's cache (default: hil.qemu's)")
    parser.add_argument("--no-check", action="store_true", help="sizes only, no import check in a chroot")
    args = parser.parse_args(argv)

    def body() -> None:
        cache = args.cache
        if cache is None:
            from hil.qemu.build import cache_root  # noqa: PLC0415  (only the rig's default path)

            cache = cache_root()
        measure(args.arch, cache, not args.no_check)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
