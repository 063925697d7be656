"""Print the modem detection events of this machine (or of a umockdev testbed) as JSON lines.

    python -m hil.umockdev.watch [--settle SECONDS]

With ``umockdev-wrapper`` and ``UMOCKDEV_DIR`` set (see ``testbed.py``) it watches the fake USB tree.
It prints ``{"event": "ready"}`` once the coldplug scan is done, then one line per event, and stops
when its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from dvrlink.modem.detect import (
    DetectConfig,
    DetectionEvent,
    ModemAdded,
    ModemIncomplete,
    ModemRemoved,
    UdevModemWatcher,
)


def as_json(event: DetectionEvent) -> dict[str, object]:
    """One event as a JSON-ready dict."""
    if isinstance(event, ModemAdded):
        return {
            "event": "added",
            "profile": event.profile.name,
            "at_port": event.at_port,
            "data_port": event.data_port,
            "net_iface": event.net_iface,
            "usb_path": event.usb_path,
            "usb_id": event.usb_id,
            "serial_ports": list(event.serial_ports),
        }
    if isinstance(event, ModemRemoved):
        return {"event": "removed", "profile": event.profile.name, "usb_path": event.usb_path}
    if isinstance(event, ModemIncomplete):
        return {"event": "incomplete", "profile": event.profile.name, "message": event.message}
    return {"event": type(event).__name__}


async def run(settle_s: float) -> None:
    """Watch until stdin closes."""
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()

    def on_stdin() -> None:
        if not sys.stdin.buffer.read1(4096) and not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    async with UdevModemWatcher(DetectConfig(settle_s=settle_s)) as watcher:
        print(json.dumps({"event": "ready"}), flush=True)
        while not stdin_closed.done():
            getter = asyncio.ensure_future(watcher.next_event())
            await asyncio.wait({getter, stdin_closed}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                print(json.dumps(as_json(getter.result())), flush=True)
            else:
                getter.cancel()
    loop.remove_reader(sys.stdin.fileno())


def main() -> None:
    """Parse arguments and watch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=1.0, help="quiet seconds before a device is read")
    args = parser.parse_args()
    asyncio.run(run(args.settle))


if __name__ == "__main__":
    main()
