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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dvrlink.protocol.nat_behaviour import NO_NAT, UDP_BLOCKED, NatBehaviour
from dvrlink.protocol.presence_events import Address
from dvrlink.protocol.stun_probe import ProbeVerdict
from dvrlink.session.netcheck import (
    IPV4_OVERHEAD,
    IPV6_OVERHEAD,
    local_ip_towards,
    open_port,
    run_classifier,
    stun_check,
)

__all__ = [
    "IPV4_OVERHEAD",
    "IPV6_OVERHEAD",
    "NO_NAT",
    "UDP_BLOCKED",
    "NatTypeOutcome",
    "NatTypeSchedule",
    "NatTypeTiming",
    "NatTyper",
    "classify",
    "local_ip_towards",
    "nat_type_of",
]

log = logging.getLogger(__name__)


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
    """The report's text for what the classifier found; None when it is unknown
    (:attr:`NatProfile.nat_type <dvrlink.protocol.nat_behaviour.NatProfile.nat_type>`)."""
    return behaviour.profile.nat_type


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


async def classify(server: Address, timing: NatTypeTiming, *, presence_over_udp: bool) -> NatTypeOutcome:
    """One run against the broker node's presence port ``server`` (see the module docstring).
    The check and the classifier run on one socket, driven by ``session/netcheck.py``.

    Raises:
        OSError: no route to the server, or the socket cannot be bound.
    """
    port = await open_port(local_ip_towards(server))

    def outcome(nat_type: str | None, note: str, retry: bool = False) -> NatTypeOutcome:
        return NatTypeOutcome(nat_type, note, port.datagrams, port.bytes_on_wire, retry)

    try:
        probe = await stun_check(
            port, server, timeout_s=timing.test_timeout_s, retransmit_s=timing.retransmit_s, rfc5780=True
        )
        if probe.verdict is not ProbeVerdict.REACHED:
            if presence_over_udp:
                return outcome(
                    None, "the broker's STUN port did not answer (a loss: tried again later)", True
                )
            return outcome(UDP_BLOCKED, "no STUN answer over UDP; presence runs over TCP")
        if probe.other_address is None:
            return outcome(
                None, "the broker node has no RFC 5780 alternate address (its stun_alternate_host is not set)"
            )
        behaviour = await run_classifier(
            server, port, retransmit_s=timing.retransmit_s, test_timeout_s=timing.test_timeout_s
        )
        found = nat_type_of(behaviour)
        return outcome(found, behaviour.describe(), retry=found is None)
    finally:
        port.close()


class NatTyper:
    """Runs the schedule on the event loop: ``registered`` on each registration, ``close`` at
    shutdown. Each verdict goes to ``on_result``. ``server`` is the presence UDP address of the
    node in use; ``transport`` the presence transport ("udp" or "tcp"); ``paused`` says why
    optional traffic is paused (the data cap), empty when it may run. ``paths`` (when given)
    finds the device's direct paths besides its NAT (``session.netcheck.direct_paths``: IPv6,
    port mapping) after each run that found a NAT type; ``on_paths`` gets them (item 11) just
    before ``on_result`` gets the NAT type, so that one report carries both."""

    def __init__(
        self,
        timing: NatTypeTiming,
        server: Callable[[], Address],
        on_result: Callable[[str], None],
        *,
        transport: Callable[[], str] = lambda: "udp",
        paused: Callable[[], str] = lambda: "",
        paths: Callable[[], Awaitable[str]] | None = None,
        on_paths: Callable[[str], None] = lambda _paths: None,
    ) -> None:
        self._paths = paths
        self._on_paths = on_paths
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
            # The direct paths first, so that one report carries both; the NAT type is logged
            # and handed over once they are known (at most a gateway probe's timeout later).
            paths = None
            if outcome.nat_type is not None and self._paths is not None:
                paths = await self._paths()
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
                if paths is not None:
                    log.info("direct paths besides the NAT: %s", paths or "none")
                    self._on_paths(paths)
                self._on_result(outcome.nat_type)
        finally:
            self._task = None
            self.schedule.finished(retry, self._loop.time())
            if not self._closed:
                self._arm()
