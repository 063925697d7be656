#!/bin/sh
#
# Buildroot runs this after the filesystem images are made, as
#   post-image.sh BINARIES_DIR BOARD
# with BOARD from BR2_ROOTFS_POST_SCRIPT_ARGS (aarch64-virt or arm-vexpress).
# It assembles the disk image with genimage and writes run-qemu.sh next to it.

set -eu

BINARIES_DIR="${1:?usage: post-image.sh BINARIES_DIR BOARD}"
BOARD="${2:?usage: post-image.sh BINARIES_DIR BOARD}"
BOARD_DIR="$(dirname "$0")"

cfg="$BOARD_DIR/genimage-$BOARD.cfg"
if [ ! -r "$cfg" ]; then
	echo "post-image.sh: no $cfg for board '$BOARD': use aarch64-virt or arm-vexpress" >&2
	exit 1
fi

# Buildroot's wrapper around genimage (run from Buildroot's top folder, as
# Buildroot runs this script).
BINARIES_DIR="$BINARIES_DIR" support/scripts/genimage.sh -c "$cfg"

run="$BINARIES_DIR/run-qemu.sh"
case "$BOARD" in
aarch64-virt)
	cat >"$run" <<'RUN'
#!/bin/sh
# Boots disk.img on QEMU's virt machine: console on this terminal, the
# i6300esb watchdog resets the machine, user networking. Extra arguments go
# to QEMU (e.g. -device pci-serial,chardev=...).
cd "$(dirname "$0")" || exit 1
exec qemu-system-aarch64 -M virt -cpu cortex-a53 -smp 2 -m 512 -nographic \
	-kernel Image -append "rootwait root=/dev/vda1 console=ttyAMA0" \
	-drive file=disk.img,if=none,format=raw,id=hd0 -device virtio-blk-device,drive=hd0 \
	-netdev user,id=eth0 -device virtio-net-device,netdev=eth0 \
	-device i6300esb -action watchdog=reset "$@"
RUN
	;;
arm-vexpress)
	cat >"$run" <<'RUN'
#!/bin/sh
# Boots sdcard.img on QEMU's vexpress-a9 with 128 MB, like a HiSilicon-class
# recorder: console on this terminal (ttyAMA0), user networking. The kernel's
# softdog is the watchdog. Extra arguments go to QEMU (e.g. -serial pty for a
# modem on ttyAMA1).
cd "$(dirname "$0")" || exit 1
exec qemu-system-arm -M vexpress-a9 -smp 1 -m 128 -nographic \
	-kernel zImage -dtb vexpress-v2p-ca9.dtb \
	-drive file=sdcard.img,if=sd,format=raw \
	-append "console=ttyAMA0,115200 rootwait root=/dev/mmcblk0p2" \
	-net nic,model=lan9118 -net user "$@"
RUN
	;;
esac
# Buildroot's own QEMU (BR2_PACKAGE_HOST_QEMU) first, then the system's.
sed -i "2i PATH=\"${HOST_DIR:-/nonexistent}/bin:\$PATH\"" "$run"
chmod +x "$run"
