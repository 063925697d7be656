"""``dvrlink view``: a recorder's channel, live, in a player on this machine.

The viewer opens a session, asks the device for its channels (``channels``) and its live view
port (``info``), and forwards a local port to the device's RTSP server through the session, so
the player sees ``rtsp://127.0.0.1:LOCAL/DEVICE/CHANNEL/main`` (or ``sub``). It chooses the
sub-stream on the relay, where the bytes cost the relay and often a cellular uplink, unless
told otherwise. A channel without a picture is refused with its state, not played as black.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dvrlink.viewer.errors import EXIT_USAGE, ViewerError

# ffplay would first watch 20 frames of an H.264 stream to guess its frame rate (0.8-1 s of a
# live picture, measured with ffprobe: 1.00 s, 0.09 s without): the rate is in the stream's
# timestamps, so it starts at once.
PLAYERS = {
    "ffplay": (
        "ffplay",
        "-hide_banner",
        "-loglevel",
        "warning",
        "-rtsp_transport",
        "tcp",
        "-fpsprobesize",
        "0",
        "-window_title",
    ),
    "vlc": ("vlc", "--rtsp-tcp", "--meta-title"),
}


@dataclass(frozen=True, slots=True)
class Choice:
    """The stream ``dvrlink view`` plays."""

    device: str
    channel: int
    profile: str


def choose(
    devices: Sequence[Mapping[str, Any]],
    device: str | None,
    channel: int,
    profile: str | None,
    path: str,
    cellular: bool = False,
) -> Choice:
    """The device (named, else the first), the channel and the profile (given, else ``sub`` on the
    relay or when the recorder's uplink is ``cellular``, and ``main`` elsewhere).

    Raises:
        ViewerError: no capture device, no such device or channel, or a channel without a
            picture (the message says which and what to check).
    """
    if not devices:
        raise ViewerError("the recorder has no capture devices (no [[capture]] in its dvrlinkd config)")
    names = [str(d.get("name", "?")) for d in devices]
    found = next((d for d in devices if d.get("name") == device), None) if device else devices[0]
    if found is None:
        raise ViewerError(
            f"the recorder has no capture device {device!r}; it has {', '.join(names)}", EXIT_USAGE
        )
    name = str(found.get("name", "?"))
    rows = {r.get("channel"): r for r in found.get("channels", []) if isinstance(r, dict)}
    row = rows.get(channel)
    if row is None:
        listed = ", ".join(str(c) for c in sorted(k for k in rows if isinstance(k, int))) or "none"
        raise ViewerError(
            f"{name} has no watched channel {channel} (it lists {listed}); see `dvrlink channels`", EXIT_USAGE
        )
    signal = row.get("signal")
    if signal != "locked":
        raise ViewerError(
            f"{name} channel {channel} has no picture ({signal}"
            + (f" for {row['for_s']} s" if isinstance(row.get("for_s"), (int, float)) else "")
            + "): check the camera, its power and its cable"
        )
    return Choice(name, channel, pick_profile(profile, path, cellular))


def pick_profile(profile: str | None, path: str, cellular: bool) -> str:
    """``profile`` if given, else ``sub`` on the relay or a cellular uplink, ``main`` elsewhere."""
    return profile or ("sub" if path == "relay" or cellular else "main")


def stream_url(port: int, choice: Choice) -> str:
    """The local RTSP URL of the chosen stream."""
    return f"rtsp://127.0.0.1:{port}/{choice.device}/{choice.channel}/{choice.profile}"


def player_command(player: str, url: str, title: str) -> list[str]:
    """The player's command line for ``url``."""
    return [*PLAYERS[player], title, url]
