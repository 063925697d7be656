"""A umockdev testbed driven line by line on stdin, for the modem hot-plug tests.

Runs under the system Python (Debian's python3-gi and gir1.2-umockdev-1.0; the project's virtual
environment does not see ``gi``), inside ``umockdev-wrapper`` so that the testbed's own checks see
the fake ``/sys``:

    umockdev-wrapper /usr/bin/python3 hil/umockdev/testbed.py

It prints ``root <dir>``: run the program under test with ``UMOCKDEV_DIR=<dir>`` inside
``umockdev-wrapper`` and it sees the fake USB tree and gets the fake uevents. Commands, one per line;
each is answered with ``ok ...`` or ``error <message>``:

    add FILE        add the devices of a umockdev description (each gets an "add" uevent)
    remove PATH     unplug the USB device at sysfs PATH: "remove" uevents for everything under it,
                    deepest first as the kernel sends them, then the device leaves the tree
    quit
"""

import os
import sys

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev  # noqa: E402


def _tree(root: str, sys_path: str) -> list[str]:
    """Every device (a folder with a uevent file) at or under sys_path, deepest first."""
    found = []
    for folder, _dirs, files in os.walk(root + sys_path):
        if "uevent" in files and not os.path.islink(folder):
            found.append(folder[len(root) :])
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _devname(root: str, sys_path: str) -> str | None:
    """The DEVNAME of a device's uevent file (``/dev/ttyUSB0``), or None."""
    with open(root + sys_path + "/uevent") as uevent:
        for line in uevent:
            if line.startswith("DEVNAME="):
                name = line.strip().split("=", 1)[1]
                return name if name.startswith("/dev/") else "/dev/" + name
    return None


def _drop_dangling_links(root: str) -> None:
    """Remove links left pointing at removed devices (umockdev keeps /sys/bus/*/devices/<name> and
    /sys/class/*/<name>, and adding the device again would then fail)."""
    for folder, dirs, files in os.walk(root + "/sys"):
        if folder == root + "/sys":
            dirs.remove("devices")
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path) and not os.path.exists(path):
                os.unlink(path)


def main() -> None:
    """Serve commands until quit or end of input."""
    testbed = UMockdev.Testbed.new()
    root = testbed.get_root_dir()
    print(f"root {root}", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        try:
            if command == "add":
                testbed.add_from_file(argument)
                print(f"ok added {argument}", flush=True)
            elif command == "remove":
                devices = _tree(root, argument)
                if not devices:
                    print(f"error no device at {argument}", flush=True)
                    continue
                nodes = [_devname(root, device) for device in devices]
                for device in devices:
                    testbed.uevent(device, "remove")
                testbed.remove_device(argument)
                _drop_dangling_links(root)
                for node in nodes:
                    # umockdev keeps a tty's /dev link (to the PTY standing in for it)
                    if node and os.path.islink(root + node):
                        os.unlink(root + node)
                print(f"ok removed {len(devices)}", flush=True)
            elif command == "quit":
                break
            else:
                print(f"error unknown command {command!r}: use add, remove or quit", flush=True)
        except GLib.Error as exc:
            print(f"error {exc.message}", flush=True)
    print("bye", flush=True)


if __name__ == "__main__":
    main()
