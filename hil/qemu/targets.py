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
