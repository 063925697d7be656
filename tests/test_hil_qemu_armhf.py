"""The armhf board's build steps that need neither root nor emulation (its boot is in tests/hil).

The accounts from dvrlink.mk's makeusers block, the sdists compiled in the build chroot, the
BusyBox image's package files checked against dvrlink.mk, the layer keys of the two boards, the
rig's BusyBox init files and the QEMU command line.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest

from hil.qemu import build
from hil.qemu.boot import CONFIG_DISK_SERIAL, BootOptions, qemu_command, write_config_disk
from hil.qemu.build import BuildError, Image, mk_users, source_requirements
from hil.qemu.targets import target

BUSYBOX = build.GUEST_FILES / "busybox"


def test_mk_users_turns_makeusers_lines_into_sysusers_lines() -> None:
    mk = (
        "define FOO_USERS\n"
        "\tfoo -1 foo -1 * /var/lib/foo - dialout,video foo daemon\n"
        "\tbar 1001 staff 50 * - /bin/sh - \n"
        "endef\n"
    )
    assert mk_users(mk) == [
        "g foo -",
        'u foo -:foo "foo daemon" /var/lib/foo /bin/false',
        "m foo dialout",
        "m foo video",
        "g staff 50",
        'u bar 1001:staff "" - /bin/sh',
    ]


def test_mk_users_reads_dvrlink_mk() -> None:
    lines = mk_users((build.PACKAGE_DIR / "dvrlink.mk").read_text())
    assert "m dvrlink dialout" in lines, lines
    users = [line for line in lines if line.startswith("u dvrlink -:dvrlink ")]
    assert len(users) == 1 and "/var/lib/dvrlink" in users[0], lines


def test_mk_users_says_what_is_missing() -> None:
    with pytest.raises(BuildError, match="no <PKG>_USERS block"):
        mk_users("DVRLINK_VERSION = 1\n")
    with pytest.raises(BuildError, match="makeusers wants 9"):
        mk_users("define X_USERS\n\tfoo -1 foo\nendef\n")


def test_source_requirements_keep_dvrlinks_specifiers() -> None:
    wanted = ["aioquic>=1.7,<2", "cryptography>=42", "Py_Serial>=3.5"]
    assert source_requirements(("aioquic", "pylsqpack", "py-serial"), wanted) == [
        "aioquic>=1.7,<2",
        "pylsqpack",
        "Py_Serial>=3.5",
    ]


def test_armhf_compiles_what_has_no_armv7l_wheel() -> None:
    armhf = target("armhf")
    assert set(armhf.source_wheels) == {"aioquic", "pylsqpack", "cffi", "gpiod"}
    assert armhf.init == "busybox" and armhf.default_mem_mb == 128
    assert build.base_packages(armhf) == build.BUSYBOX_BASE_PACKAGES
    assert "systemd" not in build.BUSYBOX_BASE_PACKAGES
    assert build.base_packages(target("arm64")) == build.BASE_PACKAGES


def test_the_busybox_image_gets_what_dvrlink_mk_installs_for_sysv() -> None:
    mk = re.sub(r"\\\n\s*", " ", (build.PACKAGE_DIR / "dvrlink.mk").read_text())  # continuations
    names = {
        "$(@D)": str(build.REPO),
        "$(BR2_EXTERNAL_DVRLINK_PATH)": str(build.REPO / "buildroot"),
    }
    installs: set[tuple[str, str, int]] = set()
    for block in re.finditer(r"define (\w+)\n(.*?)\nendef", mk, re.S):
        if block.group(1) == "DVRLINK_INSTALL_INIT_SYSTEMD":
            continue  # the systemd image's files
        install = r"\$\(INSTALL\) -D -m (\d+)\s+(\S+)\s+([^\s;]+)"
        for mode, source, dest in re.findall(install, block.group(2)):
            resolved = source
            for name, value in names.items():
                resolved = resolved.replace(name, value)
            installs.add((str(Path(resolved).resolve()), dest.removeprefix("$(TARGET_DIR)/"), int(mode, 8)))
    assert installs, "no $(INSTALL) lines found in dvrlink.mk: the parser needs updating"
    table = {(str(source.resolve()), dest, mode) for source, dest, mode in build.PACKAGE_INSTALLS_SYSV}
    assert table == installs, f"PACKAGE_INSTALLS_SYSV differs from dvrlink.mk: {table ^ installs}"


def test_armhf_keys_follow_the_build_chroot_and_arm64_only_its_extension(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arm64, armhf = target("arm64"), target("armhf")
    first64, first = build.keys(arm64), build.keys(armhf)
    assert first.base != first64.base and first.deps != first64.deps
    assert first.dvrlink == first64.dvrlink, "the dvrlink wheel is pure Python: one layer key"
    assert first.ext != first64.ext, "the C extension is compiled per architecture"

    monkeypatch.setattr(build, "BUILD_PACKAGES", (*build.BUILD_PACKAGES, "make"))
    changed = build.keys(armhf)
    assert changed.deps != first.deps and changed.base == first.base and changed.ext != first.ext
    changed64 = build.keys(arm64)
    assert (changed64.base, changed64.deps, changed64.dvrlink) == (
        first64.base,
        first64.deps,
        first64.dvrlink,
    )
    assert changed64.ext != first64.ext, "arm64 compiles the C extension in a build chroot too"

    monkeypatch.setattr(build, "BUSYBOX_BASE_PACKAGES", (*build.BUSYBOX_BASE_PACKAGES, "vim-tiny"))
    rebased = build.keys(armhf)
    assert rebased.base != first.base and rebased.deps != changed.deps, "the chroot is made from the base"
    assert build.keys(arm64) == changed64, "the BusyBox image's packages are not arm64's"


def test_each_board_keys_only_its_own_rig_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in ("rootfs", "busybox"):
        (tmp_path / folder / "etc").mkdir(parents=True)
        (tmp_path / folder / "etc/hostname").write_text("dvrlink\n")
    monkeypatch.setattr(build, "GUEST_FILES", tmp_path)
    arm64, armhf = target("arm64"), target("armhf")
    before64, before = build.keys(arm64), build.keys(armhf)
    (tmp_path / "busybox/etc/inittab").write_text("::sysinit:/etc/init.d/rcS\n")
    assert build.keys(arm64) == before64
    assert build.keys(armhf).image != before.image


def test_rig_files_make_busybox_init(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "sbin").symlink_to("usr/sbin")
    copied = build.install_rig_files(root, target("armhf"))
    assert (root / "sbin/init").is_symlink() and str((root / "sbin/init").readlink()) == "/bin/busybox"
    assert "/etc/inittab" in copied and "/etc/init.d/rcS" in copied, copied
    assert not (root / "etc/systemd").exists(), "the BusyBox image got systemd files"


def test_inittab_runs_rcs_and_a_root_shell_on_the_board_console() -> None:
    entries = [line.split(":", 3) for line in (BUSYBOX / "etc/inittab").read_text().splitlines()]
    entries = [e for e in entries if len(e) == 4 and not e[0].startswith("#")]
    assert ["", "", "sysinit", "/etc/init.d/rcS"] in entries, entries
    shells = [e for e in entries if e[2] == "respawn"]
    assert shells == [[target("armhf").console, "", "respawn", "-/bin/bash"]], shells


def test_init_scripts_run_in_order_before_s95dvrlinkd() -> None:
    scripts = sorted(p.name for p in (BUSYBOX / "etc/init.d").glob("S??*"))
    assert scripts == sorted(scripts) and scripts, scripts
    assert all(name < "S95dvrlinkd" for name in scripts), f"a rig script runs after S95dvrlinkd: {scripts}"
    for path in (BUSYBOX / "etc/init.d").iterdir():
        assert path.stat().st_mode & 0o111, f"{path.name} is not executable: rcS would skip it"
        assert path.read_text().startswith("#!/bin/sh\n"), path.name
    config = (BUSYBOX / "etc/init.d/S90dvrlink-hil-config").read_text()
    assert f"= {CONFIG_DISK_SERIAL} ]" in config and "-m 0640 -o root -g dvrlink" in config


def test_armhf_qemu_command(tmp_path: Path) -> None:
    armhf = target("armhf")
    image = Image(tmp_path, tmp_path / "rootfs.ext4", tmp_path / "vmlinuz", tmp_path / "initrd.img", {})
    argv = qemu_command(armhf, image, BootOptions(mem_mb=armhf.default_mem_mb), tmp_path)
    assert argv[0] == "qemu-system-arm"
    assert argv[argv.index("-M") + 1] == "virt,highmem=off"
    assert argv[argv.index("-cpu") + 1] == "cortex-a7"
    assert argv[argv.index("-m") + 1] == "128"
    assert "net.ifnames=0" in argv[argv.index("-append") + 1]
    assert "i6300esb" in argv and "watchdog=reset" in argv
    assert "-fw_cfg" not in argv


def test_armhf_config_comes_on_a_tar_disk(tmp_path: Path) -> None:
    armhf = target("armhf")
    config = tmp_path / "mine.toml"
    config.write_text('[device]\nserial = "X"\n')
    image = Image(tmp_path, tmp_path / "rootfs.ext4", tmp_path / "vmlinuz", tmp_path / "initrd.img", {})
    options = BootOptions(mem_mb=128, config=config)
    argv = qemu_command(armhf, image, options, tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists(), "the command line alone writes nothing (boot --print)"
    write_config_disk(armhf, options, tmp_path)
    argv = qemu_command(armhf, image, options, tmp_path)
    assert "-fw_cfg" not in argv, "armmp has no fw_cfg driver"
    drive = next(a for a in argv if a.startswith("file=") and "id=config" in a)
    assert "readonly=on" in drive
    assert f"virtio-blk-pci,drive=config,serial={CONFIG_DISK_SERIAL}" in argv
    disk = Path(drive.split(",")[0].removeprefix("file="))
    with tarfile.open(disk) as archive:
        member = archive.getmember("dvrlinkd.toml")
        assert (member.uid, member.mode) == (0, 0o640)
        extracted = archive.extractfile(member)
        assert extracted is not None and extracted.read() == config.read_bytes()
    assert disk.stat().st_size % 512 == 0, "a raw disk is whole sectors"
