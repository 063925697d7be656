"""Text and JSON renderings of devices for the ``dvrlink`` command.

Pure functions: the current time comes in as ``now`` (unix seconds), so output is testable.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping, Sequence

from dvrlink.protocol.identity import format_fingerprint
from dvrlink.protocol.presence_report import DeviceReport
from dvrlink.viewer.api_types import Device
from dvrlink.viewer.home import Pin


class PinStatus(enum.Enum):
    """How the key the broker reports for a device compares with the one pinned at pairing."""

    OK = "ok"  # same fingerprint
    MISMATCH = "MISMATCH"  # the broker reports another key than the one pinned at pairing
    NOT_PINNED = "-"  # not paired from this computer (or its pins.json was lost)


def format_ago(timestamp: float | None, now: float) -> str:
    """``"never"`` for None, else ``"3s ago"``, ``"5m ago"``, ``"2h ago"`` or ``"4d ago"``.

    A time slightly in the future (clock skew between broker and viewer) reads ``"0s ago"``;
    one more than a minute ahead reads ``"in 30d"``.
    """
    if timestamp is None:
        return "never"
    if timestamp - now > 60:
        return "in " + format_ago(now, timestamp).removesuffix(" ago")
    age = max(0, int(now - timestamp))
    if age < 60:
        return f"{age}s ago"
    if age < 3600:
        return f"{age // 60}m ago"
    if age < 86400:
        return f"{age // 3600}h ago"
    return f"{age // 86400}d ago"


def format_time(timestamp: float | None, now: float) -> str:
    """``"never"`` for None, else ``"2024-05-01 12:00:00 UTC (3h ago)"``."""
    if timestamp is None:
        return "never"
    when = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return f"{when:%Y-%m-%d %H:%M:%S} UTC ({format_ago(timestamp, now)})"


def format_interval(seconds: float | None) -> str:
    """``"-"`` for None, else ``"25s"`` (or ``"2.5s"``)."""
    if seconds is None:
        return "-"
    return f"{seconds:g}s"


def pin_status(device: Device, pin: Pin | None) -> PinStatus:
    """Compare the fingerprint the broker reports with the pinned one."""
    if pin is None:
        return PinStatus.NOT_PINNED
    return PinStatus.OK if pin.fingerprint == device.fingerprint else PinStatus.MISMATCH


def mismatch_warning(device: Device, pin: Pin) -> str:
    """The stderr warning for a device whose reported key differs from the pinned one."""
    return (
        f"warning: for {device.serial}, the broker reports another key than the one pinned at "
        f"pairing (broker {format_fingerprint(device.fingerprint)}, pinned "
        f"{format_fingerprint(pin.fingerprint)}): do not trust it; if the device was reset or "
        f"replaced, pair it again with the code on its label"
    )


def mismatch_warnings(devices: Sequence[Device], pins: Mapping[str, Pin]) -> list[str]:
    """One warning per device whose pin status is MISMATCH."""
    out = []
    for device in devices:
        pin = pins.get(device.serial)
        if pin is not None and pin_status(device, pin) is PinStatus.MISMATCH:
            out.append(mismatch_warning(device, pin))
    return out


def render_devices(devices: Sequence[Device], pins: Mapping[str, Pin], now: float) -> str:
    """The ``dvrlink devices`` table, one line per device sorted by serial, ending in a newline.

    Columns: SERIAL, ONLINE (yes/no), LAST SEEN, ADDRESS (reflexive ip:port or -), PINNED
    (ok, MISMATCH, or - when this computer holds no pin for the device); when any device has
    reported, also SIGNAL (dBm), NETWORK (radio technology and operator), DATA (used this billing
    cycle) and KEEPALIVE (the interval it uses, and the NAT lifetime it measured).
    """
    if not devices:
        return "no devices are paired to this account: pair one with `dvrlink pair SERIAL CODE`\n"
    reports = any(device.report is not None for device in devices)
    header: tuple[str, ...] = ("SERIAL", "ONLINE", "LAST SEEN", "ADDRESS", "PINNED")
    if reports:
        header += ("SIGNAL", "NETWORK", "DATA", "KEEPALIVE")
    rows = [header]
    for device in sorted(devices, key=lambda d: d.serial):
        row: tuple[str, ...] = (
            device.serial,
            "yes" if device.online else "no",
            format_ago(device.last_seen, now),
            device.reflexive_address or "-",
            pin_status(device, pins.get(device.serial)).value,
        )
        if reports:
            row += report_cells(device.report)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def report_cells(report: DeviceReport | None) -> tuple[str, str, str, str]:
    """SIGNAL, NETWORK, DATA and KEEPALIVE cells of a device's report (``-`` where unknown)."""
    if report is None:
        return ("-", "-", "-", "-")
    signal = "-" if report.signal_dbm is None else f"{report.signal_dbm} dBm"
    network = " ".join(x for x in (report.rat, report.operator) if x) or "-"
    data = "-" if report.data_used is None else format_size(report.data_used)
    keepalive = "-"
    if report.keepalive_s is not None:
        keepalive = f"{report.keepalive_s} s"
        if report.presence_transport:
            keepalive += f" {report.presence_transport}"
        if report.nat_lifetime_s:
            keepalive += f" (NAT {report.nat_lifetime_s} s)"
    return (signal, network, data, keepalive)


def format_size(size: int) -> str:
    """Bytes in B, kB, MB or GB (powers of 1000), one decimal from kB up."""
    if size < 1000:
        return f"{size} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def device_json(device: Device, pin: Pin | None) -> dict[str, object]:
    """A device as the contract's JSON object plus ``pinned_fingerprint`` and ``pin_status``."""
    return {
        "serial": device.serial,
        "online": device.online,
        "last_seen": device.last_seen,
        "reflexive_address": device.reflexive_address,
        "registered_at": device.registered_at,
        "keepalive_interval": device.keepalive_interval,
        "fingerprint": device.fingerprint,
        "paired_at": device.paired_at,
        "report": None if device.report is None else device.report.as_dict(),
        "reported_at": device.reported_at,
        "pinned_fingerprint": pin.fingerprint if pin is not None else None,
        "pin_status": {PinStatus.OK: "ok", PinStatus.MISMATCH: "mismatch", PinStatus.NOT_PINNED: "none"}[
            pin_status(device, pin)
        ],
    }


def render_status(device: Device, pin: Pin | None, now: float) -> str:
    """The ``dvrlink status SERIAL`` report: one ``name: value`` line per field, ending in a newline."""
    status = pin_status(device, pin)
    pinned = format_fingerprint(pin.fingerprint) if pin is not None else "- (not paired from this computer)"
    if status is PinStatus.MISMATCH:
        pinned += "  MISMATCH"
    fields = [
        ("serial", device.serial),
        ("online", "yes" if device.online else "no"),
        ("last seen", format_time(device.last_seen, now)),
        ("address", device.reflexive_address or "-"),
        ("registered at", format_time(device.registered_at, now)),
        ("keepalive interval", format_interval(device.keepalive_interval)),
        ("paired at", format_time(device.paired_at, now)),
        ("fingerprint", format_fingerprint(device.fingerprint)),
        ("pinned fingerprint", pinned),
    ]
    width = max(len(name) for name, _ in fields) + 1
    return "".join(f"{(name + ':').ljust(width)} {value}\n" for name, value in fields)


def render_channels(serial: str, devices: Sequence[Mapping[str, object]]) -> str:
    """The ``dvrlink channels`` table: one row per channel (signal, format, motion, for how
    long), under a line per capture device; ends in a newline. Values a newer dvrlinkd adds are
    ignored; missing ones show as ``?``."""
    if not devices:
        return f"{serial} has no capture devices (no [[capture]] in its dvrlinkd config)\n"
    lines: list[str] = []
    for device in devices:
        name, backend, error = (str(device.get(key, "?")) for key in ("name", "backend", "error"))
        lines.append(f"{name} ({backend})" + (f": {error}" if error and error != "?" else ""))
        channels = device.get("channels")
        rows = [("CHANNEL", "SIGNAL", "FORMAT", "MOTION", "FOR")]
        for entry in channels if isinstance(channels, list) else []:
            if not isinstance(entry, dict):
                continue
            for_s = entry.get("for_s")
            rows.append(
                (
                    str(entry.get("channel", "?")),
                    str(entry.get("signal", "?")),
                    str(entry.get("format", "?")) if entry.get("signal") == "locked" else "-",
                    "yes" if entry.get("motion") is True else "no",
                    format_interval(float(for_s)) if isinstance(for_s, (int, float)) else "?",
                )
            )
        if len(rows) == 1:
            lines.append("  (no channel read yet)")
            continue
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += [
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
    return "\n".join(lines) + "\n"


def render_relays(serial: str, board: Mapping[str, object]) -> str:
    """The ``dvrlink relay`` table: the device's alarm inputs (state, for how long) and relays
    (on/off, a pulse's time left), or why a line is not in use; ends in a newline. Missing
    values show as ``?``."""
    inputs, relays = board.get("inputs"), board.get("relays")
    inputs = [i for i in inputs if isinstance(i, dict)] if isinstance(inputs, list) else []
    relays = [r for r in relays if isinstance(r, dict)] if isinstance(relays, list) else []
    if not inputs and not relays:
        return f"{serial} has no alarm inputs or relays (no [[alarm_input]] or [[relay]] in its config)\n"
    rows = [("KIND", "NAME", "LINE", "STATE", "FOR")]
    for kind, items in (("input", inputs), ("relay", relays)):
        for item in items:
            where = f"{item.get('chip', '?')}:{item.get('line', '?')}"
            if item.get("error"):
                state = f"not in use: {item['error']}"
            elif kind == "input":
                state = str(item.get("state", "?"))
            else:
                state = "on" if item.get("on") is True else "off"
                left = item.get("pulse_left_s")
                if isinstance(left, (int, float)):
                    state += f" (pulse, {left:g} s left)"
            for_s = item.get("for_s")
            shown = format_interval(float(for_s)) if isinstance(for_s, (int, float)) else "-"
            rows.append((kind, str(item.get("name", "?")), where, state, shown))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"
