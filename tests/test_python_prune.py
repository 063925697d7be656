"""The image's Python pruning (buildroot/board/dvrlink/prune-python.sh with python-prune.txt).

The script removes each form of a listed module and leaves the rest; post-build.sh runs it; and a
pruned copy of this host's Python (standard library, dvrlink's runtime dependencies, dvrlink's
shipped packages) still holds everything dvrlinkd imports: bench/import_check.py passes under it,
``dvrlinkd --help`` and ``dvrlinkd status --json`` run. The same check under the guest's own
interpreter is ``python -m bench.image_size`` (root, the QEMU rig's layers).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import image_size

BOARD = image_size.BOARD
SCRIPT = BOARD / "prune-python.sh"
LIST = BOARD / "python-prune.txt"


def run_prune(target: Path, prune_list: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["sh", str(SCRIPT), str(target)] + ([str(prune_list)] if prune_list else [])
    return subprocess.run(argv, capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"})


def touch(root: Path, *paths: str) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")


def test_the_prune_script_is_posix_sh() -> None:
    for shell in (["busybox", "sh"], ["dash"]):
        result = subprocess.run([*shell, "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{shell} -n {SCRIPT.name}: {result.stderr}"
    shellcheck = ["shellcheck", "-s", "sh", str(SCRIPT)]
    result = subprocess.run(shellcheck, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_every_line_of_the_list_has_a_scope_and_one_entry() -> None:
    entries = 0
    for number, line in enumerate(LIST.read_text().splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        assert words[0] in ("stdlib", "site", "any") and len(words) == 2, f"{LIST.name}:{number}: {line!r}"
        assert not words[1].startswith("/") and ".." not in words[1], f"{LIST.name}:{number}: {line!r}"
        entries += 1
    assert entries > 20, f"only {entries} entries in {LIST.name}"


def test_each_form_of_a_listed_module_goes_and_the_rest_stays(tmp_path: Path) -> None:
    lib = "usr/lib/python3.14"
    gone = [
        f"{lib}/unittest/__init__.pyc",  # a package, sourceless (PYC_ONLY)
        f"{lib}/pydoc.py",  # a module's source
        f"{lib}/pydoc.pyc",  # ... its sourceless bytecode
        f"{lib}/__pycache__/pydoc.cpython-314.pyc",  # ... its cached bytecode
        f"{lib}/ctypes/test/test_x.pyc",  # */test
        f"{lib}/lib-dynload/_testcapi.cpython-314-arm-linux-gnueabihf.so",  # an extension module
        f"{lib}/lib-dynload/_codecs_jp.cpython-314-arm-linux-gnueabihf.so",
        f"{lib}/encodings/shift_jis.pyc",
        f"{lib}/site-packages/pylsqpack/_binding.abi3.so",
        f"{lib}/site-packages/aioquic/h3/connection.pyc",
        f"{lib}/site-packages/dns/rdtypes/IN/SRV.pyc",
        f"{lib}/site-packages/dns/rdtypes/ANY/MX.pyc",
        f"{lib}/site-packages/dns/rdtypes/ANY/__pycache__/MX.cpython-314.pyc",
        f"{lib}/site-packages/cryptography/hazmat/bindings/_rust/x509.pyi",  # any *.pyi
        f"{lib}/asyncio/__pycache__/events.cpython-314.opt-1.pyc",  # any *.opt-1.pyc
    ]
    kept = [
        f"{lib}/asyncio/events.pyc",
        f"{lib}/asyncio/__pycache__/events.cpython-314.pyc",
        f"{lib}/encodings/utf_16_be.pyc",
        f"{lib}/lib-dynload/_ssl.cpython-314-arm-linux-gnueabihf.so",
        f"{lib}/pydoc_helper_not_listed.pyc",
        f"{lib}/site-packages/aioquic/h3/events.pyc",  # the QUIC logger imports it
        f"{lib}/site-packages/aioquic/quic/connection.pyc",
        f"{lib}/site-packages/dns/rdtypes/IN/A.pyc",
        f"{lib}/site-packages/dns/rdtypes/IN/AAAA.pyc",
        f"{lib}/site-packages/dns/rdtypes/ANY/OPT.pyc",
        f"{lib}/site-packages/dns/rdtypes/ANY/__init__.pyc",
        f"{lib}/site-packages/dns/update.pyc",
        f"{lib}/site-packages/_cffi_backend.cpython-314-arm-linux-gnueabihf.so",
        "usr/lib/python3/dist-packages/unittest/__init__.py",  # not a python3.X folder
    ]
    touch(tmp_path, *gone, *kept)
    result = run_prune(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{lib} " in result.stdout and "kB ->" in result.stdout, result.stdout
    assert [p for p in gone if (tmp_path / p).exists()] == [], result.stdout
    assert [p for p in kept if not (tmp_path / p).exists()] == [], result.stdout
    assert not (tmp_path / lib / "unittest").exists()


def test_a_bad_list_is_refused_naming_the_line(tmp_path: Path) -> None:
    touch(tmp_path, "usr/lib/python3.11/os.py")
    bad = tmp_path / "bad.txt"
    bad.write_text("stdlib test\nsitepackages dns\n")
    result = run_prune(tmp_path, bad)
    assert result.returncode == 1, result
    assert "unknown scope 'sitepackages'" in result.stderr and "bad.txt" in result.stderr, result.stderr
    bad.write_text("stdlib test extra\n")
    result = run_prune(tmp_path, bad)
    assert result.returncode == 1 and "one scope and one entry" in result.stderr, result.stderr
    assert (tmp_path / "usr/lib/python3.11/os.py").exists()


def test_a_target_without_python_is_left_alone(tmp_path: Path) -> None:
    touch(tmp_path, "etc/dvrlink/dvrlinkd.toml")
    result = run_prune(tmp_path)
    assert result.returncode == 0 and result.stdout == "", result


def test_post_build_prunes_the_image_python(tmp_path: Path) -> None:
    target = tmp_path / "target"
    shutil.copytree(BOARD / "rootfs-overlay", target)
    touch(target, "etc/init.d/S95dvrlinkd", "usr/lib/python3.14/idlelib/run.pyc", "usr/lib/python3.14/os.pyc")
    (target / "etc/init.d/S95dvrlinkd").chmod(0o755)
    result = subprocess.run(
        ["sh", str(BOARD / "post-build.sh"), str(target), "arm-vexpress"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert not (target / "usr/lib/python3.14/idlelib").exists(), result.stdout
    assert (target / "usr/lib/python3.14/os.pyc").exists()


def run_under(interpreter: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``interpreter`` with only ``root``'s Python tree (PYTHONHOME), from a folder outside the repo."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONHOME": str(root / "usr"),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
        "HOME": str(root),
    }
    return subprocess.run(
        [str(interpreter), *args], capture_output=True, text=True, env=env, cwd=root, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def pruned_host_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """This host's Python, dvrlink's dependencies and dvrlink, pruned: (root, interpreter, report)."""
    root = tmp_path_factory.mktemp("pruned")
    interpreter = image_size.host_tree(root)
    result = run_prune(root)
    assert result.returncode == 0, result.stderr
    yield root, interpreter, result.stdout
    shutil.rmtree(root, ignore_errors=True)


DAEMON = "import sys; from dvrlink.daemon.cli import main; sys.argv[0] = 'dvrlinkd'; sys.exit(main())"


def test_the_pruned_tree_holds_everything_dvrlinkd_imports(pruned_host_tree: tuple[Path, Path, str]) -> None:
    root, interpreter, report = pruned_host_tree
    _exe, lib = image_size.python_dirs(root)
    # The tree was pruned, and it is the tree the interpreter uses.
    for gone in ("unittest", "pydoc_data", "site-packages/pylsqpack", "site-packages/cffi"):
        assert not (lib / gone).exists(), f"{gone} is still in the pruned tree ({report})"
    where = run_under(interpreter, root, "-c", "import os, sys; print(sys.prefix); print(os.__file__)")
    assert where.stdout.split() == [str(root / "usr"), str(lib / "os.py")], where

    check = run_under(interpreter, root, str(image_size.IMPORT_CHECK))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 problems" in check.stdout and "dvrlink modules imported" in check.stdout, check.stdout

    helped = run_under(interpreter, root, "-c", DAEMON, "--help")
    assert helped.returncode == 0 and "usage: dvrlinkd" in helped.stdout, helped
    config = image_size.check_config(root / "dvrlinkd.toml")
    status = run_under(interpreter, root, "-c", DAEMON, "--config", str(config), "status", "--json")
    # No daemon runs: status says so (exit 1), and nothing it imports is missing.
    assert status.returncode == 1 and "Traceback" not in status.stderr, status
    print(f"\n{report}\n{check.stdout.strip()}", file=sys.stderr)


def test_the_check_fails_when_a_lazily_imported_module_is_pruned(
    pruned_host_tree: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """dns.message imports dns.update only inside a function: importing everything would not
    notice it gone, the scan of the loaded sources does."""
    root, interpreter, _report = pruned_host_tree
    copy = tmp_path / "copy"
    image_size.copy_tree(root, copy)
    extra = tmp_path / "more.txt"
    extra.write_text("site dns/update\n")
    result = run_prune(copy, extra)
    assert result.returncode == 0, result.stderr
    _exe, lib = image_size.python_dirs(copy)
    assert not (lib / "site-packages/dns/update.py").exists()
    check = run_under(interpreter, copy, str(image_size.IMPORT_CHECK))
    assert check.returncode == 1, check.stdout + check.stderr
    assert "MISSING dns.message imports dns.update: not in this tree" in check.stdout, check.stdout
    # A pruned module that dvrlink imports when loading shows too.
    (lib / "site-packages/aioquic/quic/configuration.py").unlink()
    check = run_under(interpreter, copy, str(image_size.IMPORT_CHECK))
    assert check.returncode == 1, check.stdout
    assert "No module named 'aioquic.quic.configuration'" in check.stdout, check.stdout
