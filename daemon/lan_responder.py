"""The device's LAN discovery link (``[lan] discovery``): one UDP socket on ``[lan] port`` that
answers paired viewers' queries and takes their session offers with no broker in the way.

The protocol is ``protocol.lan_discovery`` (the ``LanResponder`` core, driven by
``driver.core_driver.CoreDriver``). An authenticated offer goes to the same ``SessionServer`` as
an offer the broker pushes, as an invite of kind ``INVITE_KIND_SESSION``, with this link as its
replier and ``lan=True``: the session gathers host candidates only (no STUN, no TURN, no port
mapping) and the same QUIC handshake checks the viewer's key against ``viewers.json`` and shows
the device certificate the viewer pinned at pairing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.driver.core_driver import CoreDriver
from dvrlink.protocol.identity import fingerprint
from dvrlink.protocol.lan_discovery import LanEvent, LanResponder, LanStats, LanTiming, OfferReceived
from dvrlink.protocol.presence_events import InviteReceived
from dvrlink.protocol.presence_wire import INVITE_OK
from dvrlink.protocol.signalling import INVITE_KIND_SESSION, PathPolicy, SessionOffer

log = logging.getLogger(__name__)

MAX_PENDING_OFFERS = 64
"""Offers handed to the session server and not answered yet that the link keeps track of."""


class LanSessions(Protocol):
    """What the link needs of ``SessionServer``."""

    def handle_lan(self, invite: InviteReceived, now: float, replier: LanReplier) -> None:
        """Take a session offer found on the LAN; answer through ``replier``."""
        ...


class LanReplier(Protocol):
    def reply_invite(self, invite_id: int, status: int, body: bytes, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class LanLinkConfig:
    host: str = "0.0.0.0"
    """Address the socket binds to."""
    port: int = 5398
    """UDP port, the same on the device and in the viewers (``dvrlink --lan-port``)."""


class LanLink(asyncio.DatagramProtocol):
    """Runs the LAN discovery core on one socket (see the module docstring). ``close`` stops it."""

    def __init__(
        self,
        device_key: Ed25519PrivateKey,
        is_paired: Callable[[bytes], bool],
        sessions: LanSessions,
        *,
        timing: LanTiming | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._core = LanResponder(device_key, is_paired, random_bytes, timing or LanTiming())
        self._sessions = sessions
        self._driver: CoreDriver[LanEvent, tuple[bytes, tuple[str, int]]] = CoreDriver(
            self._core, self._transmit, on_event=self._event, name="LAN discovery", logger=log
        )
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: dict[int, bytes] = {}
        self._next_id = 1
        self.address: tuple[str, int] | None = None
        """The address the socket is bound to, once started."""

    @property
    def stats(self) -> LanStats:
        """Datagrams dropped by reason (``LanStats``)."""
        return self._core.stats

    async def start(self, config: LanLinkConfig) -> None:
        """Bind the socket.

        Raises:
            OSError: the port cannot be bound (the message names it and what to do).
        """
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind((config.host, config.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"cannot listen for LAN discovery on UDP {config.host}:{config.port} ({exc.strerror}): "
                "another process holds the port; set another [lan] port (and dvrlink --lan-port) "
                "or [lan] discovery = false",
            ) from exc
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport
        bound = transport.get_extra_info("sockname")
        self.address = (str(bound[0]), int(bound[1]))
        log.info("LAN discovery on UDP %s:%d", *self.address)

    def close(self) -> None:
        """Stop answering. Idempotent."""
        self._driver.close()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- asyncio --

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._driver.receive_from(self._core.receive_datagram, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("LAN discovery socket: %s", exc)

    # -- replier (the session server's answers) --

    def reply_invite(self, invite_id: int, status: int, body: bytes, now: float) -> None:
        """Send the answer to the offer ``invite_id`` (a malformed offer gets an empty body)."""
        nonce = self._pending.pop(invite_id, None)
        if nonce is None:
            log.info("LAN offer %d: answered already or expired", invite_id)
            return
        try:
            self._core.answer(nonce, body if status == INVITE_OK else b"")
        except ValueError as exc:
            log.info("LAN offer %d: cannot answer: %s", invite_id, exc)
        self._driver.flush()

    # -- internals --

    def _transmit(self, datagrams: Sequence[tuple[bytes, tuple[str, int]]]) -> None:
        if self._transport is None:
            return
        for data, address in datagrams:
            self._transport.sendto(data, address)

    def _event(self, event: LanEvent) -> None:
        if not isinstance(event, OfferReceived):
            return
        who = fingerprint(event.viewer_key)
        try:
            offer = SessionOffer.decode(event.body)
        except ValueError as exc:
            log.info("LAN offer from %s (%s): %s", who, event.source[0], exc)
            return
        if offer.viewer_key != event.viewer_key or offer.policy is not PathPolicy.DIRECT_ONLY or offer.turn:
            log.info(
                "LAN offer from %s (%s) refused: a LAN offer is for this viewer's own key, direct only, "
                "without relays",
                who,
                event.source[0],
            )
            return
        invite_id = self._next_id
        self._next_id += 1
        self._pending[invite_id] = event.device_nonce
        while len(self._pending) > MAX_PENDING_OFFERS:  # sessions that never answered
            del self._pending[next(iter(self._pending))]
        log.info("LAN offer from viewer %s at %s", who, event.source[0])
        self._sessions.handle_lan(
            InviteReceived(invite_id, INVITE_KIND_SESSION, event.body), self._driver.now(), self
        )


async def start_lan_link(
    device_key: Ed25519PrivateKey,
    is_paired: Callable[[bytes], bool],
    sessions: LanSessions,
    config: LanLinkConfig,
) -> LanLink | None:
    """Start the LAN discovery link; None (and an error in the log) if its port cannot be bound:
    the device then still serves viewers through the broker."""
    link = LanLink(device_key, is_paired, sessions)
    try:
        await link.start(config)
    except OSError as exc:
        log.error("%s; LAN discovery is off until then", exc)
        link.close()
        return None
    return link
