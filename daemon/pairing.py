"""Answers the broker's pairing invites (``INVITE_KIND_PAIR``). Session offers
(``INVITE_KIND_SESSION``) are routed to ``SessionServer`` by ``app.py``; any other kind that
reaches this handler is answered ``INVITE_UNSUPPORTED``.

The decision is ``PairingGuard``'s (protocol/pairing.py); this file adds the device's side
effects: wrong tries are persisted so a restart does not reset the rate limit, and a paired
viewer is recorded in ``viewers.json`` before the device says PAIRED. The code and the proof
are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.daemon.config import PairingConfig
from dvrlink.daemon.state import DeviceState, StateError
from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint
from dvrlink.protocol.pairing import (
    MAC_SIZE,
    PairingGuard,
    PairRequest,
    PairResult,
    PairStatus,
    result_message,
)
from dvrlink.protocol.presence_events import InviteReceived
from dvrlink.protocol.presence_wire import (
    INVITE_KIND_PAIR,
    INVITE_KIND_PING,
    INVITE_MALFORMED,
    INVITE_OK,
    INVITE_UNSUPPORTED,
)

log = logging.getLogger(__name__)


class InviteReplier(Protocol):
    """What the handler needs of ``PresenceClient``."""

    def reply_invite(self, invite_id: int, status: int, body: bytes, now: float) -> None: ...


class InviteHandler:
    """Judges invites for one device and replies through ``replier``.

    ``wall_clock`` gives unix time for the persisted failure times and ``paired_at``.

    Raises (constructor):
        StateError: the stored pairing failures cannot be read.
    """

    def __init__(
        self,
        serial: str,
        device_key: Ed25519PrivateKey,
        secret: str,
        state: DeviceState,
        config: PairingConfig,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._serial = serial
        self._key = device_key
        self._public = ed25519_public_bytes(device_key)
        self._state = state
        self._wall_clock = wall_clock
        self._saved_failures = tuple(state.pairing_failures())
        self._guard = PairingGuard(
            serial,
            self._public,
            secret,
            failures=self._saved_failures,
            max_failures=config.max_failures,
            window_s=config.window_s,
        )

    def handle(self, invite: InviteReceived, replier: InviteReplier, now: float) -> None:
        """Answer ``invite``; ``now`` is the core's clock (``loop.time()``).

        A viewer that cannot be recorded is not told PAIRED: the invite stays unanswered (the
        broker reports a timeout) and the error is logged.
        """
        if invite.kind == INVITE_KIND_PING:
            log.debug("invite %d: ping", invite.invite_id)
            replier.reply_invite(invite.invite_id, INVITE_OK, b"", now)
            return
        if invite.kind != INVITE_KIND_PAIR:
            log.info("invite %d: unsupported kind %d", invite.invite_id, invite.kind)
            replier.reply_invite(invite.invite_id, INVITE_UNSUPPORTED, b"", now)
            return
        try:
            request = PairRequest.decode(invite.body)
        except ValueError:
            log.info("invite %d: malformed pairing request (%d bytes)", invite.invite_id, len(invite.body))
            replier.reply_invite(invite.invite_id, INVITE_MALFORMED, b"", now)
            return
        wall = self._wall_clock()
        status = self._guard.check(request, wall)
        self._persist_failures()
        if status is PairStatus.PAIRED:
            try:
                added = self._state.add_viewer(request.viewer_key, request.account, wall)
            except StateError as exc:
                log.error("pairing of account %r not completed: %s", request.account, exc)
                return
            confirmation = self._guard.confirmation(request)
        else:
            added = False
            confirmation = bytes(MAC_SIZE)
        result = PairResult(
            status=status,
            device_key=self._public,
            confirmation=confirmation,
            signature=self._key.sign(result_message(self._serial, request.viewer_key, request.nonce, status)),
        )
        log.info(
            "pairing request from account %r, viewer %s: %s%s",
            request.account,
            fingerprint(request.viewer_key),
            status.name,
            "" if status is not PairStatus.PAIRED else (" (new viewer)" if added else " (already paired)"),
        )
        replier.reply_invite(invite.invite_id, INVITE_OK, result.encode(), now)

    def _persist_failures(self) -> None:
        failures = self._guard.failures
        if failures == self._saved_failures:
            return
        try:
            self._state.save_pairing_failures(failures)
        except StateError as exc:
            # The limit still holds in memory; only a restart would forget these tries.
            log.error("cannot record wrong pairing codes: %s", exc)
            return
        self._saved_failures = failures
