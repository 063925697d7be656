"""``dvrlinkd check-config``'s capture checks, and ``dvrlinkd synthetic`` (scripting the synthetic
cameras of a running daemon: ``make demo`` unplugs one this way)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dvrlink.daemon.config import DaemonConfig
from dvrlink.hal.backends import control_path, open_device
from dvrlink.hal.model import DeviceIoError, VideoFormat

ACTIONS = ("unplug", "plug", "no-lock", "motion", "still")


def check_capture(config: DaemonConfig) -> list[str]:
    """Open and probe every ``[[capture]]`` device; one line per device. A device that is missing
    or does not answer gives a line starting ``error:`` that says what to fix."""
    lines = []
    for capture in config.capture:
        try:
            device = open_device(capture, config.device.runtime_dir)
            try:
                found = device.probe()
            finally:
                device.close()
        except (DeviceIoError, ValueError) as exc:
            lines.append(f"error: capture device {capture.name} ({capture.backend}): {exc}")
        else:
            lines.append(f"capture device {capture.name} ({capture.backend}): {found}")
    return lines


def add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    """``dvrlinkd synthetic``'s arguments."""
    parser.add_argument("channel", type=int, help="the channel (0, 1, ...)")
    parser.add_argument(
        "action",
        choices=ACTIONS,
        help="unplug the camera, plug it (in FORMAT), feed it a picture it cannot lock to (no-lock), "
        "or start (motion) or stop (still) motion",
    )
    parser.add_argument("format", nargs="?", help="for plug: the camera's format, e.g. cvbs-pal")
    parser.add_argument(
        "--device", metavar="NAME", help="the synthetic [[capture]] device (default: the first)"
    )


def synthetic_command(config: DaemonConfig, args: argparse.Namespace) -> int:
    """Change a synthetic camera of the running daemon; 0, or 2 with a message on stderr."""
    from dvrlink.hal.synthetic import read_control, write_control  # noqa: PLC0415

    devices = [c for c in config.capture if c.backend == "synthetic"]
    if args.device is not None:
        devices = [c for c in devices if c.name == args.device]
    if not devices:
        which = f" named {args.device}" if args.device else ""
        return _fail(f"{config.source} has no synthetic [[capture]] device{which}; add one (docs/hal.md)")
    capture = devices[0]
    if not 0 <= args.channel < capture.channels:
        return _fail(f"{capture.name} has channels 0-{capture.channels - 1}, not {args.channel}")
    path = control_path(capture, config.device.runtime_dir)
    if not path.parent.is_dir():
        return _fail(f"{path.parent} does not exist: start dvrlinkd first (it makes its runtime folder)")
    lines = read_control(path)
    current = lines.get(args.channel, "plugged").split()
    plugged = current[0] == "plugged"
    if args.action == "plug":
        try:
            video_format = VideoFormat.parse(args.format) if args.format else capture.video_format
        except ValueError as exc:
            return _fail(str(exc))
        lines[args.channel] = f"plugged {video_format.value}"
    elif args.format:
        return _fail(f"only plug takes a format, not {args.action}")
    elif args.action in ("unplug", "no-lock"):
        lines[args.channel] = "unplugged" if args.action == "unplug" else "no-lock"
    else:
        if not plugged:
            return _fail(f"channel {args.channel} has no camera ({current[0]}): plug it first")
        kept = [w for w in current if w != "motion"]
        lines[args.channel] = " ".join(kept + (["motion"] if args.action == "motion" else []))
    try:
        write_control(path, lines)
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror}; run as the daemon's user or root")
    print(f"{capture.name} channel {args.channel}: {lines[args.channel]}")
    return 0


def _fail(message: str) -> int:
    print(f"dvrlinkd synthetic: {message}", file=sys.stderr)
    return 2


def print_lines(lines: Sequence[str]) -> bool:
    """Print the check's lines (errors to stderr); True if none is an error."""
    ok = True
    for line in lines:
        if line.startswith("error:"):
            ok = False
            print(f"dvrlinkd: {line}", file=sys.stderr)
        else:
            print(line)
    return ok
