"""The status file ``<runtime_dir>/status.json`` and its reader for ``dvrlinkd status``.

The daemon rewrites the file atomically on every state change and keepalive acknowledgement
(the runtime directory is on tmpfs, so this costs no flash writes) and removes it on a clean
stop. Times in the file are unix times (wall clock); ``rtt`` is in seconds. The sessions listed
are those open when the file was written (it is rewritten as sessions open, authenticate and
close, and on every keepalive), so their byte counts may be up to a keepalive interval old.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dvrlink.store.files import atomic_write

STATUS_FILE = "status.json"


class StatusUnavailable(Exception):
    """The daemon is not running or its status cannot be read; the message says what to do."""


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """One viewer session, as listed in the status file."""

    id: str
    """Session id (hex), as the broker and the viewer name it."""
    viewer: str | None
    """Fingerprint of the authenticated viewer key; None during set-up and the handshake."""
    path: str | None
    """``relay``, ``direct`` or ``lan``: where the viewer's datagrams come from now; None before any."""
    rtt: float | None
    """Smoothed QUIC round-trip time to the viewer, seconds."""
    bytes_in: int
    """Datagram bytes received from the viewer, all paths."""
    bytes_out: int
    """Datagram bytes sent to the viewer, all paths."""
    plane: str | None = None
    """What carries the session's streams: ``data plane`` once the two ends have exchanged its
    hello, else ``quic`` (an older viewer, or one that opened its streams before); None during
    the handshake."""
    mapped: str | None = None
    """The public port the home router mapped for the session and how (``pcp 100.63.0.2:40001``),
    offered to the viewer as a candidate; None without one."""

    @classmethod
    def from_mapping(cls, item: object) -> SessionStatus:
        """Parse one entry of the file's ``sessions`` list.

        Raises:
            ValueError: not a session entry.
        """
        if not isinstance(item, dict):
            raise ValueError("a session entry is not an object")
        try:
            return cls(
                id=str(item["id"]),
                viewer=None if item.get("viewer") is None else str(item["viewer"]),
                path=None if item.get("path") is None else str(item["path"]),
                rtt=None if item.get("rtt") is None else float(item["rtt"]),
                bytes_in=int(item.get("bytes_in", 0)),
                bytes_out=int(item.get("bytes_out", 0)),
                plane=None if item.get("plane") is None else str(item["plane"]),
                mapped=None if item.get("mapped") is None else str(item["mapped"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad session entry: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ModemBlock:
    """The cellular modem, as listed in the status file (``modem``; absent when the modem is off)."""

    state: str
    """Modem state: port-closed, probing, sim-absent, sim-locked, registering, connecting, online, ..."""
    modem: str = ""
    """Vendor and model, as the modem names itself."""
    sim: str = "unknown"
    """SIM state: unknown, absent, locked, ready, identified."""
    iccid: str = ""
    """The SIM's ICCID with all but its first 6 and last 4 digits hidden."""
    operator: str = ""
    roaming: bool = False
    rat: str = ""
    """Radio technology: GSM, EDGE, UMTS, HSPA, LTE, ..."""
    band: str = ""
    """The serving cell's band, when the modem names it (``LTE BAND 3``)."""
    signal_dbm: int | None = None
    apn: str | None = None
    """The APN of the data link while online."""
    interface: str = ""
    ladder_step: int = 0
    """Highest recovery step taken in the open episode (0: none); names in ``ladder_step_name``."""
    ladder_step_name: str = ""
    data_used_bytes: int | None = None
    """Bytes this billing cycle for this SIM (received + sent)."""
    data_cap_bytes: int | None = None
    """The cap at which optional traffic stops; None: no cap."""
    cap_level: str = "normal"
    """normal, warn or stop."""
    detail: str = ""
    """When not online: what is wrong and what to do."""

    @classmethod
    def from_mapping(cls, item: object) -> ModemBlock:
        """Parse the file's ``modem`` object.

        Raises:
            ValueError: not a modem block.
        """
        if not isinstance(item, dict) or not isinstance(item.get("state"), str):
            raise ValueError("the modem entry is not an object with a state")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in item.items() if k in names})
        except TypeError as exc:
            raise ValueError(f"bad modem entry: {exc}") from exc


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """One snapshot of the daemon, as written to the status file."""

    state: str
    """Presence state: idle, cookie-wait, register-wait, online or backoff."""
    serial: str
    broker: str
    """``host:port`` of the broker's presence service."""
    reflexive_address: str | None
    """``ip:port`` the broker sees the device at."""
    session_id: int | None
    registered_at: float | None
    """Unix time of the current registration."""
    last_keepalive: float | None
    """Unix time of the last acknowledged keepalive (or registration)."""
    rtt: float | None
    """Last round-trip time to the broker, seconds."""
    pid: int
    started_at: float
    """Unix time the daemon started."""
    message: str = ""
    """Last noteworthy event in words (e.g. the broker's refusal message)."""
    sessions: tuple[SessionStatus, ...] = field(default=())
    """Viewer sessions open (or being set up) when the file was written."""
    modem: ModemBlock | None = None
    """The cellular modem; None when ``[modem]`` is off."""
    capture: list[dict[str, Any]] = field(default_factory=list)
    """The capture devices and their channels, as ``dvrlink channels`` lists them (empty without
    ``[[capture]]``)."""
    disks: list[dict[str, Any]] = field(default_factory=list)
    """The recording disks' last looks (``[disks]``): path, state, free_percent, detail."""
    alarms_pending: int = 0
    """Alarms queued on the device that the broker has not stored yet."""
    alarms_dropped: int = 0
    """Alarms dropped unsent since the daemon started (the queue was full)."""
    board: dict[str, Any] = field(default_factory=dict)
    """The board's alarm inputs and relays (``BoardIoService.snapshot``: ``inputs``, ``relays``;
    empty without ``[[alarm_input]]`` and ``[[relay]]``)."""
    supervisor: dict[str, Any] = field(default_factory=dict)
    """The board's supervisor (``SupervisorService.snapshot``: ``port``, ``firmware``, ``supply_mv``,
    ``min_supply_mv``, ``timeout_s``, ``last_reset``, ``problem``...; empty without ``[board]
    supervisor``)."""
    transport: str = "udp"
    """What carries presence: ``udp``, or ``tcp`` (TLS, where UDP is blocked)."""
    keepalive_s: float | None = None
    """The keepalive interval in use, seconds."""
    keepalive_learning: str = "off"
    """``off`` (fixed interval), ``measuring`` the NAT, ``settled``, ``paused`` (the cellular
    data cap is reached: the NAT lifetime probes wait for the next billing cycle), or ``no-nat``
    (the broker sees the device at its own address: nothing to learn)."""
    nat_lifetime_s: float | None = None
    """The longest idle time the NAT kept a UDP mapping in the last measurement."""
    nat_type: str | None = None
    """The NAT's behaviour as the RFC 5780 tests found it (``EIM/APDF``, ``no NAT``, ``UDP
    blocked``; ``daemon/nat_type.py``); None before a run found it."""
    nat_type_bytes: int = 0
    """Bytes the NAT type tests cost since the daemon started (IP and UDP headers included)."""
    endpoint: str = ""
    """``host:port`` presence uses now: the TCP/TLS endpoint over TCP (empty: ``broker``)."""
    link: str = ""
    """The link under presence: over TCP ``connecting``, ``connected`` or ``reconnecting``; over
    UDP ``open``, or ``no socket`` (the broker's name does not resolve, no route)."""
    link_since: float | None = None
    """Unix time the link entered ``link``."""
    link_detail: str = ""
    """Why the link is not up (the last connect error, how the connection ended)."""
    transport_reason: str = ""
    """Why presence is on ``transport``: ``UDP to host:port got no answer: ...`` after a
    fallback, the costs after a move for cost; empty when it is the configured one."""
    node: str = ""
    """The broker node registration goes to (``host:port``, with the resolved address of a name)."""
    nodes: list[dict[str, Any]] = field(default_factory=list)
    """Every broker node (``[broker] hosts``, names resolved): ``node``, ``in_use``,
    ``last_answer`` (unix time), ``problem`` (how it last failed), ``held_s`` (seconds it is still
    passed over after a refusal)."""

    def to_json(self) -> bytes:
        """The file's contents."""
        return (json.dumps(asdict(self), indent=1) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> DaemonStatus:
        """Parse the file's contents.

        Raises:
            ValueError: not a status document.
        """
        try:
            obj = json.loads(data)
            names = {f.name for f in fields(cls)}
            if not isinstance(obj, dict) or not {"state", "serial", "pid"} <= obj.keys():
                raise ValueError("not a status document")
            values = {k: v for k, v in obj.items() if k in names}
            sessions = values.get("sessions", [])
            if not isinstance(sessions, list):
                raise ValueError("not a status document: sessions is not a list")
            values["sessions"] = tuple(SessionStatus.from_mapping(item) for item in sessions)
            if values.get("modem") is not None:
                values["modem"] = ModemBlock.from_mapping(values["modem"])
            disks = values.get("disks", [])
            if not isinstance(disks, list) or not all(isinstance(d, dict) for d in disks):
                raise ValueError("not a status document: disks is not a list of objects")
            capture = values.get("capture", [])
            if not isinstance(capture, list) or not all(isinstance(d, dict) for d in capture):
                raise ValueError("not a status document: capture is not a list of objects")
            nodes = values.get("nodes", [])
            if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
                raise ValueError("not a status document: nodes is not a list of objects")
            if not isinstance(values.get("board", {}), dict):
                raise ValueError("not a status document: board is not an object")
            if not isinstance(values.get("supervisor", {}), dict):
                raise ValueError("not a status document: supervisor is not an object")
            return cls(**values)
        except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a status document: {exc}") from exc


class StatusFile:
    """Writes the daemon's status file in ``runtime_dir``."""

    def __init__(self, runtime_dir: Path) -> None:
        self.path = Path(runtime_dir) / STATUS_FILE

    def write(self, status: DaemonStatus) -> None:
        """Replace the file atomically (mode 0644: it holds nothing secret).

        Raises:
            OSError: the runtime directory is missing or not writable; the message names it.
        """
        atomic_write(self.path, status.to_json(), mode=0o644)

    def remove(self) -> None:
        """Delete the file (clean stop); a missing file is fine."""
        self.path.unlink(missing_ok=True)


def read_status(runtime_dir: Path) -> DaemonStatus:
    """The running daemon's status.

    Raises:
        StatusUnavailable: no status file, an unreadable one, or its process is gone.
    """
    path = Path(runtime_dir) / STATUS_FILE
    hint = "start it with `systemctl start dvrlinkd` (or `dvrlinkd run --config FILE`), then retry"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StatusUnavailable(f"dvrlinkd is not running: no status file {path}; {hint}") from None
    except OSError as exc:
        raise StatusUnavailable(
            f"cannot read {path} ({exc.strerror}); run as root or as the daemon's user"
        ) from None
    try:
        status = DaemonStatus.from_json(data)
    except ValueError as exc:
        raise StatusUnavailable(
            f"{path} is unreadable ({exc}); the daemon rewrites it on its next keepalive, retry then"
        ) from None
    if not pid_alive(status.pid):
        raise StatusUnavailable(
            f"dvrlinkd is not running: {path} names pid {status.pid}, which has exited "
            f"(last state {status.state}); see `journalctl -u dvrlinkd`, and {hint}"
        )
    return status


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_status(status: DaemonStatus, now: float) -> str:
    """A readable block for ``dvrlinkd status``; ``now`` is the current unix time."""

    def when(t: float | None) -> str:
        if t is None:
            return "-"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
        return f"{stamp} ({_ago(now - t)})"

    broker = status.endpoint or status.broker
    if status.transport == "tcp":
        broker += " (TCP/TLS)"
    transport = status.transport
    if status.transport_reason:
        transport += f" ({status.transport_reason})"
    rows = [
        ("state", status.state),
        ("serial", status.serial),
        ("broker", broker),
        ("transport", transport),
        *([("link", format_link(status, when))] if status.link else []),
        *([("broker nodes", f"{len(status.nodes)}, using {status.node}")] if len(status.nodes) > 1 else []),
        ("reflexive address", status.reflexive_address or "-"),
        ("session", f"{status.session_id:#010x}" if status.session_id is not None else "-"),
        ("registered", when(status.registered_at)),
        ("keepalive", format_keepalive(status)),
        *(
            [("NAT type", f"{status.nat_type} ({status.nat_type_bytes} bytes to find)")]
            if status.nat_type
            else []
        ),
        ("last keepalive", when(status.last_keepalive)),
        ("rtt", f"{status.rtt * 1000:.0f} ms" if status.rtt is not None else "-"),
        ("pid", str(status.pid)),
        ("started", when(status.started_at)),
    ]
    if status.message:
        rows.append(("last event", status.message))
    rows.append(("sessions", str(len(status.sessions)) if status.sessions else "none"))
    rows.append(("alarms", format_alarms(status.alarms_pending, status.alarms_dropped)))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name + ':':<{width + 1}} {value}" for name, value in rows]
    if len(status.nodes) > 1:
        after = [name for name, _ in rows].index("broker nodes") + 1
        lines[after:after] = format_nodes(status.nodes, when)
    lines += [f"  {format_session(session)}" for session in status.sessions]
    if status.modem is not None:
        lines += format_modem(status.modem)
    lines += format_capture(status.capture)
    lines += [
        f"disk {d.get('path', '?')}: {d.get('state', '?')} ({d.get('detail', '')})" for d in status.disks
    ]
    lines += format_board(status.board)
    lines += format_supervisor(status.supervisor, now)
    return "\n".join(lines)


def format_nodes(nodes: list[dict[str, Any]], when: Callable[[float | None], str]) -> list[str]:
    """The broker node lines of ``dvrlinkd status``, one per node in list order: the one in use
    marked ``*``, when each last answered, and how it last failed."""
    lines = []
    for node in nodes:
        mark = "*" if node.get("in_use") else " "
        text = f"  {mark} {node.get('node', '?')}"
        answer = node.get("last_answer")
        text += (
            f": last answered {when(answer)}" if isinstance(answer, (int, float)) else ": not answered yet"
        )
        if node.get("problem"):
            text += f"; last failed: it {node['problem']}"
        held = node.get("held_s")
        if isinstance(held, (int, float)) and held > 0:
            text += f"; passed over for {held:.0f} s more"
        lines.append(text)
    return lines


def format_alarms(pending: int, dropped: int) -> str:
    """The ``alarms`` row of ``dvrlinkd status``."""
    text = f"{pending} waiting for the broker" if pending else "none waiting"
    if dropped:
        text += f"; {dropped} dropped unsent since the start (the queue was full: raise [alarms] queue_size)"
    return text


def format_capture(devices: list[dict[str, Any]]) -> list[str]:
    """The capture lines of ``dvrlinkd status``: per device, how many channels have a picture,
    and each channel without one."""
    lines = []
    for device in devices:
        channels = [c for c in device.get("channels", []) if isinstance(c, dict)]
        locked = sum(1 for c in channels if c.get("signal") == "locked")
        head = f"capture {device.get('name', '?')} ({device.get('backend', '?')}): "
        if device.get("error"):
            lines.append(head + f"not read: {device['error']}")
            continue
        lines.append(head + f"{locked} of {len(channels)} channels with a picture")
        for channel in channels:
            if channel.get("signal") != "locked":
                lines.append(f"  channel {channel.get('channel', '?')}: {channel.get('signal', '?')}")
    return lines


def format_board(board: dict[str, Any]) -> list[str]:
    """The board I/O lines of ``dvrlinkd status``: each alarm input's state and each relay's,
    or why its line is not in use."""
    lines = []
    for kind, key in (("alarm input", "inputs"), ("relay", "relays")):
        items = board.get(key, [])
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            head = f"{kind} {item.get('name', '?')} ({item.get('chip', '?')} line {item.get('line', '?')}): "
            if item.get("error"):
                lines.append(head + f"not in use: {item['error']}")
                continue
            if key == "inputs":
                state = str(item.get("state", "?"))
            else:
                state = "on" if item.get("on") is True else "off"
                if isinstance(item.get("pulse_left_s"), (int, float)):
                    state += f" (pulse, {item['pulse_left_s']:g} s left)"
            for_s = item.get("for_s")
            if isinstance(for_s, (int, float)):
                state += f" for {for_s:g} s"
            lines.append(head + state)
    return lines


RESET_CAUSES = {
    1: "heartbeat timeout",
    2: "asked by dvrlinkd",
    4: "supervisor start",
    5: "held back by the cap",
    6: "disarmed by the daemon",
}


def format_supervisor(block: dict[str, Any], now: float) -> list[str]:
    """The supervisor lines of ``dvrlinkd status``: its firmware, the supply, and the last reset
    of this board in words; or why it does not answer."""
    if not block:
        return []
    head = f"supervisor {block.get('port', '?')}: "
    parts = []
    if isinstance(block.get("firmware"), str):
        parts.append(f"firmware {block['firmware']}")
    mv, low = block.get("supply_mv"), block.get("min_supply_mv")
    if isinstance(mv, int):
        supply = f"supply {mv / 1000:.2f} V"
        if isinstance(low, int) and low and low < mv:
            supply += f" (lowest {low / 1000:.2f} V since it started)"
        parts.append(supply)
    if isinstance(block.get("timeout_s"), int):
        parts.append(f"resets the board after {block['timeout_s']} s without a heartbeat")
    if isinstance(block.get("resets_24h"), int) and block["resets_24h"]:
        count = block["resets_24h"]
        parts.append(f"{count} reset{'' if count == 1 else 's'} in 24 h (cap {block.get('daily_cap', '?')})")
    lines = [head + (", ".join(parts) or "not read yet")]
    if block.get("problem"):
        lines.append(f"  not answering: {block['problem']}")
    last = block.get("last_reset")
    if isinstance(last, dict):
        lines.append(f"  last reset: {describe_reset(last, now)}")
    stop = block.get("last_disarm")
    if isinstance(stop, dict):
        lines.append(f"  last stop: {describe_reset(stop, now)}")
    return lines


def describe_reset(entry: dict[str, Any], now: float) -> str:
    """A supervisor reset log entry in words: "the supervisor reset this board at 03:12 after
    120 s without a heartbeat"; ``now`` is unix time (the day is named when it is not today)."""
    cause, unix, detail = entry.get("cause"), entry.get("unix_time"), entry.get("detail")
    if isinstance(unix, int) and unix > 0:
        same_day = time.localtime(unix)[:3] == time.localtime(now)[:3]
        at = "at " + time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", time.localtime(unix))
    else:
        uptime = entry.get("uptime_s", "?")
        at = f"at an unknown time ({uptime} s into the supervisor's run; no heartbeat had told it the time)"
    if cause == 1:
        return f"the supervisor reset this board {at} after {detail} s without a heartbeat"
    if cause == 2:
        return f"the supervisor reset this board {at}, asked by dvrlinkd"
    if cause == 6:
        return f"disarmed by the daemon {at} (dvrlinkd stopped on purpose; not a reset)"
    if cause == 4:
        why = {1: "power-on: the board's supply was cut or failed", 3: "its own watchdog"}.get(
            detail if isinstance(detail, int) else -1, f"reset cause {detail}"
        )
        return f"the supervisor started {at}: {why}"
    what = RESET_CAUSES.get(cause, f"cause {cause}") if isinstance(cause, int) else f"cause {cause}"
    return f"the supervisor logged {what} {at}"


def format_link(status: DaemonStatus, when: Callable[[float | None], str]) -> str:
    """``connected since ...``, ``reconnecting since ...: why`` and the like."""
    text = status.link
    if status.link_since is not None:
        text += f" since {when(status.link_since)}"
    if status.link_detail and status.link not in ("connected", "open"):
        text += f": {status.link_detail}"
    return text


def format_keepalive(status: DaemonStatus) -> str:
    """``every 26.6 s (learned: ...)`` and the like."""
    if status.keepalive_s is None:
        return "-"
    every = f"every {status.keepalive_s:g} s"
    if status.keepalive_learning == "measuring":
        return f"{every} (measuring how long the NAT keeps an idle UDP mapping)"
    if status.keepalive_learning == "no-nat":
        return f"{every} (fixed: no NAT, the broker sees this device at its own address)"
    if status.keepalive_learning == "paused":
        return f"{every} (NAT lifetime probes paused: the cellular data cap is reached)"
    if status.keepalive_learning == "settled" and status.nat_lifetime_s is not None:
        return f"{every} (learned: the NAT keeps an idle UDP mapping at least {status.nat_lifetime_s:g} s)"
    return f"{every} (fixed)"


def format_modem(modem: ModemBlock) -> list[str]:
    """The modem lines of ``dvrlinkd status``: identity, SIM, network, data, and what to do."""
    signal = f"{modem.signal_dbm} dBm" if modem.signal_dbm is not None else "-"
    network = " ".join(x for x in (modem.operator, modem.rat) if x) or "-"
    if modem.band:
        network += f", {modem.band}"
    if modem.roaming:
        network += " (roaming)"
    used = _size(modem.data_used_bytes) if modem.data_used_bytes is not None else "-"
    if modem.data_cap_bytes is not None:
        used += f" of {_size(modem.data_cap_bytes)} cap"
        if modem.cap_level != "normal":
            used += f" ({modem.cap_level})"
    ladder = "-"
    if modem.ladder_step:
        ladder = (
            f"{modem.ladder_step} ({modem.ladder_step_name})"
            if modem.ladder_step_name
            else str(modem.ladder_step)
        )
    rows = [
        ("modem", modem.state),
        ("  device", modem.modem or "-"),
        ("  SIM", f"{modem.sim} {modem.iccid}".strip()),
        ("  network", network),
        ("  signal", signal),
        ("  APN", modem.apn if modem.apn is not None else "-"),
        ("  recovery step", ladder),
        ("  data this cycle", used),
    ]
    if modem.detail:
        rows.append(("  to do" if modem.state != "online" else "  note", modem.detail))
    width = max(len(name) for name, _ in rows)
    return [f"{name + ':':<{width + 1}} {value}" for name, value in rows]


def format_session(session: SessionStatus) -> str:
    """One line per session: id, viewer, path (and what carries the streams), RTT, bytes each way,
    and the port the home router mapped for it, if any."""
    viewer = session.viewer or "(handshake)"
    path = session.path or "-"
    if session.plane:
        path += f" ({session.plane})"
    rtt = f"{session.rtt * 1000:.0f} ms" if session.rtt is not None else "-"
    mapped = f"  mapped {session.mapped}" if session.mapped else ""
    return (
        f"{session.id[:12]}  viewer {viewer}  path {path}  rtt {rtt}  "
        f"in {_size(session.bytes_in)}  out {_size(session.bytes_out)}{mapped}"
    )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def _ago(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"
