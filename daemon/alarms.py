"""The device's alarm queue: raise an alarm, keep it on disk until the broker has stored it.

``AlarmQueue.raise_alarm`` numbers an alarm, appends it to a journal file in the state
directory, fsyncs, and hands it to the presence client's ``AlarmSender``
(``protocol/alarm_link.py``), which sends it at once when presence is online. When the broker
acknowledges (``AlarmsDelivered``) or the full queue drops its oldest (``AlarmsDropped``), one
small "removed through seq" entry is appended. So a ``dvrlinkd`` killed at any moment, even by
SIGKILL or a power cut, finds every unacknowledged alarm again at its next start.

**Why a journal and not a state file rewritten per alarm.** A recorder's flash wears with every
block written. Rewriting the whole queue (up to 1,000 alarms, some with a 16 KiB snapshot) on
each alarm and each acknowledgement would write megabytes per burst; the journal writes each
alarm once (a few dozen bytes without a snapshot) and each acknowledgement as 13 bytes. It is
compacted (the live entries written to a new file, fsync, rename: the usual atomic write) only
when its dead bytes exceed both 64 KiB and its live bytes, so the cost stays proportional to
what was appended.

**Journal format** (``alarms.journal``): a sequence of entries ``length u32 ‖ crc32 u32 ‖
payload``; payload ``H stream u32 next_seq u32`` (the first entry: the queue's stream id and
the next seq to give), ``A seq u32 record`` (``AlarmRecord.encode()``), ``R seq u32`` (every
record up to seq left the queue). Loading stops at the first entry that is truncated or fails
its CRC (a write torn by a power cut: only the last one can be) and cuts the file there. A file
that does not start with a valid header is set aside as ``.corrupt`` and a new queue begins,
with a new stream id, so the broker never takes its seqs for repeats.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dvrlink.protocol.alarm_link import AlarmsDelivered, AlarmsDropped, AlarmSender, SenderConfig
from dvrlink.protocol.alarm_wire import AlarmKind, AlarmRecord, check_alarm, kind_name
from dvrlink.protocol.presence_events import ClientEvent

if TYPE_CHECKING:
    from dvrlink.daemon.status import ModemBlock
from dvrlink.store.files import atomic_write, move_corrupt_aside

JOURNAL_FILE = "alarms.journal"
COMPACT_MIN_DEAD = 64 * 1024

_ENTRY = struct.Struct(">II")
_HEADER = struct.Struct(">cII")
_SEQ = struct.Struct(">cI")

log = logging.getLogger(__name__)


class AlarmClient(Protocol):
    """What the queue needs of ``PresenceClient``."""

    def send_alarm(self, record: AlarmRecord, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class JournalContents:
    """What a journal held at load time."""

    stream: int
    next_seq: int
    records: tuple[AlarmRecord, ...]
    torn_bytes: int
    """Bytes cut from the end (a write torn by a crash)."""


def _entry(payload: bytes) -> bytes:
    return _ENTRY.pack(len(payload), zlib.crc32(payload)) + payload


def _header(stream: int, next_seq: int) -> bytes:
    return _entry(_HEADER.pack(b"H", stream, next_seq))


def _add(record: AlarmRecord) -> bytes:
    return _entry(_SEQ.pack(b"A", record.seq) + record.encode())


def _removed(seq: int) -> bytes:
    return _entry(_SEQ.pack(b"R", seq))


def read_journal(data: bytes) -> JournalContents | None:
    """Parse a journal's bytes; None if it does not start with a valid header."""
    offset = 0
    stream: int | None = None
    next_seq = 1
    records: dict[int, AlarmRecord] = {}
    removed_through = 0
    while offset + _ENTRY.size <= len(data):
        size, crc = _ENTRY.unpack_from(data, offset)
        payload = data[offset + _ENTRY.size : offset + _ENTRY.size + size]
        if len(payload) != size or zlib.crc32(payload) != crc or not payload:
            break
        tag = payload[:1]
        try:
            if tag == b"H" and stream is None and size == _HEADER.size:
                _, stream, next_seq = _HEADER.unpack(payload)
            elif stream is None:
                return None
            elif tag == b"A" and size > _SEQ.size:
                seq = _SEQ.unpack_from(payload)[1]
                records[seq] = AlarmRecord.decode(seq, payload[_SEQ.size :])
                next_seq = max(next_seq, seq + 1)
            elif tag == b"R" and size == _SEQ.size:
                removed_through = max(removed_through, _SEQ.unpack(payload)[1])
            else:
                break
        except ValueError:
            break
        offset += _ENTRY.size + size
    if stream is None:
        return None
    live = tuple(records[s] for s in sorted(records) if s > removed_through)
    return JournalContents(stream, max(next_seq, removed_through + 1), live, len(data) - offset)


class AlarmQueue:
    """The daemon's alarm queue (see the module docstring). Make it with ``open``, give its
    ``sender`` to ``PresenceClient(alarms=...)``, then ``attach`` the client.

    The call for an event source (the HAL, the modem service) is :meth:`raise_alarm`.
    """

    def __init__(
        self,
        path: Path,
        contents: JournalContents,
        config: SenderConfig,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.sender = AlarmSender(config, contents.stream, contents.records)
        self._next_seq = contents.next_seq
        self._wall_clock = wall_clock
        self._client: AlarmClient | None = None
        self._flush: Callable[[], None] = lambda: None
        self._core_clock: Callable[[], float] = time.monotonic
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._entry_sizes: dict[int, int] = {r.seq: len(_add(r)) for r in contents.records}
        """Journal bytes of each queued record, by seq (oldest first), to judge compaction."""
        self._live_bytes = len(_header(0, 0)) + sum(self._entry_sizes.values())
        self._size = os.fstat(self._fd).st_size
        self.stats: dict[str, int] = {"raised": 0, "delivered": 0, "dropped": 0, "write_errors": 0}
        self.on_change: Callable[[], None] = lambda: None
        """Called after an alarm is queued, delivered or dropped (the status file's count)."""

    @classmethod
    def open(
        cls,
        state_dir: Path,
        config: SenderConfig | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        wall_clock: Callable[[], float] = time.time,
    ) -> AlarmQueue:
        """Load (or create) ``state_dir``/``alarms.journal``.

        Raises:
            OSError: the journal cannot be read or written (the message names it).
        """
        path = Path(state_dir) / JOURNAL_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        contents = read_journal(data) if data is not None else None
        if data is not None and contents is None:
            move_corrupt_aside(
                path,
                f"it does not start with a journal header ({len(data)} bytes)",
                what="alarm queue",
                instead="starting an empty queue with a new stream id",
                log=log,
            )
        if contents is None:
            stream = int.from_bytes(rng(4), "big") or 1
            contents = JournalContents(stream, 1, (), 0)
            atomic_write(path, _header(stream, 1))
        elif contents.torn_bytes:
            log.warning("alarm queue %s: cut %d bytes of a torn last write", path, contents.torn_bytes)
            _rewrite(path, contents.stream, contents.next_seq, contents.records)
        if contents.records:
            log.info(
                "alarm queue %s: %d alarms (seq %d-%d) wait for the broker",
                path,
                len(contents.records),
                contents.records[0].seq,
                contents.records[-1].seq,
            )
        return cls(path, contents, config or SenderConfig(), wall_clock)

    def attach(self, client: AlarmClient, flush: Callable[[], None], core_clock: Callable[[], float]) -> None:
        """Send through ``client`` (the ``PresenceClient`` made with ``alarms=self.sender``);
        ``flush`` sends what it queued (the presence link's ``flush``); ``core_clock`` is its clock."""
        self._client = client
        self._flush = flush
        self._core_clock = core_clock

    @property
    def pending(self) -> int:
        """Alarms not yet stored by the broker."""
        return self.sender.pending

    def raise_alarm(
        self,
        kind: AlarmKind | int,
        *,
        channel: int | None = None,
        detail: str = "",
        snapshot: bytes | None = None,
        time_ms: int | None = None,
    ) -> AlarmRecord:
        """Queue an alarm for the broker: numbered, written to the journal (fsync), then sent
        at once if presence is online. ``detail`` is cut to 120 bytes of UTF-8; ``time_ms``
        defaults to now (unix ms). A journal write error is logged and counted, and the alarm
        is still sent (it is then lost if the daemon stops before the broker has it).

        Raises:
            SnapshotTooLargeError: ``snapshot`` is over 16 KiB (``alarm_wire.MAX_SNAPSHOT``).
            ValueError: ``snapshot`` is not a JPEG, or ``kind``/``channel`` is not 0-255.
        """
        detail = check_alarm(int(kind), channel, detail, snapshot)
        when = round(self._wall_clock() * 1000) if time_ms is None else time_ms
        record = AlarmRecord(self._next_seq, when, int(kind), channel, detail, snapshot)
        self._next_seq += 1
        entry = _add(record)
        self._append(entry)
        self._entry_sizes[record.seq] = len(entry)
        self._live_bytes += len(entry)
        self.stats["raised"] += 1
        log.info(
            "alarm %d %s%s%s",
            record.seq,
            kind_name(record.kind),
            "" if channel is None else f" channel {channel}",
            f": {detail}" if detail else "",
        )
        if self._client is not None:
            self._client.send_alarm(record, self._core_clock())
            self._flush()
        else:
            self.sender.push(record, self._core_clock())
        self.on_change()
        return record

    def on_event(self, event: ClientEvent) -> None:
        """Note ``AlarmsDelivered``/``AlarmsDropped`` in the journal; other events are ignored."""
        if isinstance(event, AlarmsDelivered):
            self.stats["delivered"] += event.count
            log.debug("alarms through seq %d stored by the broker", event.through_seq)
        elif isinstance(event, AlarmsDropped):
            self.stats["dropped"] += event.count
            log.warning(
                "alarm queue full (%d): dropped the oldest alarm, seq %d, unsent",
                self.sender.pending,
                event.through_seq,
            )
        else:
            return
        for seq in [s for s in self._entry_sizes if s <= event.through_seq]:
            self._live_bytes -= self._entry_sizes.pop(seq)
        self._append(_removed(event.through_seq))
        self._maybe_compact()
        self.on_change()

    def close(self) -> None:
        """Close the journal (everything written is already synced)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- journal ----------------------------------------------------------------------------

    def _append(self, entry: bytes) -> None:
        try:
            written = os.write(self._fd, entry)
            if written != len(entry):
                raise OSError(f"short write ({written} of {len(entry)} bytes)")
            os.fsync(self._fd)
        except OSError as exc:
            self.stats["write_errors"] += 1
            log.error(
                "cannot append to the alarm queue %s (%s): queued alarms may not survive a restart; "
                "check free space and the health of the state directory's storage",
                self.path,
                exc,
            )
            return
        self._size += len(entry)

    def _maybe_compact(self) -> None:
        live = self._live_bytes
        dead = self._size - live
        if dead < COMPACT_MIN_DEAD or dead < live:
            return
        try:
            records = self.sender.queued()
            _rewrite(self.path, self.sender.stream, self._next_seq, records)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            log.error("cannot compact the alarm queue %s (%s); it keeps growing", self.path, exc)
            return
        os.close(self._fd)
        self._fd = fd
        self._size = os.fstat(fd).st_size


def _rewrite(path: Path, stream: int, next_seq: int, records: tuple[AlarmRecord, ...]) -> None:
    """Replace the journal with its live entries (atomic write)."""
    atomic_write(path, _header(stream, next_seq) + b"".join(_add(r) for r in records))


def sender_config(queue_size: int, retransmit_initial_s: float, retransmit_max_s: float) -> SenderConfig:
    """The sender settings of ``[alarms]`` (``daemon.config.AlarmsConfig``'s fields)."""
    return SenderConfig(capacity=queue_size, rto_initial=retransmit_initial_s, rto_max=retransmit_max_s)


_SIM_PRESENT = ("ready", "identified", "locked")


class ModemAlarmWatch:
    """Turns the modem's status (``ModemBlock`` snapshots, as ``dvrlinkd status`` shows them) into
    alarms: the SIM taken out (``SIM_REMOVED``), the data cap reached (``DATA_CAP_REACHED``).
    Sans-I/O: feed each snapshot to ``update``; the first one only sets what is normal."""

    def __init__(self) -> None:
        self._sim: str | None = None
        self._iccid = ""
        self._cap_level: str | None = None

    def update(self, block: ModemBlock) -> list[tuple[AlarmKind, str]]:
        """The alarms this snapshot calls for, as (kind, detail)."""
        alarms: list[tuple[AlarmKind, str]] = []
        if self._sim in _SIM_PRESENT and block.sim == "absent":
            which = f" {self._iccid}" if self._iccid else ""
            alarms.append(
                (AlarmKind.SIM_REMOVED, f"SIM{which} removed: the recorder is off the cellular network")
            )
        if self._cap_level is not None and self._cap_level != "stop" and block.cap_level == "stop":
            used, cap = block.data_used_bytes or 0, block.data_cap_bytes or 0
            alarms.append(
                (
                    AlarmKind.DATA_CAP_REACHED,
                    f"{used} of {cap} bytes used this cycle: live view over cellular stops",
                )
            )
        self._sim, self._cap_level = block.sim, block.cap_level
        if block.iccid:
            self._iccid = block.iccid
        return alarms
