"""The daemon's side of the board supervisor's link as a plain object: requests in, frames out,
bytes in, typed events out, time passed in. No I/O.

:class:`SupervisorClient` numbers each request (a seq of 1-255, never one still waiting for its
reply), sends it, sends it again with the same seq when no reply comes within
``reply_timeout_s`` (the firmware answers a repeated power-cycle or reset request again without
acting twice), and matches each reply to its request by type and seq. Every request ends in
exactly one event: :class:`ReplyReceived` (the firmware's reply, an ``ErrorReply`` included), or
:class:`RequestFailed` (no reply after every try, a reply whose payload does not parse, or a
newer heartbeat that took its place). Replies nobody waits for (a late one after a retransmit
was answered, one to another program) are counted, never raised.

Seconds are the core's clock (``now``: any monotonic clock); ``get_timer`` says when
``handle_timer`` is due. The asyncio driver is ``dvrlink.daemon.supervisor_link``.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass

from dvrlink.protocol import supervisor_wire as wire


class RequestKind(enum.IntEnum):
    """The requests the daemon makes (their message types)."""

    HEARTBEAT = wire.MsgType.HEARTBEAT
    POWER_CYCLE_MODEM = wire.MsgType.POWER_CYCLE_MODEM
    RESET_SOC = wire.MsgType.RESET_SOC
    READ_RESET_LOG = wire.MsgType.READ_RESET_LOG
    READ_SUPPLY = wire.MsgType.READ_SUPPLY
    SET_HEARTBEAT_TIMEOUT = wire.MsgType.SET_HEARTBEAT_TIMEOUT
    GET_STATUS = wire.MsgType.GET_STATUS
    DISARM = wire.MsgType.DISARM


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How patiently the client waits. Times in seconds."""

    reply_timeout_s: float = 0.5
    """Wait for a reply before sending the request again (the firmware answers within a
    millisecond of a frame's last byte; 115200 baud moves a frame in under 25 ms)."""
    tries: int = 3
    """Sends of one request before it fails."""

    def __post_init__(self) -> None:
        if self.reply_timeout_s <= 0:
            raise ValueError(f"reply_timeout_s must be > 0 seconds, not {self.reply_timeout_s}")
        if not 1 <= self.tries <= 20:
            raise ValueError(f"tries must be 1-20, not {self.tries}")


class SupervisorEvent:
    """Base of the client's events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ReplyReceived(SupervisorEvent):
    """The firmware answered request ``request_id`` (an ``ErrorReply`` if it refused it)."""

    request_id: int
    kind: RequestKind
    reply: wire.Reply
    tries: int
    """Sends it took (1: the first was answered)."""


@dataclass(frozen=True, slots=True)
class RequestFailed(SupervisorEvent):
    """Request ``request_id`` got no usable reply; ``reason`` says why in words."""

    request_id: int
    kind: RequestKind
    reason: str


@dataclass(slots=True)
class ClientCounts:
    """What the client did and skipped (``wire.DecoderCounts`` has the byte-level counts)."""

    requests: int = 0
    sent: int = 0
    retransmits: int = 0
    replies: int = 0
    refused: int = 0
    """Replies that were the firmware's ``ErrorReply``."""
    timeouts: int = 0
    malformed: int = 0
    superseded: int = 0
    unmatched: int = 0
    """Valid frames that answer no waiting request (late, a duplicate, or not a reply)."""


@dataclass(slots=True)
class _Pending:
    request_id: int
    kind: RequestKind
    seq: int
    frame: bytes
    due: float
    tries: int = 1
    first_sent: float = 0.0


class SupervisorClient:
    """The client core (see the module docstring)."""

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig()
        self.decoder = wire.FrameDecoder()
        self.counts = ClientCounts()
        self._pending: dict[int, _Pending] = {}
        """By seq."""
        self._events: collections.deque[SupervisorEvent] = collections.deque()
        self._out: list[bytes] = []
        self._next_id = 1
        self._next_seq = 1

    # -- requests --------------------------------------------------------------------------------

    def heartbeat(self, health: wire.Health, unix_time: int, now: float) -> int:
        """Send a heartbeat (``unix_time`` 0 when the time is unknown); a heartbeat still waiting
        for its reply is dropped (``RequestFailed``, superseded): only the newest one counts.
        Returns the request id."""
        for pending in list(self._pending.values()):
            if pending.kind is RequestKind.HEARTBEAT:
                del self._pending[pending.seq]
                self.counts.superseded += 1
                self._events.append(
                    RequestFailed(pending.request_id, pending.kind, "a newer heartbeat took its place")
                )
        unix_time = unix_time if 0 <= unix_time <= 0xFFFFFFFF else 0
        return self._request(RequestKind.HEARTBEAT, lambda seq: wire.heartbeat(seq, health, unix_time), now)

    def power_cycle_modem(self, profile: wire.ModemProfile | int, now: float) -> int:
        """Ask for a modem power cycle with ``profile``. Returns the request id.

        Raises:
            ValueError: ``profile`` does not fit a byte.
        """
        if not 0 <= int(profile) <= 0xFF:
            raise ValueError(f"modem profile {profile} does not fit a byte (0-255)")
        return self._request(
            RequestKind.POWER_CYCLE_MODEM, lambda seq: wire.power_cycle_modem(seq, profile), now
        )

    def reset_soc(self, now: float) -> int:
        """Ask the supervisor to reset this board. Returns the request id."""
        return self._request(RequestKind.RESET_SOC, wire.reset_soc, now)

    def read_reset_log(self, now: float) -> int:
        return self._request(RequestKind.READ_RESET_LOG, wire.read_reset_log, now)

    def read_supply(self, now: float) -> int:
        return self._request(RequestKind.READ_SUPPLY, wire.read_supply, now)

    def get_status(self, now: float) -> int:
        return self._request(RequestKind.GET_STATUS, wire.get_status, now)

    def set_heartbeat_timeout(self, seconds: int, now: float) -> int:
        """Tell the supervisor its heartbeat timeout. Returns the request id.

        Raises:
            ValueError: ``seconds`` outside 0-65535 (the firmware itself takes 10-3600 and
                answers OUT_OF_RANGE otherwise).
        """
        wire.set_heartbeat_timeout(0, seconds)  # raises before anything is queued
        return self._request(
            RequestKind.SET_HEARTBEAT_TIMEOUT, lambda seq: wire.set_heartbeat_timeout(seq, seconds), now
        )

    def disarm(self, unix_time: int, now: float) -> int:
        """Stand the supervisor's heartbeat watchdog down before a deliberate stop (the next
        heartbeat arms it again); ``unix_time`` 0 when not known. A firmware older than 1.1 answers
        an ``ErrorReply`` (UNKNOWN_TYPE) and stays armed. Returns the request id."""
        unix_time = unix_time if 0 <= unix_time <= 0xFFFFFFFF else 0
        return self._request(RequestKind.DISARM, lambda seq: wire.disarm(seq, unix_time), now)

    def cancel(self, request_id: int) -> bool:
        """Stop waiting for ``request_id`` (no event follows); False if it was not waiting."""
        for seq, pending in list(self._pending.items()):
            if pending.request_id == request_id:
                del self._pending[seq]
                return True
        return False

    @property
    def waiting(self) -> int:
        """Requests waiting for their reply."""
        return len(self._pending)

    # -- I/O side --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the port. Never raises on what they hold."""
        for frame in self.decoder.feed(data, now * 1000):
            self._frame(frame)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is due (a retransmit, a give-up, a stalled partial frame)."""
        due = [p.due for p in self._pending.values()]
        stalled = self.decoder.deadline()
        if stalled is not None:
            due.append(stalled / 1000)
        return min(due) if due else None

    def handle_timer(self, now: float) -> None:
        for frame in self.decoder.poll(now * 1000):
            self._frame(frame)
        for pending in sorted(self._pending.values(), key=lambda p: p.due):
            if pending.due > now:
                continue
            if pending.tries >= self.config.tries:
                del self._pending[pending.seq]
                self.counts.timeouts += 1
                waited = now - pending.first_sent
                self._events.append(
                    RequestFailed(
                        pending.request_id,
                        pending.kind,
                        f"no reply to {pending.kind.name.lower().replace('_', ' ')} after "
                        f"{pending.tries} tries ({waited:.1f} s)",
                    )
                )
                continue
            pending.tries += 1
            pending.due = now + self.config.reply_timeout_s
            self.counts.retransmits += 1
            self._send(pending.frame)

    def next_event(self) -> SupervisorEvent | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[bytes]:
        """Frames to write to the port, oldest first."""
        out, self._out = self._out, []
        return out

    # -- internals -------------------------------------------------------------------------------

    def _request(self, kind: RequestKind, build: Callable[[int], bytes], now: float) -> int:
        seq = self._free_seq()
        request_id = self._next_id
        self._next_id += 1
        frame = build(seq)
        self._pending[seq] = _Pending(
            request_id, kind, seq, frame, now + self.config.reply_timeout_s, first_sent=now
        )
        self.counts.requests += 1
        self._send(frame)
        return request_id

    def _free_seq(self) -> int:
        for _ in range(255):
            seq = self._next_seq
            self._next_seq = self._next_seq % 255 + 1
            if seq not in self._pending:
                return seq
        raise RuntimeError("255 supervisor requests are waiting for replies; wait for some to end first")

    def _send(self, frame: bytes) -> None:
        self.counts.sent += 1
        self._out.append(frame)

    def _frame(self, frame: wire.Frame) -> None:
        pending = self._pending.get(frame.seq)
        matches = pending is not None and (
            frame.msg_type == wire.MsgType.ERROR or frame.msg_type == pending.kind | wire.REPLY_BIT
        )
        if pending is None or not matches:
            self.counts.unmatched += 1
            return
        del self._pending[frame.seq]
        try:
            reply = wire.parse_reply(frame)
        except wire.ReplyError as exc:
            self.counts.malformed += 1
            self._events.append(RequestFailed(pending.request_id, pending.kind, str(exc)))
            return
        if isinstance(reply, wire.ErrorReply):
            if reply.request_type != pending.kind:
                # An error reply to another request type under this seq: not ours.
                self._pending[frame.seq] = pending
                self.counts.unmatched += 1
                return
            self.counts.refused += 1
        self.counts.replies += 1
        self._events.append(ReplyReceived(pending.request_id, pending.kind, reply, pending.tries))
