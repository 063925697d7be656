"""The viewer API's session signalling: create a session with a paired, online device (with TURN
credentials for the viewer), push the viewer's ICE offer to the device and return its answer, and
trickle candidates both ways. Routes are registered by ``BrokerApi.build_app``; see ``openapi.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aioice.candidate import Candidate

from dvrlink.broker.api_common import (
    INVITE_GRACE_S,
    ApiContext,
    ApiError,
    b64_field,
    bool_field,
    json_body,
    str_field,
)
from dvrlink.broker.config import ExternalTurnServer
from dvrlink.broker.sessions import (
    ALLOWED_PATHS,
    ENDED,
    MAX_UPDATES,
    SESSION_PATHS,
    SessionRecord,
    SessionState,
    SessionTable,
    SharedSessionStore,
    SharedStoreUnavailable,
    TooManySessionsError,
)
from dvrlink.broker.turn_credentials import make_credentials
from dvrlink.protocol.presence_events import InviteAnswered, InviteExpired
from dvrlink.protocol.presence_server import NotOnlineError
from dvrlink.protocol.presence_wire import INVITE_OK
from dvrlink.protocol.signalling import (
    INVITE_GONE,
    INVITE_KIND_CANDIDATES,
    INVITE_KIND_SESSION,
    SESSION_ID_SIZE,
    AnswerStatus,
    CandidateUpdate,
    PathPolicy,
    SessionAnswer,
    SessionOffer,
)
from dvrlink.protocol.signalling import TurnServer as TurnGrant

ICE_UFRAG_LEN = (4, 256)  # RFC 8445 section 5.3, in ice-chars
ICE_PWD_LEN = (22, 256)
MAX_CANDIDATES = 32
MAX_CANDIDATE_BYTES = 255
POLICIES = {"all": PathPolicy.ALL, "relay_only": PathPolicy.RELAY_ONLY, "direct_only": PathPolicy.DIRECT_ONLY}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelayDirectory:
    """The STUN and TURN servers the API hands to both ends of a session, and the REST secret
    their credentials are made with."""

    secret: str
    """TURN REST secret (shared with the built-in relay or a coturn fleet)."""
    credential_ttl_s: float
    """Seconds handed-out credentials stay valid."""
    turn: tuple[ExternalTurnServer, ...] = ()
    """TURN servers, built-in first."""
    stun: tuple[str, int] | None = None
    """(host, port) of the broker's STUN responder."""
    stun6: tuple[str, int] | None = None
    """(IPv6 literal, port) of its STUN over IPv6 (``stun_host6``), when ``stun`` is IPv4; None:
    none configured."""

    def grants(self, name: str, now: float) -> tuple[TurnGrant, ...]:
        """Every TURN server with credentials for ``name`` (an account or a serial) from ``now``.

        Raises:
            ValueError: ``name`` makes a username too long for TURN.
        """
        username, password = make_credentials(self.secret, name, now, self.credential_ttl_s)
        return tuple(TurnGrant(t.host, t.port, t.transport, username, password) for t in self.turn)


class SessionRoutes:
    """POST/GET /v1/sessions, POST /v1/sessions/{session_id}/offer and .../candidates."""

    def __init__(
        self, ctx: ApiContext, relays: RelayDirectory | None, shared: SharedSessionStore | None = None
    ) -> None:
        self._ctx = ctx
        self._registry = ctx.registry
        self._presence = ctx.presence
        self._config = ctx.config
        self._clock = ctx.clock
        self._relays = relays
        self._sessions = SessionTable(ctx.config.session_ttl_s, ctx.config.session_max_per_account)
        self._shared = shared
        """A cluster's session records (any node continues a session), or None."""

    @property
    def table(self) -> SessionTable:
        """The live sessions' signalling state."""
        return self._sessions

    async def create_session(self, request: web.Request) -> web.Response:
        """POST /v1/sessions: start a session with a paired, online device; hands out TURN
        credentials for the viewer. A device that sleeps by SMS is woken first, and the request
        is held until it registers (``ApiContext.reachable_or_woken``)."""
        user = self._ctx.user(request)
        body = await json_body(request, self._config.http_body_timeout_s)
        serial = str_field(body, "serial", 64)
        policy_name = body.get("policy", "all")
        if policy_name not in POLICIES:
            raise ApiError(
                400, "bad_request", f"field 'policy' is {policy_name!r}; use one of {', '.join(POLICIES)}"
            )
        await self._ctx.reachable_or_woken(self._ctx.paired_device(user, serial))
        now = self._clock()
        self._sessions.prune(now)
        try:
            record = self._sessions.create(user, serial, POLICIES[policy_name], now)
        except TooManySessionsError:
            limit = self._config.session_max_per_account
            raise ApiError(
                429,
                "too_many_sessions",
                f"{user!r} already has {limit} sessions; close one or wait until the oldest expires "
                "(GET /v1/sessions)",
                retry_after=60,
            ) from None
        await self._save(record)
        turn, expires = self._turn_json(user, now)
        stun = self._relays.stun if self._relays is not None else None
        stun6 = self._relays.stun6 if self._relays is not None else None
        log.info("session %s: %r asked for %s (%s)", record.session_id.hex(), user, serial, policy_name)
        return web.json_response(
            {
                **self._session_json(record),
                "turn": turn,
                "turn_expires_at": expires,
                "stun": None if stun is None else {"host": stun[0], "port": stun[1]},
                "stun6": None if stun6 is None else {"host": stun6[0], "port": stun6[1]},
            },
            status=201,
            headers={"Cache-Control": "no-store"},
        )

    async def list_relays(self, request: web.Request) -> web.Response:
        """GET /v1/relays: the TURN relays (UDP first) and the STUN service a session would get
        (``stun6``: its IPv6 address, or null),
        without credentials, so that ``dvrlink netcheck`` can time them. Stores nothing."""
        self._ctx.user(request)
        relays = self._relays
        turn = [] if relays is None else sorted(relays.turn, key=lambda t: t.transport != "udp")
        stun = relays.stun if relays is not None else None
        stun6 = relays.stun6 if relays is not None else None
        return web.json_response(
            {
                "turn": [{"host": t.host, "port": t.port, "transport": t.transport} for t in turn],
                "stun": None if stun is None else {"host": stun[0], "port": stun[1]},
                "stun6": None if stun6 is None else {"host": stun6[0], "port": stun6[1]},
            },
            headers={"Cache-Control": "no-store"},
        )

    async def list_sessions(self, request: web.Request) -> web.Response:
        """GET /v1/sessions: the caller's live sessions."""
        user = self._ctx.user(request)
        records = self._sessions.for_account(user, self._clock())
        return web.json_response({"sessions": [self._session_json(r) for r in records]})

    async def end_session(self, request: web.Request) -> web.Response:
        """DELETE /v1/sessions/{session_id}: the viewer closed the session; it no longer counts
        against the account's limit."""
        user = self._ctx.user(request)
        record = await self._own_session(user, request.match_info["session_id"])
        self._sessions.end(record)
        if self._shared is not None:
            await self._shared.end(record)
        log.info("session %s: ended by %r", record.session_id.hex(), user)
        return web.json_response({"session_id": record.session_id.hex(), "ended": True})

    async def report_path(self, request: web.Request) -> web.Response:
        """PATCH /v1/sessions/{session_id}: the viewer tells which path the session runs on now
        (``{"path": "lan"|"direct"|"relay"}``), once it is up and each time it moves."""
        user = self._ctx.user(request)
        body = await json_body(request, self._config.http_body_timeout_s)
        extra = sorted(set(body) - {"path"})
        if extra:
            raise ApiError(400, "bad_request", f'unknown field {extra[0][:64]!r}; send only "path"')
        path = body.get("path")
        if path not in SESSION_PATHS:
            raise ApiError(400, "bad_request", f"field 'path' must be one of {', '.join(SESSION_PATHS)}")
        record = await self._own_session(user, request.match_info["session_id"])
        if record.state is not SessionState.ANSWERED:
            raise ApiError(
                409,
                "session_not_answered",
                f"session {record.session_id.hex()} is {record.state.value}: report its path once the "
                "device answered the offer",
            )
        if path not in ALLOWED_PATHS[record.policy]:
            raise ApiError(
                400,
                "bad_request",
                f"path {path!r} is not allowed by the session's policy {POLICY_NAMES[record.policy]}",
            )
        if record.path != path:
            record.path = path
            await self._save(record)
            log.info("session %s: %r reports path %s", record.session_id.hex(), user, path)
        return web.json_response(self._session_json(record), headers={"Cache-Control": "no-store"})

    async def offer_session(self, request: web.Request) -> web.Response:
        """POST /v1/sessions/{session_id}/offer: push the viewer's ICE offer to the device and
        return its answer."""
        user = self._ctx.user(request)
        record = await self._own_session(user, request.match_info["session_id"])
        body = await json_body(request, self._config.http_body_timeout_s)
        ufrag = _ice_field(body, "ice_ufrag", *ICE_UFRAG_LEN)
        pwd = _ice_field(body, "ice_pwd", *ICE_PWD_LEN)
        candidates = _candidates_field(body)
        viewer_key = b64_field(body, "viewer_public_key", 32)
        end = bool_field(body, "end_of_candidates", default=True)
        if record.state is not SessionState.CREATED:
            raise ApiError(
                409,
                "session_used",
                f"session {record.session_id.hex()} already has an offer ({record.state.value}); "
                "create a new session (POST /v1/sessions)",
            )
        serial = record.serial
        await self._ctx.paired_and_reachable(user, serial)
        now = self._clock()
        turn = self._relays.grants(serial, now) if self._relays is not None else ()
        offer = SessionOffer(
            record.session_id, viewer_key, record.policy, ufrag, pwd, candidates, turn, end_of_candidates=end
        )
        try:
            offer_body = offer.encode()
        except ValueError:
            raise ApiError(
                400,
                "offer_too_large",
                f"the offer does not fit a device invite with {len(candidates)} candidates; send fewer "
                "(relay and server-reflexive first)",
            ) from None
        record.move(SessionState.OFFERED)
        await self._save(record)
        ttl = self._config.session_answer_timeout_s
        try:
            outcome = await asyncio.wait_for(
                self._presence.invite(serial, INVITE_KIND_SESSION, offer_body, ttl), ttl + INVITE_GRACE_S
            )
        except NotOnlineError:
            record.move(SessionState.FAILED)
            await self._save(record)
            raise ApiError(
                409, "device_offline", f"device {serial} went offline; retry when it is back"
            ) from None
        except TimeoutError:
            outcome = InviteExpired(0, serial)
        except BaseException:
            record.move(SessionState.FAILED)
            raise
        try:
            answer = self._session_answer(serial, outcome, ttl)
        except ApiError:
            record.move(SessionState.FAILED)
            await self._save(record)
            raise
        record.move(SessionState.ANSWERED)
        await self._save(record)
        log.info(
            "session %s: %s accepted with %d candidates",
            record.session_id.hex(),
            serial,
            len(answer.candidates),
        )
        return web.json_response(
            {
                "status": "accepted",
                "session_id": record.session_id.hex(),
                "ice_ufrag": answer.ice_ufrag,
                "ice_pwd": answer.ice_pwd,
                "candidates": list(answer.candidates),
                "end_of_candidates": answer.end_of_candidates,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def trickle_candidates(self, request: web.Request) -> web.Response:
        """POST /v1/sessions/{session_id}/candidates: pass the viewer's new candidates to the device
        (invite kind ``INVITE_KIND_CANDIDATES``) and return the device's new ones."""
        user = self._ctx.user(request)
        record = await self._own_session(user, request.match_info["session_id"])
        body = await json_body(request, self._config.http_body_timeout_s)
        candidates = _candidates_field(body)
        end = bool_field(body, "end_of_candidates", default=False)
        session_hex = record.session_id.hex()
        if record.state is not SessionState.ANSWERED:
            raise ApiError(
                409,
                "session_not_answered",
                f"session {session_hex} has no accepted answer ({record.state.value}): send the offer "
                "first (POST .../offer), or create a new session if it failed",
            )
        if record.updates >= MAX_UPDATES:
            raise ApiError(
                429,
                "too_many_updates",
                f"session {session_hex} already sent {MAX_UPDATES} candidate updates; open a new session",
            )
        try:
            update_body = CandidateUpdate(record.session_id, candidates, end).encode()
        except ValueError:
            raise ApiError(
                400,
                "bad_request",
                f"{len(candidates)} candidates do not fit one device invite; send them in several updates",
            ) from None
        serial = record.serial
        await self._ctx.paired_and_reachable(user, serial)
        record.updates += 1
        await self._save(record)
        ttl = self._config.session_answer_timeout_s
        outcome = await self._ctx.answered_invite(
            serial,
            INVITE_KIND_CANDIDATES,
            update_body,
            ttl,
            f"device {serial} did not answer a candidate update within {ttl:.0f} s; the session may "
            "still work over the paths it has",
        )
        if outcome.status == INVITE_GONE:
            raise ApiError(
                410, "session_gone", f"device {serial} has closed session {session_hex}; open a new session"
            )
        try:
            if outcome.status != INVITE_OK:
                raise ValueError(f"invite status {outcome.status}")
            reply = CandidateUpdate.decode(outcome.body)
            if reply.session_id != record.session_id:
                raise ValueError("the reply names another session")
        except ValueError as exc:
            raise ApiError(
                502,
                "device_error",
                f"device {serial} answered a candidate update badly ({exc}); update its dvrlinkd",
            ) from None
        log.info(
            "session %s: %d candidates to %s%s, %d back%s",
            session_hex,
            len(candidates),
            serial,
            " (end)" if end else "",
            len(reply.candidates),
            " (end)" if reply.end_of_candidates else "",
        )
        return web.json_response(
            {"candidates": list(reply.candidates), "end_of_candidates": reply.end_of_candidates},
            headers={"Cache-Control": "no-store"},
        )

    async def _save(self, record: SessionRecord) -> None:
        if self._shared is not None:
            await self._shared.save(record)

    async def _sync_from_shared(self, shared: SharedSessionStore, user: str, session_id: bytes) -> None:
        try:
            stored = await shared.load(session_id)
        except SharedStoreUnavailable:
            return  # this node's copy (if any) serves
        mine = self._sessions.get(user, session_id, self._clock())
        if stored == ENDED:
            if mine is not None:
                self._sessions.end(mine)
        elif stored is None:
            if mine is not None:  # made while Redis was down: share it now
                await shared.save(mine)
        elif stored.account == user:
            self._sessions.adopt(stored)

    async def _own_session(self, user: str, session_hex: str) -> SessionRecord:
        """The caller's live session; on a cluster the shared record wins over this node's copy
        (another node may have moved it on), and this node's copy serves while Redis is down."""
        try:
            session_id = bytes.fromhex(session_hex)
        except ValueError:
            session_id = b""
        record = None
        if len(session_id) == SESSION_ID_SIZE:
            if self._shared is not None:
                await self._sync_from_shared(self._shared, user, session_id)
            record = self._sessions.get(user, session_id, self._clock())
        if record is None:
            raise ApiError(
                404,
                "unknown_session",
                f"no session {session_hex[:64]!r} for {user!r} (sessions expire after "
                f"{self._config.session_ttl_s:.0f} s); create one with POST /v1/sessions",
            )
        return record

    def _turn_json(self, user: str, now: float) -> tuple[list[dict[str, Any]], float | None]:
        if self._relays is None or not self._relays.turn:
            return [], None
        try:
            grants = self._relays.grants(user, now)
        except ValueError:
            log.warning("no TURN credentials for %r: the name is too long for a TURN username", user)
            return [], None
        expires = float(grants[0].username.partition(":")[0])
        turn = [
            {
                "host": g.host,
                "port": g.port,
                "transport": g.transport,
                "username": g.username,
                "password": g.password,
            }
            for g in sorted(grants, key=lambda g: g.transport != "udp")  # UDP first; TCP where UDP is blocked
        ]
        return turn, expires

    def _session_answer(
        self, serial: str, outcome: InviteAnswered | InviteExpired, ttl: float
    ) -> SessionAnswer:
        if isinstance(outcome, InviteExpired):
            raise ApiError(
                504,
                "device_timeout",
                f"device {serial} did not answer the session offer within {ttl:.0f} s; check its network "
                "and retry",
            )
        if outcome.status != INVITE_OK:
            raise ApiError(
                502,
                "device_error",
                f"device {serial} cannot handle sessions (invite status {outcome.status}); update its "
                "dvrlinkd",
            )
        try:
            answer = SessionAnswer.decode(outcome.body)
        except ValueError:
            raise ApiError(502, "device_error", f"device {serial} sent a malformed session answer") from None
        said = f" ({answer.message})" if answer.message else ""
        if answer.status is AnswerStatus.ACCEPTED:
            return answer
        if answer.status is AnswerStatus.REFUSED:
            # The device's own reason says what to do (its data cap, its path policy); without one,
            # the likeliest cause is a viewer it does not know.
            advice = (
                f": {answer.message}"
                if answer.message
                else "; it only accepts viewers it paired with, so pair this viewer again"
            )
            raise ApiError(
                403,
                "refused",
                f"device {serial} refused the session{advice}",
                {"status": "refused", "device_message": answer.message},
            )
        if answer.status is AnswerStatus.BUSY:
            raise ApiError(
                403,
                "refused",
                f"device {serial} is busy{said}; close another session to it and retry",
                {"status": "busy", "device_message": answer.message},
                retry_after=5,
            )
        raise ApiError(
            502,
            "no_relay",
            f"device {serial} could not reach a TURN relay{said}; check the broker's TURN ports and "
            "the device's network",
            {"status": "no_relay", "device_message": answer.message},
        )

    def _session_json(self, record: SessionRecord) -> dict[str, Any]:
        return {
            "session_id": record.session_id.hex(),
            "serial": record.serial,
            "policy": POLICY_NAMES[record.policy],
            "state": record.state.value,
            "created_at": round(record.created_at, 3),
            "expires_at": round(record.expires_at, 3),
            "path": record.path,
        }


def _ice_field(body: Mapping[str, Any], name: str, low: int, high: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise ApiError(
            400, "bad_request", f"field {name!r} must be a string of {low} to {high} ICE characters"
        )
    if not all(ch.isascii() and (ch.isalnum() or ch in "+/") for ch in value):
        raise ApiError(400, "bad_request", f"field {name!r} may hold only letters, digits, '+' and '/'")
    return value


def _candidates_field(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("candidates")
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise ApiError(
            400,
            "bad_request",
            f"field 'candidates' must be a list of at most {MAX_CANDIDATES} SDP candidate strings "
            "(aioice Candidate.to_sdp())",
        )
    candidates = []
    for index, item in enumerate(value):
        if (
            not isinstance(item, str)
            or not item.isprintable()
            or len(item.encode("utf-8")) > MAX_CANDIDATE_BYTES
        ):
            raise ApiError(
                400,
                "bad_request",
                f"candidates[{index}] must be an SDP candidate string of at most {MAX_CANDIDATE_BYTES} bytes",
            )
        try:
            Candidate.from_sdp(item)
        except (ValueError, IndexError):
            raise ApiError(
                400,
                "bad_request",
                f"candidates[{index}] is not an SDP candidate such as "
                "'1 1 udp 2130706431 192.0.2.1 50000 typ host'",
            ) from None
        candidates.append(item)
    return tuple(candidates)
