"""What the daemon adds to presence besides registering: the learned keepalive interval and the
reports to the broker. Hooked into ``DeviceEvents`` (presence events, after each link step).

- On the first registration the NAT lifetime measurement starts (``NatProber``); a new
  reflexive address (another NAT mapping, another network) restarts it from the configured
  interval. Each interval the learner picks goes to the presence client
  (``set_keepalive_interval``) and into the report.
- The presence session is the learners' control: an answered keepalive confirms probes lost
  before it as expired mappings; a lost session (a broker outage or restart, a new
  registration) voids the probes out (``daemon/nat_lifetime.py``).
- A device the broker sees at its own address (the link's local address: a public or loopback
  address, no NAT) has no mapping lifetime to learn: no probes, the configured interval, and no
  move to TCP on that account.
- Once the UDP lifetime is known, presence in ``auto`` moves to TCP when keeping alive there
  costs clearly fewer bytes a day (``daemon/keepalive_cost.py``): carriers keep idle TCP mappings
  far longer than UDP ones.
- After every link step the report is brought up to date (the modem's signal, network, data
  used and state; the keepalive interval, the NAT lifetime, the transport) and, when the report
  policy says so (``daemon/reporting.py``), handed to the presence client to ride on the next
  keepalive; an urgent one (the modem's state changed) is sent at once.
- While the cellular data cap is reached (``pause_probes``), the NAT lifetime probes are optional
  traffic: they stop, the keepalive interval in use stays, and the measurement starts again when
  the cap clears. Presence itself goes on.
- Each registration goes to the NAT type classifier (``nat_typer``, ``daemon/nat_type.py``): it
  classifies after the first one and after one from a new public address, and its verdict goes
  into the report (``nat_type``). The data cap's pause puts its runs off too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from dvrlink.daemon.keepalive_cost import Costs, compare
from dvrlink.daemon.nat_lifetime import (
    IntervalChanged,
    LearnerEvent,
    LearnerState,
    MeasurementDone,
    behind_nat,
)
from dvrlink.daemon.nat_probe import NatProber
from dvrlink.daemon.nat_type import NatTyper
from dvrlink.daemon.reporting import Reporter
from dvrlink.protocol.presence_events import (
    Address,
    ClientEvent,
    ConnectionLost,
    KeepaliveAcknowledged,
    ReflexiveAddressChanged,
    Registered,
)
from dvrlink.protocol.presence_report import DeviceReport

log = logging.getLogger(__name__)


class ReportingClient(Protocol):
    """What tuning needs of ``PresenceClient``."""

    def report(self, report: DeviceReport, now: float, *, send_now: bool = False) -> None: ...
    def set_keepalive_interval(self, interval: float, now: float) -> None: ...


class ModemFacts(Protocol):
    """What tuning reads of the modem (``ModemService.report``)."""

    def report(self) -> object: ...


class PresenceTuning:
    """See the module docstring. ``flush`` sends what the client queued (the link's ``flush``)."""

    def __init__(
        self,
        client: ReportingClient,
        clock: Callable[[], float],
        *,
        interval: float,
        transport: str = "udp",
        prober: NatProber | None = None,
        modem: ModemFacts | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self._client = client
        self._clock = clock
        self.prober = prober
        self._modem = modem
        self.reporter = reporter or Reporter()
        self.reporter.update(keepalive_s=round(interval), presence_transport=transport)
        self._measured_from: Address | None = None
        self.flush: Callable[[], None] = lambda: None
        """Sends what the client queued (the presence link's ``flush``)."""
        self.transport: Callable[[], str] = lambda: transport
        """The presence transport in use ("udp" or "tcp"); NAT probes run only over UDP."""
        self.prefer_tcp: Callable[[str], None] | None = None
        """Moves presence to TCP for cost (``PresenceTransport.prefer``); None: not allowed (not
        ``auto``)."""
        self.tcp_interval: float | None = None
        """The keepalive interval over TCP, to compare costs with."""
        self.costs: Costs | None = None
        """The last cost comparison, once the UDP lifetime is known."""
        self.tcp_prober: NatProber | None = None
        """Learns the NAT's idle TCP lifetime (``auto`` with learning on), else None."""
        self.set_tcp_interval: Callable[[float], None] = lambda interval: None
        """Gives the presence transport a learned TCP keepalive interval."""
        self.tcp_lifetime: float | None = None
        self.learn_after_s = 0.0
        """Seconds after the first registration before NAT lifetime probes start."""
        self._starting: dict[NatProber, asyncio.TimerHandle] = {}
        self.paused = ""
        """Why the NAT lifetime probes are paused (the data cap); empty while they may run."""
        self._held: set[NatProber] = set()
        """Probers stopped or kept from starting by the pause, to start when it ends."""
        self.local_address: Callable[[], Address | None] = lambda: None
        """The presence link's local address (``PresenceTransport.local_address``)."""
        self.no_nat: Address | None = None
        """Set while the broker sees the device at its own local address: no NAT to learn."""
        self.nat_typer: NatTyper | None = None
        """Classifies the NAT for the report (``[presence] classify_nat``), else None."""
        self.status_changed: Callable[[], None] = lambda: None
        """Rewrites the status file (``DeviceEvents.status_changed``): the NAT type was found."""

    def attach_modem(self, modem: ModemFacts) -> None:
        """The modem service is up (it loads after presence starts): reports carry its facts."""
        self._modem = modem

    def status(self) -> dict[str, Any]:
        """``keepalive_learning``, ``nat_lifetime_s`` and the NAT type for the status file."""
        typed = self.nat_typer.status() if self.nat_typer is not None else {}
        return {**self._learning_status(), **typed}

    def nat_type_found(self, nat_type: str) -> None:
        """The NAT type classifier's verdict: into the report, handed over when due."""
        self.reporter.update(nat_type=nat_type)
        self.after_step()
        self.status_changed()

    def direct_paths_found(self, paths: str) -> None:
        """The direct paths besides the NAT (``ipv6``, ``mapping``): into the report (item 11),
        handed over with the NAT type that follows (:meth:`nat_type_found`)."""
        self.reporter.update(direct_paths=paths)

    def _learning_status(self) -> dict[str, Any]:
        prober = self.prober
        if prober is None:
            return {"keepalive_learning": "off"}
        if self.no_nat is not None:
            return {"keepalive_learning": "no-nat"}
        if self.paused:
            return {"keepalive_learning": "paused"}
        learner = prober.learner
        low = learner.bracket[0] if learner.state is LearnerState.SETTLED else None
        return {
            "keepalive_learning": learner.state.value if learner.state.value != "idle" else "measuring",
            "nat_lifetime_s": low,
        }

    def on_event(self, event: ClientEvent) -> None:
        """Start or restart the measurement on registration and address changes; give the
        learners their control (keepalives answered, the session lost)."""
        probers = [p for p in (self.prober, self.tcp_prober) if p is not None]
        if isinstance(event, Registered) and self.nat_typer is not None:
            self.nat_typer.registered(event.reflexive_address)
        if isinstance(event, KeepaliveAcknowledged):
            for each in probers:
                each.broker_answered()
            return
        if isinstance(event, ConnectionLost | Registered):
            for each in probers:
                each.session_lost()
        if isinstance(event, Registered) and not self._nat_between(event.reflexive_address):
            return
        if isinstance(event, ReflexiveAddressChanged) and self.no_nat is not None:
            return  # the registration that follows tells whether there is a NAT now
        tcp_prober = self.tcp_prober
        if tcp_prober is not None and isinstance(event, Registered | ReflexiveAddressChanged):
            if tcp_prober.learner.state is LearnerState.IDLE and isinstance(event, Registered):
                self._start_later(tcp_prober)
            elif isinstance(event, ReflexiveAddressChanged):
                tcp_prober.path_changed(f"reflexive address changed to {event.new}")
        prober = self.prober
        if prober is None:
            return
        if isinstance(event, Registered) and self.transport() != "udp":
            # Over TCP the UDP mapping is not what keeps the device reachable; measure again
            # once back on UDP.
            prober.stop()
            self._measured_from = None
            return
        if isinstance(event, Registered):
            if self._measured_from is None:
                self._measured_from = event.reflexive_address
                self._start_later(prober)
            elif event.reflexive_address != self._measured_from:
                old, self._measured_from = self._measured_from, event.reflexive_address
                prober.path_changed(f"registered from {event.reflexive_address}, was {old}")
        elif isinstance(event, ReflexiveAddressChanged) and self._measured_from is not None:
            self._measured_from = event.new
            prober.path_changed(f"reflexive address changed to {event.new}")

    def _nat_between(self, reflexive: Address) -> bool:
        """False (and the learners stopped) while the broker sees the device at its own address."""
        local = self.local_address()
        if behind_nat(local, reflexive):
            if self.no_nat is not None:
                log.info("the broker now sees this device at %s, not its own address: a NAT", reflexive)
            self.no_nat = None
            return True
        if self.no_nat is None:
            log.info(
                "no NAT between this device and the broker (it sees the device at its own address "
                "%s:%d): no mapping lifetime to learn; the keepalive interval stays as configured",
                *reflexive,
            )
        self.no_nat = reflexive
        for prober in (self.prober, self.tcp_prober):
            if prober is None:
                continue
            handle = self._starting.pop(prober, None)
            if handle is not None:
                handle.cancel()
            self._held.discard(prober)
            if prober.learner.state is not LearnerState.IDLE:
                prober.stop()
        self._measured_from = None
        return False

    def _start_later(self, prober: NatProber) -> None:
        """Start ``prober`` ``learn_after_s`` after registering, so its probes do not compete
        with what a device does first (on a GPRS uplink, a viewer's session)."""
        if prober in self._starting:
            return
        if self.paused:
            self._held.add(prober)
            return
        if self.learn_after_s <= 0:
            prober.start()
            return

        def start() -> None:
            self._starting.pop(prober, None)
            prober.start()

        self._starting[prober] = asyncio.get_running_loop().call_later(self.learn_after_s, start)

    def pause_probes(self, reason: str) -> None:
        """Stop the NAT lifetime probes while ``reason`` holds (the data cap is reached); an empty
        ``reason`` lets them run again: the ones stopped or held back start measuring afresh."""
        if reason and not self.paused:
            log.warning("NAT lifetime probes paused: %s; keepalives go on", reason)
            for prober in (self.prober, self.tcp_prober):
                if prober is None:
                    continue
                handle = self._starting.pop(prober, None)
                if handle is not None:
                    handle.cancel()
                    self._held.add(prober)
                elif prober.learner.state is not LearnerState.IDLE:
                    self._held.add(prober)
                prober.stop()
        elif not reason and self.paused:
            log.info("NAT lifetime probes resume")
        self.paused = reason
        if not reason:
            held, self._held = self._held, set()
            for prober in held:
                if self.no_nat is not None:
                    continue
                if prober is self.prober and self.transport() != "udp":
                    continue  # measured again once presence is back on UDP
                prober.start()

    def cancel(self) -> None:
        """Drop measurements that have not started yet (shutdown)."""
        for handle in self._starting.values():
            handle.cancel()
        self._starting.clear()

    def on_learner_event(self, event: LearnerEvent) -> None:
        """What the learner decided: a new interval for the client and the report."""
        if isinstance(event, IntervalChanged):
            if self.transport() != "udp":
                return
            try:
                self._client.set_keepalive_interval(event.interval, self._clock())
            except ValueError:
                log.exception("the learner chose an interval the client refuses; keeping the old one")
                return
            self.reporter.update(keepalive_s=round(event.interval))
        elif isinstance(event, MeasurementDone):
            self.reporter.update(nat_lifetime_s=int(event.low))
            self._choose_transport()

    def on_tcp_learner_event(self, event: LearnerEvent) -> None:
        """What the TCP lifetime learner decided: the TCP keepalive interval, then the costs."""
        if isinstance(event, IntervalChanged):
            self.tcp_interval = event.interval
            self.set_tcp_interval(event.interval)
        elif isinstance(event, MeasurementDone):
            self.tcp_lifetime = event.low
            if self.prober is not None and self.prober.learner.state is LearnerState.SETTLED:
                self._choose_transport()

    def _choose_transport(self) -> None:
        """With the UDP interval learned, compare with TCP's cost; move to TCP if much cheaper."""
        prober, tcp_interval = self.prober, self.tcp_interval
        if prober is None or tcp_interval is None or self.no_nat is not None:
            return
        self.costs = costs = compare(prober.learner.interval, tcp_interval)
        log.info("presence cost: %s", costs.describe())
        if costs.cheaper == "tcp" and self.prefer_tcp is not None and self.transport() == "udp":
            self.prefer_tcp(f"cheaper: {costs.describe()}")

    def after_step(self) -> None:
        """Refresh the report from the modem and hand it over when due."""
        modem = self._modem
        if modem is not None:
            facts = modem.report()
            self.reporter.update(
                signal_dbm=getattr(facts, "signal_dbm", None),
                rat=getattr(facts, "rat", None) or None,
                data_used=getattr(facts, "data_used_bytes", None),
                modem_state=getattr(facts, "state", None) or None,
            )
        self.reporter.update(presence_transport=self.transport())
        now = self._clock()
        due = self.reporter.due(now)
        if due is None:
            return
        self._client.report(due.report, now, send_now=due.urgent)
        self.reporter.sent(due.report, now)
        if due.urgent:
            asyncio.get_running_loop().call_soon(self.flush)
