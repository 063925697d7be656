#!/bin/sh
#
# Buildroot runs this after the overlay is copied, as
#   post-build.sh TARGET_DIR BOARD
# with BOARD from BR2_ROOTFS_POST_SCRIPT_ARGS (aarch64-virt or arm-vexpress).
# It checks what the image needs to run dvrlinkd and records what was built.

set -eu

TARGET_DIR="${1:?usage: post-build.sh TARGET_DIR BOARD}"
BOARD="${2:?usage: post-build.sh TARGET_DIR BOARD}"

fail() {
	echo "post-build.sh: $*" >&2
	exit 1
}

config="$TARGET_DIR/etc/dvrlink/dvrlinkd.toml"
[ -r "$config" ] || fail "$config is missing: enable BR2_PACKAGE_DVRLINK and the board overlay"

# The config must at least be TOML; dvrlinkd checks its keys at start.
python="${HOST_DIR:-}/bin/python3"
if [ -x "$python" ]; then
	"$python" -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$config" ||
		fail "$config is not valid TOML"
fi

if [ -x "$TARGET_DIR/usr/lib/systemd/systemd" ] || [ -x "$TARGET_DIR/lib/systemd/systemd" ]; then
	[ -e "$TARGET_DIR/usr/lib/systemd/system/dvrlinkd.service" ] ||
		[ -e "$TARGET_DIR/etc/systemd/system/dvrlinkd.service" ] ||
		fail "systemd image without dvrlinkd.service"
	# systemd feeds the hardware watchdog itself and restarts dvrlinkd when its
	# WatchdogSec= pings stop.
	mkdir -p "$TARGET_DIR/etc/systemd/system.conf.d"
	cat >"$TARGET_DIR/etc/systemd/system.conf.d/50-dvrlink-watchdog.conf" <<'CONF'
[Manager]
RuntimeWatchdogSec=30s
RebootWatchdogSec=2min
CONF
else
	[ -x "$TARGET_DIR/etc/init.d/S95dvrlinkd" ] ||
		fail "BusyBox init image without /etc/init.d/S95dvrlinkd"
	# BusyBox's watchdog applet would hold /dev/watchdog and feed it whatever
	# dvrlinkd does; S95dvrlinkd feeds it only while dvrlinkd is healthy.
	[ ! -e "$TARGET_DIR/etc/init.d/S15watchdog" ] ||
		fail "S15watchdog is installed: disable BR2_PACKAGE_BUSYBOX_WATCHDOG, S95dvrlinkd feeds the watchdog"
fi

# Python: remove what dvrlinkd never imports (python-prune.txt says what and why).
sh "$(dirname "$0")/prune-python.sh" "$TARGET_DIR" || fail "pruning the image's Python failed"

# What the image holds, for `cat /etc/dvrlink/image-release` on a board.
version="unknown"
# site-packages in Buildroot, dist-packages in a Debian-based root filesystem.
for meta in "$TARGET_DIR"/usr/lib/python3*/*-packages/dvrlink-*.dist-info/METADATA; do
	[ -r "$meta" ] || continue
	version="$(sed -n 's/^Version: //p' "$meta")"
done
{
	echo "BOARD=$BOARD"
	echo "DVRLINK_VERSION=$version"
} >"$TARGET_DIR/etc/dvrlink/image-release"
