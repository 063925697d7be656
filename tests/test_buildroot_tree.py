"""The BR2_EXTERNAL tree in buildroot/, checked without a Buildroot build (which downloads sources).

The structure checker (buildroot/tools/check_tree.py) runs on the real tree, and on broken copies
to show that each of its checks complains. Buildroot's own style checker runs with
``make buildroot-check BUILDROOT=DIR`` against a checkout.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from dvrlink.daemon.cli import main as dvrlinkd_main
from dvrlink.modem.profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "buildroot"


def load_tool(name: str) -> ModuleType:
    """A module of buildroot/tools/ (scripts, not part of the dvrlink package)."""
    spec = importlib.util.spec_from_file_location(f"buildroot_tools_{name}", TREE / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


check_tree = load_tool("check_tree")
core_symbols = load_tool("core_symbols")

OVERLAY_CONFIG = TREE / "board/dvrlink/rootfs-overlay/etc/dvrlink/dvrlinkd.toml"
SCRIPTS = [
    TREE / "board/dvrlink/S95dvrlinkd",
    TREE / "board/dvrlink/post-build.sh",
    TREE / "board/dvrlink/post-image.sh",
]
# pyproject's names for the packages Buildroot calls otherwise.
BUILDROOT_NAMES = {"pyserial": "serial"}


def core() -> set[str]:
    return check_tree.read_core_symbols(TREE / "core-symbols.txt")


def test_tree_passes_the_structure_checks() -> None:
    problems = check_tree.check_tree(TREE, core())
    assert problems == [], "\n".join(map(str, problems))


def test_core_symbols_name_their_buildroot() -> None:
    lines = (TREE / "core-symbols.txt").read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert any(re.search(r"Buildroot version: 20\d\d\.\d\d", line) for line in header), header
    assert any(re.search(r"Buildroot commit: [0-9a-f]{40}$", line) for line in header), header
    symbols = core()
    assert len(symbols) > 5000, f"only {len(symbols)} symbols: not made from a full checkout?"
    for symbol in ("BR2_INIT_SYSTEMD", "BR2_PACKAGE_PYTHON_CRYPTOGRAPHY", "BR2_TOOLCHAIN_BUILDROOT_MUSL"):
        assert symbol in symbols


def test_tree_adds_no_package_buildroot_has() -> None:
    ours = {
        f"BR2_PACKAGE_{check_tree.package_prefix(p.name)}" for p in (TREE / "package").iterdir() if p.is_dir()
    }
    assert ours, "no packages found"
    assert ours & core() == set(), "Buildroot already has these; use its package instead"


def test_every_runtime_dependency_is_selected() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    config = (TREE / "package/dvrlink/Config.in").read_text()
    selected = set(re.findall(r"^\s*select (BR2_PACKAGE_PYTHON_\w+)", config, re.MULTILINE))
    missing = []
    for requirement in pyproject["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None, requirement
        folder = "python-" + BUILDROOT_NAMES.get(name.group(0).lower(), name.group(0).lower())
        if f"BR2_PACKAGE_{check_tree.package_prefix(folder)}" not in selected:
            missing.append(f"{requirement} (expected select BR2_PACKAGE_{check_tree.package_prefix(folder)})")
    assert missing == [], f"package/dvrlink/Config.in does not select: {missing}"


def test_dvrlink_version_matches_pyproject() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    mk = (TREE / "package/dvrlink/dvrlink.mk").read_text()
    assert f"DVRLINK_VERSION = {version}\n" in mk


def test_dvrlink_package_installs_files_that_exist() -> None:
    mk = (TREE / "package/dvrlink/dvrlink.mk").read_text()
    for relative in re.findall(r"\$\(@D\)/(\S+)", mk):
        assert (ROOT / relative).is_file(), f"dvrlink.mk installs $(@D)/{relative}, missing in the repository"
    for relative in re.findall(r"\$\(BR2_EXTERNAL_DVRLINK_PATH\)/(\S+)", mk):
        if relative != "..":
            assert (TREE / relative).is_file(), f"dvrlink.mk installs {relative}, missing in the tree"


def copy_tree(tmp_path: Path) -> Path:
    copy = tmp_path / "buildroot"
    shutil.copytree(TREE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} no longer holds {old!r}: update the test"
    path.write_text(text.replace(old, new, 1))


def drop_sdist_hash(tree: Path) -> None:
    hash_file = tree / "package/python-aioquic/python-aioquic.hash"
    lines = hash_file.read_text().splitlines(keepends=True)
    hash_file.write_text("".join(line for line in lines if "aioquic-1.7.2.tar.gz" not in line))


def drop_license_hash(tree: Path) -> None:
    hash_file = tree / "package/python-pylsqpack/python-pylsqpack.hash"
    lines = hash_file.read_text().splitlines(keepends=True)
    hash_file.write_text("".join(line for line in lines if "vendor/ls-qpack/LICENSE" not in line))


def editor(relative: str, old: str, new: str) -> Callable[[Path], None]:
    return lambda tree: edit(tree / relative, old, new)


PYLSQPACK_MK = "package/python-pylsqpack/python-pylsqpack.mk"
VEXPRESS = "configs/dvrlink_qemu_arm_vexpress_defconfig"
AARCH64 = "configs/dvrlink_qemu_aarch64_virt_defconfig"
AIOICE_CONFIG = "package/python-aioice/Config.in"
PYLSQPACK_SOURCE = 'source "$BR2_EXTERNAL_DVRLINK_PATH/package/python-pylsqpack/Config.in"\n'
BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing sdist hash": (drop_sdist_hash, "no sha256 line for aioquic-1.7.2.tar.gz"),
    "missing license hash": (drop_license_hash, "no sha256 line for vendor/ls-qpack/LICENSE"),
    "wrong prefix": (
        editor(PYLSQPACK_MK, "PYTHON_PYLSQPACK_LICENSE =", "PYTHON_LSQPACK_LICENSE ="),
        "PYTHON_LSQPACK_LICENSE does not start with PYTHON_PYLSQPACK_",
    ),
    "wrong prefix in a define": (
        editor("package/dvrlink/dvrlink.mk", "define DVRLINK_USERS", "define DVRLINKD_USERS"),
        "DVRLINKD_USERS does not start with DVRLINK_",
    ),
    "unknown symbol in a defconfig": (
        editor(VEXPRESS, "BR2_PACKAGE_PPPD=y", "BR2_PACKAGE_PPP=y"),
        "BR2_PACKAGE_PPP is defined neither by the tree nor in core-symbols.txt",
    ),
    "unknown unset symbol in a defconfig": (
        editor(AARCH64, "# BR2_TARGET_ROOTFS_TAR is not set", "# BR2_TARGET_ROOTFS_TARBALL is not set"),
        "BR2_TARGET_ROOTFS_TARBALL is defined neither",
    ),
    "unknown symbol selected": (
        editor(AIOICE_CONFIG, "PYTHON_IFADDR", "PYTHON_IFADDRS"),
        "BR2_PACKAGE_PYTHON_IFADDRS is defined neither here nor by Buildroot",
    ),
    "package not sourced": (
        editor("Config.in", PYLSQPACK_SOURCE, ""),
        "package/python-pylsqpack/Config.in is not sourced",
    ),
    "source of a missing file": (
        editor("Config.in", "package/python-aioice/Config.in", "package/python-aioice/Config.in.x"),
        "names a file that does not exist",
    ),
    "package symbol misnamed": (
        editor(AIOICE_CONFIG, "config BR2_PACKAGE_PYTHON_AIOICE", "config BR2_PACKAGE_AIOICE"),
        "does not define BR2_PACKAGE_PYTHON_AIOICE",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_checker_complains_about_a_broken_copy(tmp_path: Path, breakage: str) -> None:
    tree = copy_tree(tmp_path)
    assert check_tree.check_tree(tree, core()) == [], "the copy must pass before it is broken"
    breaker, expected = BREAKAGES[breakage]
    breaker(tree)
    problems = [str(p) for p in check_tree.check_tree(tree, core())]
    assert any(expected in p for p in problems), f"expected {expected!r}, got {problems}"


def test_checker_command_exits_1_on_a_broken_copy(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    drop_sdist_hash(tree)
    result = subprocess.run(
        [sys.executable, str(tree / "tools/check_tree.py"), str(tree)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result
    assert "aioquic-1.7.2.tar.gz" in result.stdout, result.stdout


def test_core_symbols_tool_reads_a_checkout(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("export BR2_VERSION := 2031.02\n")
    (tmp_path / "Config.in").write_text('config BR2_ALPHA\n\tbool "a"\n\nmenuconfig BR2_BETA\n\tbool "b"\n')
    (tmp_path / "package/gamma").mkdir(parents=True)
    (tmp_path / "package/gamma/Config.in.host").write_text("config BR2_PACKAGE_HOST_GAMMA\n\tbool\n")
    (tmp_path / "Config.in.legacy").write_text("config BR2_GONE\n\tbool\n")
    (tmp_path / "support/testing/tests").mkdir(parents=True)
    (tmp_path / "support/testing/tests/Config.in").write_text("config BR2_TEST_ONLY\n\tbool\n")
    result = subprocess.run(
        [sys.executable, str(TREE / "tools/core_symbols.py"), str(tmp_path), "--commit", "f" * 40],
        capture_output=True,
        text=True,
        check=True,
    )
    symbols = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert symbols == ["BR2_ALPHA", "BR2_BETA", "BR2_PACKAGE_HOST_GAMMA"]
    assert "# Buildroot version: 2031.02" in result.stdout
    assert "# Buildroot commit: " + "f" * 40 in result.stdout
    assert core_symbols.defined_symbols(["  config BR2_X", "config BR2_Y # no", "select BR2_Z"]) == {"BR2_X"}


def test_image_config_is_the_daemon_s_except_for_the_broker_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As shipped, the placeholder key stops the daemon with a config error until provisioning.
    assert dvrlinkd_main(["--check-config", "--config", str(OVERLAY_CONFIG)]) == 78
    assert "public_key" in capsys.readouterr().err
    provisioned = tmp_path / "dvrlinkd.toml"
    key = base64.b64encode(bytes(range(1, 33))).decode()
    text = OVERLAY_CONFIG.read_text()
    assert text.count('public_key = "AAAA') == 1
    provisioned.write_text(re.sub(r'public_key = "A+="', f'public_key = "{key}"', text))
    assert dvrlinkd_main(["--check-config", "--config", str(provisioned)]) == 0, capsys.readouterr().err
    assert "config OK" in capsys.readouterr().out


def test_udev_rules_cover_every_profile_vendor() -> None:
    rules = (TREE / "board/dvrlink/rootfs-overlay/etc/udev/rules.d/70-dvrlink-modem.rules").read_text()
    vendors = {f"{usb.vendor:04x}" for profile in PROFILES.values() for usb in profile.usb}
    assert vendors, "no USB vendors in the modem profiles"
    for line in (line for line in rules.splitlines() if line and not line.startswith("#")):
        listed = set(re.search(r'idVendor\}=="([0-9a-f|]+)"', line).group(1).split("|"))  # type: ignore[union-attr]
        assert listed == vendors, f"{line!r} lists {sorted(listed)}, the profiles have {sorted(vendors)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_posix_sh(script: Path) -> None:
    for shell in (["busybox", "sh"], ["dash"]):
        result = subprocess.run([*shell, "-n", str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{shell} -n {script.name}: {result.stderr}"
    shellcheck = ["shellcheck", "-s", "sh", str(script)]
    result = subprocess.run(shellcheck, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_buildroot_check_says_what_to_pass() -> None:
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "buildroot-check", "BUILDROOT="],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0, result
    assert "BUILDROOT=" in result.stdout + result.stderr, result


def post_build(tmp_path: Path, target: Path) -> subprocess.CompletedProcess[str]:
    host = tmp_path / "host/bin"
    host.mkdir(parents=True, exist_ok=True)
    if not (host / "python3").exists():
        (host / "python3").symlink_to(sys.executable)
    return subprocess.run(
        ["sh", str(TREE / "board/dvrlink/post-build.sh"), str(target), "arm-vexpress"],
        env={"PATH": "/usr/bin:/bin", "HOST_DIR": str(tmp_path / "host")},
        capture_output=True,
        text=True,
        check=False,
    )


def fake_target(tmp_path: Path, init: str) -> Path:
    target = tmp_path / "target"
    (target / "etc/dvrlink").mkdir(parents=True)
    shutil.copy(OVERLAY_CONFIG, target / "etc/dvrlink/dvrlinkd.toml")
    site = target / "usr/lib/python3.14/site-packages/dvrlink-0.1.0.dist-info"
    site.mkdir(parents=True)
    (site / "METADATA").write_text("Metadata-Version: 2.4\nName: dvrlink\nVersion: 0.1.0\n")
    if init == "busybox":
        (target / "etc/init.d").mkdir(parents=True)
        (target / "etc/init.d/S95dvrlinkd").write_text("#!/bin/sh\n")
        (target / "etc/init.d/S95dvrlinkd").chmod(0o755)
    else:
        (target / "usr/lib/systemd/system").mkdir(parents=True)
        (target / "usr/lib/systemd/systemd").write_text("")
        (target / "usr/lib/systemd/systemd").chmod(0o755)
        (target / "usr/lib/systemd/system/dvrlinkd.service").write_text("")
    return target


def test_post_build_on_a_busybox_target(tmp_path: Path) -> None:
    target = fake_target(tmp_path, "busybox")
    result = post_build(tmp_path, target)
    assert result.returncode == 0, result.stderr
    release = (target / "etc/dvrlink/image-release").read_text()
    assert release == "BOARD=arm-vexpress\nDVRLINK_VERSION=0.1.0\n"
    assert not (target / "etc/systemd").exists()
    # BusyBox's own watchdog daemon would feed the watchdog whatever dvrlinkd does.
    (target / "etc/init.d/S15watchdog").write_text("#!/bin/sh\n")
    result = post_build(tmp_path, target)
    assert result.returncode == 1 and "disable BR2_PACKAGE_BUSYBOX_WATCHDOG" in result.stderr, result


def test_post_build_on_a_systemd_target(tmp_path: Path) -> None:
    target = fake_target(tmp_path, "systemd")
    result = post_build(tmp_path, target)
    assert result.returncode == 0, result.stderr
    conf = (target / "etc/systemd/system.conf.d/50-dvrlink-watchdog.conf").read_text()
    assert "RuntimeWatchdogSec=30s" in conf
    (target / "usr/lib/systemd/system/dvrlinkd.service").unlink()
    result = post_build(tmp_path, target)
    assert result.returncode == 1 and "without dvrlinkd.service" in result.stderr, result


def test_post_build_refuses_a_config_that_is_not_toml(tmp_path: Path) -> None:
    target = fake_target(tmp_path, "busybox")
    (target / "etc/dvrlink/dvrlinkd.toml").write_text("[device\nserial = 1\n")
    result = post_build(tmp_path, target)
    assert result.returncode == 1 and "is not valid TOML" in result.stderr, result
