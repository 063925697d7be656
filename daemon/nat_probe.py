"""The I/O of NAT lifetime probes: one short-lived UDP socket per probe, driven by the learner
(``daemon/nat_lifetime.py``) and sealed by the presence client (``probe_datagram``).

Each probe:

1. opens a UDP socket towards the broker's presence port (a NAT mapping of its own);
2. primes the mapping with a STUN Binding round trip and waits ``prime_wait_s``: a Linux NAT
   (conntrack) keeps a UDP flow that has seen a reply and is older than 2 s for its "stream"
   lifetime, as it does the presence socket's flow; the probe must measure that lifetime, not the
   shorter one of a flow that never got an answer;
3. sends the probe keepalive (the broker answers only after the delay) and stays idle;
4. waits for the answer until ``delay + grace``: answered (the mapping lived that long), else
   lost. A probe that could not be primed or sealed (not registered) counts as unsent and the
   learner retries its round later.

Over TCP (``transport="tcp"``, the broker's presence TCP/TLS endpoint) a probe is one fresh
TLS connection carrying the same probe keepalive in a frame; it needs no priming (an
established TCP flow has its established lifetime at once), and the answer comes back on that
connection if the NAT still holds its mapping. Carriers keep idle TCP mappings for minutes to an
hour, so these probes are long; each costs a TLS handshake (a few kB), so they are repeated
rarely (``LearnerConfig.remeasure_s``).

What the learner decides (``IntervalChanged``, ``MeasurementDone``) goes to the callbacks. The
presence session's keepalives are the learner's control (``broker_answered``, ``session_lost``):
a probe lost while the broker was not answering proves nothing. Probers of one device share the
learner's ``ProbeBudget``; when another prober frees a slot, this one sends what waited for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dvrlink.daemon.nat_lifetime import IntervalChanged, LearnerEvent, LifetimeLearner, MeasurementDone, Probe
from dvrlink.protocol.presence_stream import StreamDeframer, encode_frame
from dvrlink.protocol.stun_probe import binding_request, is_binding_response

log = logging.getLogger(__name__)


class ProbeCore(Protocol):
    """What probes need of ``PresenceClient``."""

    def probe_datagram(self, delay: float) -> tuple[bytes, int] | None: ...
    def probe_reply(self, data: bytes) -> int | None: ...
    @property
    def rtt(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class ProbeTiming:
    """Waits of one probe, in seconds."""

    prime_timeout_s: float = 3.0
    prime_wait_s: float = 2.5
    grace_s: float = 3.0
    """How long after its delay an answer may still come (plus three round trips)."""


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(data)


class _StreamInbox(asyncio.Protocol):
    """Whole presence messages from a TCP probe connection; ``b""`` once it closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        self._deframer = StreamDeframer()

    def data_received(self, data: bytes) -> None:
        self._deframer.receive_data(data)
        while (message := self._deframer.next_message()) is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(message)

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(b"")


class NatProber:
    """Runs the learner's probes (see the module docstring). ``close`` stops them all."""

    def __init__(
        self,
        learner: LifetimeLearner,
        core: ProbeCore,
        broker: tuple[str, int] | Callable[[], tuple[str, int]],
        *,
        on_event: Callable[[LearnerEvent], None],
        timing: ProbeTiming | None = None,
        transport: str = "udp",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._learner = learner
        self._core = core
        self._broker_of = broker if callable(broker) else (lambda: broker)
        """Where probes go: the broker node presence is registered with (it holds the session)."""
        self._on_event = on_event
        self._timing = timing or ProbeTiming()
        self._transport = transport
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._stopped = False
        self.answered = 0
        self.lost = 0
        budget = learner.budget
        if budget is not None:
            budget.on_release(self._slot_freed)

    @property
    def learner(self) -> LifetimeLearner:
        """The learner this prober drives."""
        return self._learner

    def start(self) -> None:
        """Begin measuring (again)."""
        self._stopped = False
        self._cancel_probes()
        self._learner.start(self._loop.time())
        self._pump()

    def path_changed(self, reason: str) -> None:
        """The path to the broker changed: drop running probes and measure again."""
        self._cancel_probes()
        self._learner.path_changed(self._loop.time(), reason)
        self._pump()

    def stop(self) -> None:
        """Stop probing until ``start`` (the presence link left UDP)."""
        self._cancel_probes()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stopped = True
        self._learner.stop()

    def broker_answered(self) -> None:
        """A presence keepalive was answered: the broker is up (the learner's control)."""
        self._learner.broker_answered(self._loop.time())
        self._pump()

    def session_lost(self) -> None:
        """The presence session ended: the probes out prove nothing; measure again later."""
        self._cancel_probes()
        self._learner.session_lost(self._loop.time())
        self._pump()

    async def close(self) -> None:
        """Stop every probe and the timer. Idempotent."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = list(self._tasks)
        self._cancel_probes()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals -----------------------------------------------------------------------------

    def _cancel_probes(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    def _pump(self) -> None:
        if self._closed or self._stopped:
            return
        learner = self._learner
        for probe in learner.probes_to_send():
            task = self._loop.create_task(self._run(probe), name=f"nat probe {probe.delay:g} s")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        while (event := learner.next_event()) is not None:
            if isinstance(event, IntervalChanged):
                log.info(
                    "%s keepalive interval %g s: %s", self._transport.upper(), event.interval, event.reason
                )
            elif isinstance(event, MeasurementDone):
                log.info(
                    "NAT keeps an idle %s mapping at least %g s%s; keepalive every %g s",
                    self._transport.upper(),
                    event.low,
                    "" if event.high is None else f", not {event.high:g} s",
                    learner.interval,
                )
            try:
                self._on_event(event)
            except Exception:
                log.exception("handling %s failed; carrying on", event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = learner.get_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _slot_freed(self) -> None:
        if not (self._closed or self._stopped):
            self._loop.call_soon(self._pump)  # never inside another learner's call

    def _on_timer(self) -> None:
        self._timer = None
        self._learner.handle_timer(self._loop.time())
        self._pump()

    async def _run(self, probe: Probe) -> None:
        outcome = "unsent"
        try:
            outcome = await self._probe(probe)
        finally:
            if not (self._closed or self._stopped):
                now = self._loop.time()
                if outcome == "answered":
                    self.answered += 1
                    self._learner.probe_answered(probe.probe_id, now)
                elif outcome == "lost":
                    self.lost += 1
                    self._learner.probe_lost(probe.probe_id, now)
                else:
                    self._learner.probe_unsent(probe.probe_id, now)
                self._pump()

    async def _probe(self, probe: Probe) -> str:
        if self._transport == "tcp":
            return await self._probe_tcp(probe)
        timing = self._timing
        broker = self._broker_of()
        try:
            transport, inbox = await self._loop.create_datagram_endpoint(_Inbox, remote_addr=broker)
        except OSError as exc:
            log.info("NAT probe: cannot open a socket to %s: %s", broker, exc)
            return "unsent"
        try:
            if not await self._prime(transport, inbox):
                log.info("NAT probe: no STUN answer from %s to prime the mapping", broker)
                return "unsent"
            await asyncio.sleep(timing.prime_wait_s)
            made = self._core.probe_datagram(probe.delay)
            if made is None:
                return "unsent"
            datagram, echo = made
            transport.sendto(datagram)
            return await self._answer(inbox.queue, echo, probe.delay)
        finally:
            transport.close()

    async def _probe_tcp(self, probe: Probe) -> str:
        host, port = self._broker_of()
        try:
            transport, inbox = await asyncio.wait_for(
                self._loop.create_connection(
                    _StreamInbox, host, port, ssl=self._tls, server_hostname=host if self._tls else None
                ),
                self._timing.prime_timeout_s * 3,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.info("NAT probe: cannot connect to %s:%d over TCP: %s", host, port, exc or type(exc).__name__)
            return "unsent"
        try:
            made = self._core.probe_datagram(probe.delay)
            if made is None:
                return "unsent"
            datagram, echo = made
            transport.write(encode_frame(datagram))
            return await self._answer(inbox.queue, echo, probe.delay)
        finally:
            transport.close()

    async def _answer(self, queue: asyncio.Queue[bytes], echo: int, delay: float) -> str:
        """ "answered" if the probe's answer arrives within ``delay`` plus the grace, else "lost"
        (also when a TCP probe's connection closes: ``b""`` in the queue)."""
        grace = self._timing.grace_s + 3 * (self._core.rtt or 0.0)
        deadline = self._loop.time() + delay + grace
        while (left := deadline - self._loop.time()) > 0:
            try:
                data = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            if not data:  # the connection closed: the NAT or the broker dropped it
                break
            if self._core.probe_reply(data) == echo:
                return "answered"
        return "lost"

    async def _prime(self, transport: asyncio.DatagramTransport, inbox: _Inbox) -> bool:
        transaction_id = os.urandom(12)
        deadline = self._loop.time() + self._timing.prime_timeout_s
        transport.sendto(binding_request(transaction_id))
        while (left := deadline - self._loop.time()) > 0:
            try:
                data = await asyncio.wait_for(inbox.queue.get(), left)
            except TimeoutError:
                return False
            if is_binding_response(data, transaction_id):
                return True
        return False
