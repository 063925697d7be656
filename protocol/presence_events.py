"""Typed, past-tense events of the presence protocol, for both ends."""

from __future__ import annotations

from dataclasses import dataclass

from dvrlink.protocol.presence_report import DeviceReport

Address = tuple[str, int]
"""A transport address: (IP literal, port)."""


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """Base of the events a ``PresenceClient`` (device side) emits."""


@dataclass(frozen=True, slots=True)
class Registered(ClientEvent):
    """The broker accepted the registration; the device is online."""

    session_id: int
    reflexive_address: Address
    keepalive_interval: float
    resumed: bool = False
    """The registration resumed with the broker's ticket (no signature, no X25519)."""


@dataclass(frozen=True, slots=True)
class RegistrationRefused(ClientEvent):
    """The broker refused the registration (authenticated refusal); the client retries later."""

    reason: int
    message: str
    retry_after: float


@dataclass(frozen=True, slots=True)
class KeepaliveAcknowledged(ClientEvent):
    """A keepalive round trip completed."""

    reflexive_address: Address
    rtt: float


@dataclass(frozen=True, slots=True)
class ReflexiveAddressChanged(ClientEvent):
    """The address the broker sees changed (NAT rebinding or a new uplink); re-registering."""

    old: Address
    new: Address


@dataclass(frozen=True, slots=True)
class HandshakeUnanswered(ClientEvent):
    """A registration attempt ended without an answer the device could use; the client backs off
    and tries again (one event per failed attempt).

    ``stage`` says how far it got: ``"hello"``, no COOKIE came back (nothing answers at the
    broker's address and port, or the path drops the datagrams); ``"register"``, a COOKIE came
    but no REGISTERED or REFUSED that opens with the pinned broker key. ``unverified`` counts
    replies to REGISTER that did not open with that key: a broker that holds another key
    answered, so the pinned key is most likely wrong.
    """

    stage: str
    tries: int
    waited: float
    """Seconds from the first try of that stage to giving up."""
    unverified: int


@dataclass(frozen=True, slots=True)
class ConnectionLost(ClientEvent):
    """The broker stopped answering or forgot the session; re-registering with backoff.

    ``silence``: the broker stopped answering keepalives (not a refusal, a forgotten session or a
    local network change): a device that knows several broker nodes moves to the next one.
    """

    reason: str
    silence: bool = False


@dataclass(frozen=True, slots=True)
class InviteReceived(ClientEvent):
    """The broker pushed an invite; answer with ``PresenceClient.reply_invite``.

    A retransmitted invite whose reply was already given is answered by the core itself and
    is not emitted twice.
    """

    invite_id: int
    kind: int
    body: bytes


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """Base of the events a ``PresenceServer`` (broker side) emits."""


@dataclass(frozen=True, slots=True)
class RegistrationRequested(ServerEvent):
    """A device proved possession of ``public_key`` for ``serial``.

    The application checks the serial binding and then calls ``PresenceServer.accept`` or
    ``PresenceServer.refuse`` with ``handle``.
    """

    handle: int
    serial: str
    public_key: bytes
    address: Address
    keepalive_interval: float
    ticket_issued_at: float | None = None
    """A resumed registration: when its ticket was issued (Unix seconds; the application refuses
    a ticket older than it allows with ``TICKET_EXPIRED``). None: a full registration."""


@dataclass(frozen=True, slots=True)
class DeviceOnline(ServerEvent):
    """A device registered (first time or again)."""

    serial: str
    address: Address


@dataclass(frozen=True, slots=True)
class RegistrationUnconfirmed(ServerEvent):
    """A device registered again without ever using the session it had (no keepalive, no reply
    in it): it most likely could not open REGISTERED, i.e. it pins another broker key, or the
    broker's replies do not reach it. Emitted before the new session's ``DeviceOnline``."""

    serial: str
    address: Address
    unused_for: float
    """Seconds between the unused registration and this one."""


@dataclass(frozen=True, slots=True)
class DeviceMoved(ServerEvent):
    """An authenticated keepalive came from a new address."""

    serial: str
    old: Address
    new: Address


@dataclass(frozen=True, slots=True)
class DeviceReported(ServerEvent):
    """An authenticated keepalive carried a report (``presence_report.DeviceReport``)."""

    serial: str
    report: DeviceReport


@dataclass(frozen=True, slots=True)
class DeviceOffline(ServerEvent):
    """No keepalive within the grace time, or a newer registration replaced the session."""

    serial: str
    reason: str


@dataclass(frozen=True, slots=True)
class InviteAnswered(ServerEvent):
    """The device answered an invite."""

    invite_id: int
    serial: str
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class AlarmMessageReceived(ServerEvent):
    """An authenticated EVENT from a device: an ``alarm_wire`` plaintext for the application's
    ``AlarmReceiver``, which answers with ``PresenceServer.send_alarm_ack``."""

    serial: str
    plaintext: bytes


@dataclass(frozen=True, slots=True)
class InviteExpired(ServerEvent):
    """The device did not answer an invite before its deadline."""

    invite_id: int
    serial: str
