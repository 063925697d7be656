"""Find a paired device on this computer's LAN and signal a session with it directly, with no
broker (``dvrlink --lan``, the default; docs/connectivity.md, "LAN discovery").

``find_on_lan`` broadcasts the query of ``protocol.lan_discovery`` to every IPv4 network of this
computer (and to addresses given with ``--lan-address``) and waits up to the discovery timeout
for the device's signed announcement. The ``LanSignalling`` it returns stands in for the broker
client in ``session_client.open_session``: ``create_session`` makes the session id locally,
``send_offer`` sends the signed offer to the device and returns its signed answer, and there is no
trickle (both sides offer host candidates only, all known at once). Everything after that is the
same session: ICE checks between the host candidates, QUIC with the device certificate checked
against the key pinned at pairing, the device checking this viewer's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence

import ifaddr
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.driver.core_driver import CoreDriver
from dvrlink.protocol.lan_discovery import (
    DEFAULT_PORT,
    MAX_BODY,
    NONCE_SIZE,
    AnswerReceived,
    DeviceFound,
    LanEvent,
    LanGaveUp,
    LanSeeker,
    LanTiming,
)
from dvrlink.protocol.signalling import AnswerStatus, PathPolicy, SessionAnswer, SessionOffer
from dvrlink.viewer.api_types import CandidateBatch, OfferAnswer, SessionGrant, WakeStatus
from dvrlink.viewer.errors import ViewerError

log = logging.getLogger(__name__)

LAN_GRACE_S = 0.25
"""How long after the LAN search started the broker's offer waits for it (``dvrlink`` runs both
side by side): a device on this LAN answers within milliseconds, and the grace leaves room for
two lost queries (one goes at once, then one every ``LanTiming.query_interval_s``)."""
LAN_SESSION_LIFETIME_S = 3600.0
"""What a LAN grant says about its expiry (no broker keeps it; only for the record)."""


def broadcast_targets(port: int, extra: Sequence[str] = ()) -> list[tuple[str, int]]:
    """Where a query goes: the directed broadcast address of every IPv4 network of this computer
    but loopback (``192.168.1.255`` for ``192.168.1.3/24``), then ``extra`` addresses (a device's
    own address where broadcasts do not pass, or another broadcast address)."""
    targets: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue  # IPv6: no broadcast
            network = ipaddress.ip_network(f"{ip.ip}/{ip.network_prefix}", strict=False)
            if network.is_loopback or network.prefixlen >= 31:
                continue
            targets.append(str(network.broadcast_address))
    targets.extend(extra)
    return [(address, port) for address in dict.fromkeys(targets)]


class LanSignalling(asyncio.DatagramProtocol):
    """The broker's part of a session, played on the LAN with the device itself (see the module
    docstring). Make one with ``find_on_lan``; ``close`` releases its socket."""

    def __init__(
        self,
        device_public_key: bytes,
        viewer_key: Ed25519PrivateKey,
        targets: Sequence[tuple[str, int]],
        timing: LanTiming,
        clock: Callable[[], float],
    ) -> None:
        self._seeker = LanSeeker(device_public_key, viewer_key, os.urandom(NONCE_SIZE), clock(), timing)
        self._targets = list(targets)
        self._transport: asyncio.DatagramTransport | None = None
        self._driver: CoreDriver[LanEvent, tuple[bytes, tuple[str, int] | None]] = CoreDriver(
            self._seeker, self._transmit, on_event=self._event, clock=clock, name="LAN discovery", logger=log
        )
        self._found: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self._answered: asyncio.Future[bytes] | None = None
        self._send_errors: list[str] = []

    @property
    def device_address(self) -> tuple[str, int] | None:
        """Where the device answered from, once found."""
        return self._seeker.device_address

    # -- the broker's calls (session_client.SessionBroker) --

    async def create_session(
        self, serial: str, policy: PathPolicy, *, on_wake: Callable[[WakeStatus], None] | None = None
    ) -> SessionGrant:
        """A session id made here; no TURN, no STUN (a LAN session has host candidates only)."""
        del policy, on_wake
        return SessionGrant(secrets.token_hex(16), serial, (), None, time.time() + LAN_SESSION_LIFETIME_S)

    async def send_offer(
        self,
        session_id: str,
        ice_ufrag: str,
        ice_pwd: str,
        candidates: Sequence[str],
        viewer_public_key: bytes,
        *,
        serial: str | None = None,
        end_of_candidates: bool = True,
    ) -> OfferAnswer:
        """Send the signed offer to the device found and wait for its signed answer.

        Raises:
            ViewerError: the offer does not fit a datagram, the device did not answer in time, or
                it refused the session (its reason is in the message).
        """
        what = serial or "the device"
        offer = SessionOffer(
            bytes.fromhex(session_id),
            viewer_public_key,
            PathPolicy.DIRECT_ONLY,
            ice_ufrag,
            ice_pwd,
            tuple(candidates),
            (),
            end_of_candidates=end_of_candidates,
        )
        try:
            body = offer.encode()
            if len(body) > MAX_BODY:
                raise ValueError(f"{len(body)} bytes")
        except ValueError as exc:
            raise ViewerError(
                f"the LAN offer to {what} is too large ({exc}): name fewer addresses with --host-address"
            ) from exc
        self._answered = asyncio.get_running_loop().create_future()
        self._seeker.offer(body, self._driver.now())
        self._driver.flush()
        raw = await self._answered
        if not raw:
            raise ViewerError(
                f"{what} could not read the LAN offer: update dvrlink on this computer or the device"
            )
        try:
            answer = SessionAnswer.decode(raw)
        except ValueError as exc:
            raise ViewerError(f"{what} sent an unreadable answer on the LAN ({exc})") from exc
        if answer.status is not AnswerStatus.ACCEPTED:
            status = answer.status.name.lower()
            raise ViewerError(f"{what} refused the LAN session ({status}): {answer.message}")
        return OfferAnswer(
            session_id, answer.ice_ufrag, answer.ice_pwd, answer.candidates, answer.end_of_candidates
        )

    async def send_candidates(
        self,
        session_id: str,
        candidates: Sequence[str],
        end_of_candidates: bool,
        *,
        serial: str | None = None,
    ) -> CandidateBatch:
        """No trickle on the LAN: the device has nothing more to send."""
        del session_id, candidates, end_of_candidates, serial
        return CandidateBatch((), True)

    async def end_session(self, session_id: str) -> bool:
        """Nothing to tell: no broker keeps the session."""
        del session_id
        return True

    # -- lifecycle --

    async def search(self) -> tuple[str, int]:
        """Query until the device answers; its address.

        Raises:
            LookupError: it did not answer in time (the message says how long, and send errors).
            OSError: no UDP socket could be opened.
        """
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind(("0.0.0.0", 0))
        except OSError:
            sock.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport
        self._driver.flush()  # the first query
        return await self._found

    async def close(self) -> None:
        """Release the socket. Idempotent."""
        self._driver.close()
        for future in (self._found, self._answered):
            if future is not None and not future.done():
                future.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- asyncio --

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._driver.receive_from(self._seeker.receive_datagram, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("LAN discovery socket: %s", exc)

    def _transmit(self, datagrams: Sequence[tuple[bytes, tuple[str, int] | None]]) -> None:
        if self._transport is None:
            return
        for data, address in datagrams:
            for target in self._targets if address is None else [address]:
                try:
                    self._transport.sendto(data, target)
                except OSError as exc:  # an unreachable broadcast address: the others may do
                    if len(self._send_errors) < 8:
                        self._send_errors.append(f"{target[0]}: {exc.strerror}")

    def _event(self, event: LanEvent) -> None:
        if isinstance(event, DeviceFound):
            if not self._found.done():
                self._found.set_result(event.source)
        elif isinstance(event, AnswerReceived):
            if self._answered is not None and not self._answered.done():
                self._answered.set_result(event.body)
        elif isinstance(event, LanGaveUp):
            reason = event.reason + (f" ({'; '.join(self._send_errors)})" if self._send_errors else "")
            if not self._found.done():
                self._found.set_exception(LookupError(reason))
            elif self._answered is not None and not self._answered.done():
                self._answered.set_exception(ViewerError(reason))


async def find_on_lan(
    device_public_key: bytes,
    viewer_key: Ed25519PrivateKey,
    *,
    port: int = DEFAULT_PORT,
    extra_targets: Sequence[str] = (),
    timing: LanTiming | None = None,
) -> LanSignalling | None:
    """Look for the device with ``device_public_key`` (the pinned one) on this computer's LANs;
    its ``LanSignalling`` once it answered, or None (and why, in the log) if it did not within
    ``timing.discovery_timeout_s``. The caller closes what it gets. Never raises but on
    cancellation: a LAN that cannot be searched means the broker's way."""
    loop = asyncio.get_running_loop()
    targets = broadcast_targets(port, extra_targets)
    if not targets:
        log.info("LAN discovery: no IPv4 network here to look on")
        return None
    signalling = LanSignalling(device_public_key, viewer_key, targets, timing or LanTiming(), loop.time)
    try:
        found = await signalling.search()
    except (LookupError, OSError) as exc:
        log.info("LAN discovery (%s): %s", ", ".join(t[0] for t in targets), exc)
        await signalling.close()
        return None
    except BaseException:
        await signalling.close()
        raise
    log.info("found the device on the LAN at %s", found[0])
    return signalling


async def close_quietly(signalling: LanSignalling) -> None:
    """``close`` for ``runner.after_close``."""
    with contextlib.suppress(Exception):
        await signalling.close()
