"""The device's NAT type for its report: the RFC 5780 tests (``protocol/nat_classify.py``) against
the broker node it is registered with, when that node has an alternate address.

**When.** :class:`NatTypeSchedule` (sans-I/O, time passed in) decides: once after the first
registration (``delay_s`` later, so the tests do not compete with what a device does first), and
again after a registration from another public IP address (another network, another carrier
NAT), but never sooner than ``min_interval_s`` after the last run (a change within that time is
classified when it is over). A run that found nothing (no answer over UDP while presence runs
over UDP: a loss, not a verdict) is retried after ``min_interval_s``. A run during the data cap's
pause is put off the same way.

**Whether the broker can.** The broker answers RFC 5780 only with ``stun_alternate_host``. The
device learns it for one round trip: a Binding request with an empty CHANGE-REQUEST to the
node's presence port (28 bytes; ``protocol/stun_probe.py``), answered with OTHER-ADDRESS (56
bytes) only by a node that has an alternate address. Without one, the run ends there and the
classifier (and with it aioice) is never loaded; the report keeps no NAT type. No answer at all
while presence runs over TCP is a verdict: ``UDP blocked``.

**What.** ``EIM/EIF``, ``EIM/ADF``, ``EIM/APDF``, ``ADM/…``, ``APDM/APDF`` (RFC 4787 mapping /
filtering); ``no NAT`` (the broker sees the device's own address and anyone may send to it),
``no NAT, APDF`` (own address, but a firewall filters); ``UDP blocked``. It goes into the report
(``nat_type``, item 9).

**Cost.** The tests run from one extra UDP socket, without the hairpin test, with retransmissions
every ``retransmit_s`` up to ``test_timeout_s``: on an open path about a dozen datagrams of 28-56
bytes, on a filtering NAT the two filtering tests' unanswered retransmissions on top. Every run's
bytes, IP and UDP headers included, are counted (``NatTypeOutcome``, the ``nat_type_bytes`` in
``dvrlinkd status``): typically under 1.5 kB, at most once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dvrlink.driver.core_driver import CoreDriver
from dvrlink.protocol.presence_events import Address
from dvrlink.protocol.stun_probe import ProbeVerdict, StunProbe

if TYPE_CHECKING:  # the classifier needs aioice's STUN codec: loaded only when a run needs it
    from dvrlink.protocol.nat_classify import NatBehaviour, Transmit

log = logging.getLogger(__name__)

UDP_BLOCKED = "UDP blocked"
NO_NAT = "no NAT"
IPV4_OVERHEAD = 28
"""IPv4 + UDP header bytes per datagram (IPv6: 48)."""
IPV6_OVERHEAD = 48


@dataclass(frozen=True, slots=True)
class NatTypeTiming:
    """When and how patiently the NAT is classified. Seconds."""

    delay_s: float = 60.0
    """After the first registration (``[presence] learn_after_s``)."""
    min_interval_s: float = 3600.0
    """Between two runs at least."""
    retransmit_s: float = 1.0
    """Between retransmissions of an unanswered test."""
    test_timeout_s: float = 3.0
    """How long a test waits for its answer (the filtering tests always wait this long on a
    filtering NAT: no answer is their result)."""

    def __post_init__(self) -> None:
        if not 0 < self.retransmit_s <= self.test_timeout_s:
            raise ValueError(
                f"retransmit_s {self.retransmit_s} must be positive and at most test_timeout_s "
                f"{self.test_timeout_s}"
            )


@dataclass(frozen=True, slots=True)
class NatTypeOutcome:
    """One run: ``nat_type`` (None: not found, ``note`` says why) and its cost on the wire."""

    nat_type: str | None
    note: str
    datagrams: int
    bytes_on_wire: int
    """Sent and received, IP and UDP headers included."""
    retry: bool = False
    """Nothing was found, but a later run may find it (an answer was lost)."""


def nat_type_of(behaviour: NatBehaviour) -> str | None:
    """The report's text for what the classifier found; None when it is unknown."""
    if not behaviour.udp:
        return UDP_BLOCKED
    if behaviour.filtering is None:
        return None
    if not behaviour.nat:
        if behaviour.filtering.value == "EIF":
            return NO_NAT
        return f"{NO_NAT}, {behaviour.filtering.value}"
    if behaviour.mapping is None:
        return None
    return f"{behaviour.mapping.value}/{behaviour.filtering.value}"


class NatTypeSchedule:
    """When to classify (see the module docstring). Sans-I/O: ``get_timer`` says when a run is
    due; the driver calls ``started`` when it starts one and ``finished`` when it ends."""

    def __init__(self, timing: NatTypeTiming) -> None:
        self._timing = timing
        self._due_at: float | None = None
        self._last_run: float | None = None
        self._classified_ip: str | None = None
        """The public IP the last run (or the one running) classified."""
        self._pending_ip: str | None = None
        self.running = False

    def get_timer(self) -> float | None:
        """When the next run is due, or None (nothing to do until the next registration)."""
        return None if self.running else self._due_at

    def registered(self, reflexive: Address, now: float) -> None:
        """Presence registered; the broker sees the device at ``reflexive``."""
        ip = reflexive[0]
        if ip == self._classified_ip or (ip == self._pending_ip and self._due_at is not None):
            return
        self._pending_ip = ip
        if self._last_run is None:
            self._due_at = now + self._timing.delay_s
        else:
            self._due_at = max(now, self._last_run + self._timing.min_interval_s)

    def started(self, now: float) -> None:
        """A run starts now."""
        self.running = True
        self._last_run = now
        self._due_at = None
        self._classified_ip = self._pending_ip

    def put_off(self, now: float) -> None:
        """A due run cannot go now (the data cap): try again after ``min_interval_s``."""
        self._due_at = now + self._timing.min_interval_s

    def finished(self, retry: bool, now: float) -> None:
        """The run ended; ``retry``: it found nothing this time, try again after
        ``min_interval_s`` (else the next run waits for another public address)."""
        self.running = False
        if retry:
            self._classified_ip = None
            self._due_at = now + self._timing.min_interval_s


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes, Address], None]) -> None:
        self._received = received

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: the test times out
        log.debug("NAT type: %s", exc)


class _CheckCore:
    """``StunProbe`` as a ``CoreDriver`` core (it has no events)."""

    def __init__(self, probe: StunProbe) -> None:
        self.probe = probe

    def next_event(self) -> None:
        return None

    def datagrams_to_send(self) -> list[bytes]:
        return self.probe.datagrams_to_send()

    def get_timer(self) -> float | None:
        return self.probe.get_timer()

    def handle_timer(self, now: float) -> None:
        self.probe.handle_timer(now)


def local_ip_towards(server: Address) -> str:
    """The local address the kernel picks for ``server`` (no packet is sent).

    Raises:
        OSError: no route to ``server``.
    """
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(server)
        return str(probe.getsockname()[0])


async def classify(server: Address, timing: NatTypeTiming, *, presence_over_udp: bool) -> NatTypeOutcome:
    """One run against the broker node's presence port ``server`` (see the module docstring).

    Raises:
        OSError: no route to the server, or the socket cannot be bound.
    """
    loop = asyncio.get_running_loop()
    local_ip = local_ip_towards(server)
    overhead = IPV6_OVERHEAD if ":" in local_ip else IPV4_OVERHEAD
    counts = [0, 0]  # datagrams, bytes on the wire
    handler: list[Callable[[bytes, Address], None]] = []

    def received(data: bytes, source: Address) -> None:
        counts[0] += 1
        counts[1] += len(data) + overhead
        if handler:
            handler[0](data, source)

    udp, _endpoint = await loop.create_datagram_endpoint(
        lambda: _Endpoint(received), local_addr=(local_ip, 0)
    )

    def send(data: bytes, destination: Address) -> None:
        counts[0] += 1
        counts[1] += len(data) + overhead
        udp.sendto(data, destination)

    def outcome(nat_type: str | None, note: str, retry: bool = False) -> NatTypeOutcome:
        return NatTypeOutcome(nat_type, note, counts[0], counts[1], retry)

    driver: CoreDriver[None, bytes] | None = None
    try:
        check = _CheckCore(
            StunProbe(
                os.urandom(12),
                timeout_s=timing.test_timeout_s,
                initial_rto_s=timing.retransmit_s,
                rfc5780=True,
            )
        )
        done = asyncio.Event()

        def check_sent(batch: Sequence[bytes]) -> None:
            for data in batch:
                send(data, server)

        driver = CoreDriver(
            check, check_sent, after_step=lambda: done.set() if check.probe.get_timer() is None else None
        )
        checking = driver
        handler.append(lambda data, _source: checking.receive(check.probe.datagram_received, data))
        check.probe.start(loop.time())
        driver.flush()
        await done.wait()
        driver.close()
        handler.clear()
        if check.probe.verdict is not ProbeVerdict.REACHED:
            if presence_over_udp:
                return outcome(
                    None, "the broker's STUN port did not answer (a loss: tried again later)", True
                )
            return outcome(UDP_BLOCKED, "no STUN answer over UDP; presence runs over TCP")
        other = check.probe.other_address
        if other is None:
            return outcome(
                None, "the broker node has no RFC 5780 alternate address (its stun_alternate_host is not set)"
            )
        behaviour = await _run_classifier(udp, server, timing, handler, send)
        found = nat_type_of(behaviour)
        return outcome(found, behaviour.describe(), retry=found is None)
    finally:
        if driver is not None:
            driver.close()  # no timer left behind, also when the run is cancelled
        handler.clear()
        udp.close()


async def _run_classifier(
    udp: asyncio.DatagramTransport,
    server: Address,
    timing: NatTypeTiming,
    handler: list[Callable[[bytes, Address], None]],
    send: Callable[[bytes, Address], None],
) -> NatBehaviour:
    """Drive the RFC 5780 classifier on ``udp`` until it is done."""
    from dvrlink.protocol.nat_classify import (  # noqa: PLC0415 (aioice: only for a run)
        Classified,
        ClassifierConfig,
        NatClassifier,
        Socket,
    )

    loop = asyncio.get_running_loop()
    local = udp.get_extra_info("sockname")
    core = NatClassifier(
        ClassifierConfig(server, timing.retransmit_s, timing.test_timeout_s, hairpin=False),
        (str(local[0]), int(local[1])),
        loop.time(),
    )
    finished: asyncio.Future[NatBehaviour] = loop.create_future()

    def on_event(event: Classified) -> None:
        if not finished.done():
            finished.set_result(event.behaviour)

    def transmit(batch: Sequence[Transmit]) -> None:
        for each in batch:
            send(each.data, each.destination)

    driver: CoreDriver[Classified, Transmit] = CoreDriver(
        core, transmit, on_event=on_event, name="NAT classifier"
    )
    handler.append(
        lambda data, source: driver.receive_from(
            lambda d, a, now: core.receive_datagram(Socket.MAIN, d, a, now), data, source
        )
    )
    driver.flush()
    try:
        return await finished
    finally:
        driver.close()
        handler.clear()


class NatTyper:
    """Runs the schedule on the event loop: ``registered`` on each registration, ``close`` at
    shutdown. Each verdict goes to ``on_result``. ``server`` is the presence UDP address of the
    node in use; ``transport`` the presence transport ("udp" or "tcp"); ``paused`` says why
    optional traffic is paused (the data cap), empty when it may run."""

    def __init__(
        self,
        timing: NatTypeTiming,
        server: Callable[[], Address],
        on_result: Callable[[str], None],
        *,
        transport: Callable[[], str] = lambda: "udp",
        paused: Callable[[], str] = lambda: "",
    ) -> None:
        self._timing = timing
        self.schedule = NatTypeSchedule(timing)
        self._server = server
        self._on_result = on_result
        self._transport = transport
        self._paused = paused
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.last: NatTypeOutcome | None = None
        self.bytes_on_wire = 0
        """Every run's bytes so far, IP and UDP headers included."""
        self.runs = 0
        self._closed = False

    def registered(self, reflexive: Address) -> None:
        """Presence registered; the broker sees the device at ``reflexive``."""
        if self._closed:
            return
        self.schedule.registered(reflexive, self._loop.time())
        self._arm()

    def status(self) -> dict[str, Any]:
        """For the status file: the NAT type found and what finding it cost."""
        last = self.last
        return {
            "nat_type": last.nat_type if last is not None else None,
            "nat_type_bytes": self.bytes_on_wire,
        }

    async def close(self) -> None:
        """Stop: no further runs; a running one is cancelled."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.schedule.get_timer()
        if due is not None:
            self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self._paused():
            log.info("NAT type: not classified now (%s); trying again later", self._paused())
            self.schedule.put_off(now)
            self._arm()
            return
        self.schedule.started(now)
        self._task = self._loop.create_task(self._run(), name="nat-type")

    async def _run(self) -> None:
        server = self._server()
        retry = True
        try:
            outcome = await classify(server, self._timing, presence_over_udp=self._transport() == "udp")
        except OSError as exc:
            log.warning("NAT type: cannot test towards %s:%d (%s); trying again later", *server, exc)
        else:
            self.runs += 1
            self.last = outcome
            self.bytes_on_wire += outcome.bytes_on_wire
            retry = outcome.retry
            log.info(
                "NAT type: %s (%s; %d datagrams, %d bytes on the wire)",
                outcome.nat_type or "not found",
                outcome.note,
                outcome.datagrams,
                outcome.bytes_on_wire,
            )
            if outcome.nat_type is not None:
                self._on_result(outcome.nat_type)
        finally:
            self._task = None
            self.schedule.finished(retry, self._loop.time())
            if not self._closed:
                self._arm()
