"""What differs between the emulated boards: Debian architecture, QEMU machine, console, wheels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Target:
    """One emulated board class.

    ``wheel_platforms`` are the pip platform tags whose wheels run on the guest's glibc.
    """

    name: str
    debian_arch: str
    qemu_system: str
    machine: str
    cpu: str
    console: str
    kernel_package: str
    wheel_platforms: tuple[str, ...]
    default_mem_mb: int
    buildroot_board: str
    """What the Buildroot defconfig passes post-build.sh as BOARD (BR2_ROOTFS_POST_SCRIPT_ARGS)."""
    init: str = "systemd"
    """The image's init system: ``systemd`` (dvrlinkd.service) or ``busybox`` (S95dvrlinkd)."""
    guest_dirs: tuple[str, ...] = ("rootfs",)
    """The rig's own files for this board: folders of hil/qemu/guest copied over the root in order."""
    source_wheels: tuple[str, ...] = ()
    """Dependencies without a wheel for the platform: compiled in a build chroot under qemu-user."""
    kernel_args: str = ""
    """More kernel command line for this board."""
    config_disk: bool = False
    """Hand a config in on a small read-only virtio disk, not fw_cfg (the kernel lacks its driver)."""


TARGETS: dict[str, Target] = {
    "arm64": Target(
        name="arm64",
        debian_arch="arm64",
        qemu_system="qemu-system-aarch64",
        machine="virt",
        # cortex-a53: the recorder SoCs' core; "max" adds pointer authentication, which TCG
        # emulates slowly.
        cpu="cortex-a53",
        console="ttyAMA0",
        kernel_package="linux-image-arm64",
        wheel_platforms=("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
        default_mem_mb=512,
        buildroot_board="aarch64-virt",
    ),
    "armhf": Target(
        name="armhf",
        debian_arch="armhf",
        qemu_system="qemu-system-arm",
        # virt, not vexpress-a9: it has PCI (the i6300esb watchdog, virtio disk and NIC,
        # pci-serial) and Debian's armmp kernel boots it without a board DTB. highmem=off keeps
        # the PCI windows below 4 GiB, which a kernel without LPAE cannot reach.
        machine="virt,highmem=off",
        # cortex-a7: the core of Hi3521A/Hi3520DV300-class recorder SoCs.
        cpu="cortex-a7",
        console="ttyAMA0",
        kernel_package="linux-image-armmp",
        wheel_platforms=(
            "manylinux_2_31_armv7l",
            "manylinux_2_28_armv7l",
            "manylinux_2_17_armv7l",
            "manylinux2014_armv7l",
            "linux_armv7l",
        ),
        default_mem_mb=128,
        buildroot_board="arm-vexpress",
        init="busybox",
        guest_dirs=("busybox",),
        # PyPI has armv7l wheels for cryptography, none for these (nor for cffi, which
        # cryptography needs, nor for gpiod 2.x; its aarch64 wheel serves arm64).
        source_wheels=("aioquic", "pylsqpack", "cffi", "gpiod"),
        # eth0, as on the Buildroot image (BR2_SYSTEM_DHCP="eth0"): no predictable names.
        kernel_args="net.ifnames=0",
        # Debian's armmp kernel has no fw_cfg driver (CONFIG_FW_CFG_SYSFS unset).
        config_disk=True,
    ),
}


def target(name: str) -> Target:
    """The target called ``name``.

    Raises:
        KeyError: no such target; the message lists the ones there are.
    """
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"no QEMU target {name!r}: choose one of {', '.join(sorted(TARGETS))}") from None
