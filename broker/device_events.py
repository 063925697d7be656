"""What the broker does with presence events: bind serials, admit or refuse, note registrations.

``RegistrationRequested`` is checked against the registry (first use binds the serial; a
different key, or a serial missing from the manifest in manifest-only mode, is refused with a
message that tells the device what to do, logged and recorded in the audit table). Invite
outcomes go to the gateway that waits for them.

A registration resumed by a fresh ticket (``presence_ticket``) is accepted at once, without
the registry: the ticket says the fleet bound that serial to that key when it issued it. The
binding is checked afterwards, for all such registrations together, in one query per batch at
the next ``flush`` (at most ``REGISTRATION_FLUSH_S`` later). A registration whose binding is
gone (the operator released the serial, or it was bound to another key since) is judged as a
full one would be: first use binds it again, and a key mismatch or a serial outside the
manifest ends the session (``disconnect``: the device registers again at its next keepalive)
and is refused and audited then, with the same message, because that serial's next
registration goes to the registry before it is accepted. In that second the device can do no
harm: a viewer's session pins the device key it paired with, and an invite carries nothing
that opens a session without that key. A storm after a broker restart therefore costs the
registry one query per few hundred devices instead of one per device, which is what keeps a
PostgreSQL registry off the storm's path.

When the registry cannot answer (PostgreSQL stopped or unreachable, SQLite locked), a
registration is refused with ``RefuseReason.BUSY``: the presence protocol's authenticated
"try again later", after which the device backs off (``REGISTRY_BUSY_RETRY_S``, not the 5
minutes of a refused key) and registers again with everything it holds (its key, its alarm
queue). Devices already online are not touched: their keepalives never
reach the registry. Notes that only record what happened (a registration's address, a report,
a refusal's audit row) are skipped while the registry is down, with one warning per outage.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
from collections.abc import Callable
from typing import Protocol, TypeVar

from dvrlink.broker.registry import BindingVerdict, RegistryStore, RegistryUnavailableError, format_address
from dvrlink.protocol.identity import b64encode_key, fingerprint
from dvrlink.protocol.presence_events import (
    Address,
    DeviceMoved,
    DeviceOffline,
    DeviceOnline,
    DeviceReported,
    InviteAnswered,
    InviteExpired,
    RegistrationRequested,
    RegistrationUnconfirmed,
    ServerEvent,
)
from dvrlink.protocol.presence_wire import RefuseReason

REFUSAL_LOG_INTERVAL_S = 60.0  # one warning and audit row per (serial, key) per interval
REFUSAL_MEMORY = 10_000
UNCONFIRMED_LOG_INTERVAL_S = 300.0  # one line per serial per interval: a device never using its sessions
REGISTRY_BUSY_RETRY_S = 30.0
"""How long a device refused with BUSY (registry unavailable) waits before it registers again:
an outage such as a PostgreSQL restart is short, unlike a key mismatch (the core's default)."""

log = logging.getLogger(__name__)

REGISTRATION_BATCH = 500
"""Registrations noted in the registry in one transaction at most (see ``DeviceEventHandler.flush``)."""
REGISTRATION_FLUSH_S = 1.0
"""How often the application flushes the registrations to the registry."""
REGISTRY_DOWN = (RegistryUnavailableError, sqlite3.Error)
"""What a registry call raises when the registry cannot answer now (a later call may work)."""

_T = TypeVar("_T")


class AdmissionCore(Protocol):
    """The calls the handler makes on the presence core (``PresenceServer``)."""

    @property
    def public_key(self) -> bytes: ...
    def accept(self, handle: int, now: float, wall: float | None = None) -> None: ...
    def refuse(
        self, handle: int, reason: RefuseReason, message: str, now: float, retry_after: float | None = None
    ) -> None: ...
    def disconnect(self, serial: str, device_key: bytes, reason: str) -> bool: ...


class DeviceEventHandler:
    """Callable for ``PresenceLink``'s ``on_event``.

    ``core_clock`` is the presence core's clock (the event loop's); ``wall_clock`` gives Unix
    seconds for the registry. ``on_invite_event`` receives invite outcomes.
    """

    def __init__(
        self,
        core: AdmissionCore,
        registry: RegistryStore,
        manifest_only: bool,
        core_clock: Callable[[], float],
        wall_clock: Callable[[], float],
        on_invite_event: Callable[[ServerEvent], None],
        ticket_lifetime: float = 0.0,
    ) -> None:
        """``ticket_lifetime``: seconds a resumption ticket is taken (older: ``TICKET_EXPIRED``);
        0: the core hands out none (it is given no wall time)."""
        self._core = core
        self._ticket_lifetime = ticket_lifetime
        self._registry = registry
        self._manifest_only = manifest_only
        self._core_clock = core_clock
        self._wall_clock = wall_clock
        self._on_invite_event = on_invite_event
        self._refusals: dict[tuple[str, bytes], tuple[float, int]] = {}
        self._unconfirmed: dict[str, tuple[float, int]] = {}
        self._registry_down = False
        self._skipped_notes = 0
        self._registered: dict[str, tuple[Address, float]] = {}
        """Registrations not yet noted in the registry (``flush``), the last one per serial."""
        self._unverified: dict[str, tuple[bytes, Address]] = {}
        """Registrations accepted by their tickets whose binding ``flush`` has still to check:
        the key and address of each, the last one per serial."""
        self._check_first: dict[str, None] = {}
        """Serials whose ticket failed the check after the fact: their next registration goes
        to the registry before it is accepted (insertion-ordered, at most ``REFUSAL_MEMORY``)."""

    def __call__(self, event: ServerEvent) -> None:
        if isinstance(event, RegistrationRequested):
            self._admit(event)
        elif isinstance(event, DeviceOnline):
            self._registered[event.serial] = (event.address, self._wall_clock())
            if len(self._registered) >= REGISTRATION_BATCH:
                self.flush()
            log.debug("device %s online from %s", event.serial, format_address(event.address))
        elif isinstance(event, InviteAnswered | InviteExpired):
            self._on_invite_event(event)
        elif isinstance(event, DeviceReported):
            report, wall = event.report.as_dict(), self._wall_clock()
            self._note(lambda: self._registry.record_report(event.serial, report, wall))
        elif isinstance(event, RegistrationUnconfirmed):
            self._note_unconfirmed(event)
        elif isinstance(event, DeviceOffline):
            log.debug("device %s offline: %s", event.serial, event.reason)
        elif isinstance(event, DeviceMoved):
            log.debug(
                "device %s moved from %s to %s",
                event.serial,
                format_address(event.old),
                format_address(event.new),
            )

    def flush(self) -> None:
        """Note the registrations since the last flush in the registry, in one transaction (the
        application calls this every ``REGISTRATION_FLUSH_S`` and at close; a storm also flushes
        every ``REGISTRATION_BATCH``). While the registry is down they are skipped and counted."""
        self._verify_tickets()
        if not self._registered:
            return
        entries = [(serial, address, wall) for serial, (address, wall) in self._registered.items()]
        self._registered.clear()
        if self._note(lambda: self._registry.record_registrations(entries)) is None and self._registry_down:
            self._skipped_notes += len(entries) - 1  # _note counted the call as one

    def _admit(self, event: RegistrationRequested) -> None:
        wall = self._wall_clock()
        issued = event.ticket_issued_at
        if issued is not None and not 0 <= wall - issued <= self._ticket_lifetime:
            self._core.refuse(
                event.handle,
                RefuseReason.TICKET_EXPIRED,
                "resumption ticket expired; register in full",
                self._core_clock(),
            )
            return
        if issued is not None and event.serial not in self._check_first:
            # The ticket says the fleet bound this serial to this key when it issued it (within
            # its lifetime): in at once, the binding is checked in the next flush's batch. This
            # also lets a device in that moves node or comes back while the registry is down.
            self._core.accept(event.handle, self._core_clock(), wall)
            self._unverified[event.serial] = (event.public_key, event.address)
            return
        try:
            verdict = self._registry.check_binding(event.serial, event.public_key, wall, self._manifest_only)
        except REGISTRY_DOWN as exc:
            self._down(exc)
            log.info("registration of %s refused with 'busy': the registry is unavailable", event.serial)
            self._core.refuse(
                event.handle,
                RefuseReason.BUSY,
                "the broker cannot check registrations right now (its registry is unavailable); retry later",
                self._core_clock(),
                retry_after=REGISTRY_BUSY_RETRY_S,
            )
            return
        self._up()
        if verdict is BindingVerdict.BOUND_NOW:
            log.info(
                "serial %s bound to key %s on first registration from %s",
                event.serial,
                fingerprint(event.public_key),
                format_address(event.address),
            )
        if verdict in (BindingVerdict.BOUND_NOW, BindingVerdict.MATCHES):
            self._check_first.pop(event.serial, None)
            self._core.accept(event.handle, self._core_clock(), wall if self._ticket_lifetime > 0 else None)
            return
        reason, message = _refusal(event.serial, verdict)
        self._core.refuse(event.handle, reason, message, self._core_clock())
        self._audit(event.serial, event.public_key, event.address, verdict, wall)

    def _verify_tickets(self) -> None:
        """Check the bindings of the registrations let in by their tickets since the last flush:
        one query per batch; a serial whose binding is gone or changed is judged as a full
        registration would be, and one that fails is disconnected, audited and checked first
        next time. While the registry is down they wait for the next flush."""
        if not self._unverified:
            return
        pending, self._unverified = self._unverified, {}
        try:
            bound = self._registry.binding_keys(list(pending))
        except REGISTRY_DOWN as exc:
            self._down(exc)
            self._unverified = pending | self._unverified
            return
        self._up()
        wall = self._wall_clock()
        for serial, (key, address) in pending.items():
            found = bound.get(serial)
            if (
                found is not None
                and hmac.compare_digest(found[0], key)
                and (found[1] == "manifest" or not self._manifest_only)
            ):
                continue
            try:
                verdict = self._registry.check_binding(serial, key, wall, self._manifest_only)
            except REGISTRY_DOWN as exc:
                self._down(exc)
                self._unverified[serial] = (key, address)
                continue
            if verdict in (BindingVerdict.BOUND_NOW, BindingVerdict.MATCHES):
                continue
            if self._core.disconnect(serial, key, f"its ticket failed the registry's check: {verdict.value}"):
                self._registered.pop(serial, None)
            if len(self._check_first) >= REFUSAL_MEMORY:
                del self._check_first[next(iter(self._check_first))]
            self._check_first[serial] = None
            self._audit(serial, key, address, verdict, wall)

    def _note_unconfirmed(self, event: RegistrationUnconfirmed) -> None:
        """One quiet line per serial per ``UNCONFIRMED_LOG_INTERVAL_S``: the broker cannot open
        such a device's handshake from its side, but a device that keeps registering without
        ever using a session almost always pins another broker key."""
        wall = self._wall_clock()
        last = self._unconfirmed.get(event.serial)
        if last is not None and wall - last[0] < UNCONFIRMED_LOG_INTERVAL_S:
            self._unconfirmed[event.serial] = (last[0], last[1] + 1)
            return
        if len(self._unconfirmed) >= REFUSAL_MEMORY:
            self._unconfirmed.clear()
        self._unconfirmed[event.serial] = (wall, 0)
        more = last[1] if last is not None else 0
        log.warning(
            "device %s at %s registered again but never used its session of %.0f s before: it most "
            "likely pins another broker key than this one (%s; [broker] public_key in its config), "
            "or this broker's replies do not reach it%s",
            event.serial,
            format_address(event.address),
            event.unused_for,
            b64encode_key(self._core.public_key),
            f"; {more} more since the last such line" if more else "",
        )

    def _audit(
        self, serial: str, public_key: bytes, address: Address, verdict: BindingVerdict, wall: float
    ) -> None:
        key = (serial, public_key)
        last = self._refusals.get(key)
        if last is not None and wall - last[0] < REFUSAL_LOG_INTERVAL_S:
            self._refusals[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last is not None else 0
        if len(self._refusals) >= REFUSAL_MEMORY:
            self._refusals.clear()
        self._refusals[key] = (wall, 0)
        bound = self._note(lambda: self._registry.device(serial))
        bound_fp = fingerprint(bound.public_key) if bound is not None else "none"
        log.warning(
            "refused registration of serial %s from %s: %s (presented key %s, bound key %s)%s",
            serial,
            format_address(address),
            verdict.value,
            fingerprint(public_key),
            bound_fp,
            f"; {suppressed} more refusals since the last warning" if suppressed else "",
        )
        self._note(lambda: self._registry.record_refusal(serial, public_key, address, wall, verdict.value))

    def _note(self, call: Callable[[], _T]) -> _T | None:
        """Run a registry call that only records or looks up; while the registry is down it is
        skipped (None) and counted, so the device's event goes on."""
        try:
            result = call()
        except REGISTRY_DOWN as exc:
            self._down(exc)
            self._skipped_notes += 1
            return None
        self._up()
        return result

    def _down(self, exc: Exception) -> None:
        """One warning per outage (the next success ends it)."""
        if not self._registry_down:
            self._registry_down = True
            log.warning(
                "registry unavailable: %s; registrations are refused with 'busy' (devices retry) and "
                "devices already online keep being served",
                exc,
            )

    def _up(self) -> None:
        if self._registry_down:
            self._registry_down = False
            log.warning(
                "registry available again; %d registration notes were skipped during the outage",
                self._skipped_notes,
            )
            self._skipped_notes = 0


def _refusal(serial: str, verdict: BindingVerdict) -> tuple[RefuseReason, str]:
    """What a device refused with ``verdict`` is told: the reason and what to do."""
    if verdict is BindingVerdict.KEY_MISMATCH:
        return RefuseReason.KEY_MISMATCH, (
            f"serial {serial} is bound to another device key on this broker; if this device was "
            "reset or replaced, ask the operator to run `dvrlink-broker device release` for it, "
            "else check the serial in the device config"
        )
    return RefuseReason.NOT_IN_MANIFEST, (
        f"serial {serial} is not in this broker's factory manifest; ask the operator to load "
        "the manifest entry for this device, or check the serial in the device config"
    )
