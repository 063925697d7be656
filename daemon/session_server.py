"""The device side of viewer sessions: answers session offers (invites of kind
``INVITE_KIND_SESSION``) and runs each accepted session until it ends.

For each offer the broker pushes:

1. ``handle`` (inside the cloud link's step) decodes the ``SessionOffer``; a malformed one is
   answered ``INVITE_MALFORMED``, one over ``max_sessions`` ``BUSY``, one whose path policy
   contradicts the device's (``[sessions] policy``) ``REFUSED``, and so is one that ``admission``
   holds back (the cellular data cap is reached), with its reason. Otherwise a task takes over.
2. The task prepares the paths (``Connectivity.prepare``: a TURN allocation with the offer's
   credentials, host and server-reflexive candidates with the broker's presence port as STUN
   server), builds the session core and its runner, starts the paths towards the viewer's
   candidates (so the relay permission is in place before the viewer hears from us) and only
   then answers ``ACCEPTED`` with our ICE parameters and candidates. A failure to prepare is
   answered ``NO_RELAY`` (relay-only without a relay) or ``REFUSED``, with the reason. The
   answer is sent outside the link's step, so ``on_reply`` (the link's ``flush``) follows it.
3. The viewer connects over QUIC. The device, not the broker, decides who gets in: the key in
   the viewer's TLS client certificate must be in this device's paired viewers
   (``viewers.json``, read again at each handshake, so a pairing made while the daemon runs
   counts). The offer's ``viewer_key`` is what the broker claims and is only logged.
4. Candidates found after the answer (server-reflexive ones need a STUN round trip) are
   trickled: the viewer sends its own in invites of kind ``INVITE_KIND_CANDIDATES``, and the
   reply carries ours found since the last one, held back up to ``TRICKLE_HOLD_S`` when there
   is nothing new yet (the viewer's request is also its long poll for ours). An invite for a
   session not in the table is answered ``INVITE_GONE``.
5. Streams go to ``SessionServices`` (allow-listed forwards, ping, info, unpair) until the session
   closes; then its paths are released and it leaves the table.

Answers never exceed an invite body (1024 bytes): when our candidates do not fit, the relay
candidate is kept first (it is the path that works at once), then the others by ICE priority.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.daemon.config import SessionsConfig
from dvrlink.daemon.pairing import InviteReplier
from dvrlink.daemon.services import (
    DeviceInfo,
    RelayHandler,
    RpcHandler,
    ServicesConfig,
    ServiceStats,
    SessionServices,
    no_relays,
    relay_rpc,
)
from dvrlink.daemon.state import StateError, Viewer
from dvrlink.daemon.status import SessionStatus
from dvrlink.protocol.identity import fingerprint
from dvrlink.protocol.presence_events import InviteReceived
from dvrlink.protocol.presence_wire import INVITE_MALFORMED, INVITE_OK, MAX_INVITE_BODY
from dvrlink.protocol.signalling import (
    INVITE_GONE,
    INVITE_KIND_CANDIDATES,
    INVITE_KIND_SESSION,
    UPDATE_OVERHEAD,
    AnswerStatus,
    CandidateUpdate,
    PathPolicy,
    SessionAnswer,
    SessionOffer,
    fit_candidates,
)

if TYPE_CHECKING:
    # The session stack (aioquic, aioice, the connectivity layer) loads with the first session
    # offer, not at start: an idle recorder never needs it (docs/benchmarks.md, idle footprint).
    from dvrlink.protocol.session import DeviceSession
    from dvrlink.session.connectivity import Connectivity
    from dvrlink.session.runner import DeviceRunner

log = logging.getLogger(__name__)

TRICKLE_HOLD_S = 3.0
"""How long a reply to a candidate invite waits for a new local candidate when there is none yet
(below the broker's wait for it, ``session_trickle_timeout_s``)."""


class ViewerStore(Protocol):
    """Where the device's paired viewers are read from (``DeviceState``)."""

    def viewers(self) -> list[Viewer]:
        """The paired viewers. Raises ``StateError`` if they cannot be read."""
        ...

    def remove_viewer(self, public_key: bytes) -> bool:
        """Forget a paired viewer; False if it was not there. Raises ``StateError``."""
        ...


def combine_policies(viewer: PathPolicy, device: PathPolicy) -> PathPolicy | None:
    """The stricter of the viewer's and the device's policy, or None if they exclude each other
    (one relay-only, the other direct-only)."""
    if device is PathPolicy.ALL or viewer is device:
        return viewer
    if viewer is PathPolicy.ALL:
        return device
    return None


def fit_answer(
    status: AnswerStatus,
    ufrag: str,
    pwd: str,
    candidates: Sequence[str],
    message: str = "",
    *,
    end_of_candidates: bool = True,
) -> SessionAnswer:
    """An answer that encodes within an invite body, with as many ``candidates`` as fit: the relay
    candidate first, then the others by ICE priority (highest first). Candidates that cannot be
    parsed, or are longer than the layout allows, are left out. ``end_of_candidates`` is kept
    only if every candidate fits (the rest can then still be trickled)."""
    from aioice.candidate import Candidate  # noqa: PLC0415  (the session stack loads with a session)

    ranked: list[tuple[tuple[int, int], str]] = []
    for sdp in candidates:
        try:
            candidate = Candidate.from_sdp(sdp)
        except (ValueError, IndexError):
            continue
        if len(sdp.encode()) > 255:
            continue
        ranked.append(((0 if candidate.type == "relay" else 1, -candidate.priority), sdp))
    ranked.sort(key=lambda item: item[0])
    kept: list[str] = []
    for _, sdp in ranked:
        trial = SessionAnswer(status, ufrag, pwd, (*kept, sdp), message)
        try:
            trial.encode()
        except ValueError:
            break
        kept.append(sdp)
    end = end_of_candidates and len(kept) == len(candidates)
    answer = SessionAnswer(status, ufrag, pwd, tuple(kept), message, end_of_candidates=end)
    if len(kept) < len(candidates):
        log.info(
            "answer carries %d of %d candidates (%d bytes at most)",
            len(kept),
            len(candidates),
            MAX_INVITE_BODY,
        )
    return answer


@dataclass(eq=False)
class _Entry:
    """One session in the table, from the offer until its paths are released."""

    session_id: str
    label: str
    replier: InviteReplier
    """Where the answer goes: the presence core, or the LAN link for an offer found on the LAN."""
    lan: bool = False
    """Offered on the LAN (``daemon.lan_responder``): host candidates only, no STUN, no relay."""
    task: asyncio.Task[None] | None = None
    core: DeviceSession | None = None
    runner: DeviceRunner | None = None
    conn: Connectivity | None = None
    started: bool = False
    """The paths were started towards the viewer's candidates: trickled ones may be added."""
    sent: set[str] = field(default_factory=set)
    """Our candidates the viewer has been sent (in the answer or a trickle reply)."""
    sent_end: bool = False
    received_end: bool = False
    """The viewer sent end-of-candidates (in its offer or an update)."""

    def mapped(self) -> str | None:
        """The port mapping in use for this session's paths, as ``pcp 100.63.0.2:40001``."""
        for mapping in self.conn.mappings if self.conn is not None else ():
            if mapping.external is not None and mapping.protocol is not None:
                return f"{mapping.protocol.value} {mapping.external[0]}:{mapping.external[1]}"
        return None

    def status(self) -> SessionStatus:
        runner, core = self.runner, self.core
        if runner is None or core is None:
            return SessionStatus(self.session_id, None, None, None, 0, 0, mapped=self.mapped())
        path = runner.path
        return SessionStatus(
            id=self.session_id,
            viewer=core.peer_fingerprint,
            path=None if path is None else path[0],
            rtt=runner.rtt,
            bytes_in=runner.bytes_in,
            bytes_out=runner.bytes_out,
            plane=None if core.peer_fingerprint is None else "data plane" if core.dataplane else "quic",
            mapped=self.mapped(),
        )


def _version() -> str:
    import importlib.metadata  # noqa: PLC0415  (it pulls in email, zipfile and csv: only for the info RPC)

    try:
        return importlib.metadata.version("dvrlink")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class SessionServer:
    """Answers session offers for one device and runs its sessions (see the module docstring).

    ``presence`` is the presence core (``reply_invite``); ``core_clock`` its clock
    (``loop.time``); ``stun_server`` the broker's presence address (it answers STUN Binding), or
    what returns the address of the broker node in use (a fleet).
    Set ``on_reply`` to the cloud link's ``flush`` so an answer made in a task is sent at once,
    and ``on_change`` to what rewrites the status file. ``close`` ends every session.
    """

    def __init__(
        self,
        serial: str,
        device_key: Ed25519PrivateKey,
        viewers: ViewerStore,
        config: SessionsConfig,
        services: ServicesConfig,
        stun_server: tuple[str, int] | Callable[[], tuple[str, int]],
        presence: InviteReplier,
        core_clock: Callable[[], float],
        *,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._serial = serial
        self._key = device_key
        self._viewers = viewers
        self._config = config
        self._services = services
        self._stun_of = stun_server if callable(stun_server) else (lambda: stun_server)
        self.stun_server6: tuple[str, int] | None = None
        """The broker's IPv6 STUN address (``[broker] stun_host6``), which IPv6 host sockets ask;
        None: they ask ``stun_server`` (answered when its name has an IPv6 address)."""
        self._presence = presence
        self._clock = core_clock
        self._wall_clock = wall_clock
        self._started = time.monotonic()
        self._version: str | None = None  # looked up with the first info RPC (see _version)
        self._sessions: dict[str, _Entry] = {}
        self._closing = False
        self.stats = ServiceStats()
        """Stream and byte counters of every session served so far."""
        self.on_reply: Callable[[], None] = lambda: None
        """Called after an answer sent from a task (outside the cloud link's step)."""
        self.on_change: Callable[[], None] = lambda: None
        """Called when a session is added, authenticated or removed."""
        self.admission: Callable[[], str] = lambda: ""
        """Why new sessions are refused now (the cellular data cap), told to the viewer; empty:
        they are admitted."""
        self._closers: set[asyncio.Task[None]] = set()
        self.live_port = 0
        self.cellular = False
        """The uplink is the cellular modem (``[modem] enabled``), told in ``info``."""
        """The live view's RTSP port on 127.0.0.1, told in ``info`` (0: none)."""
        self.channels: Callable[[], list[dict[str, Any]]] = list
        """The capture devices' channels for the ``channels`` RPC (``CaptureService.channels``)."""
        self.relay: RelayHandler = no_relays
        """Serves the ``relay`` RPC (``BoardIoService.relay_call``; set after the start)."""
        self.handlers: dict[str, RpcHandler] = {
            "relay": relay_rpc(lambda request: self.relay(request))  # noqa: PLW0108 - self.relay is set later
        }
        """The daemon's own RPCs by name (``relay``, ``snapshot``), served in every session."""

    # -- public --

    @property
    def count(self) -> int:
        """Sessions in the table, counting those being set up."""
        return len(self._sessions)

    def snapshot(self) -> tuple[SessionStatus, ...]:
        """The sessions now, for the status file."""
        return tuple(entry.status() for entry in self._sessions.values())

    def info(self) -> DeviceInfo:
        """What the ``info`` RPC reports besides the allow-list."""
        if self._version is None:
            self._version = _version()
        return DeviceInfo(
            serial=self._serial,
            version=self._version,
            uptime_s=time.monotonic() - self._started,
            sessions=len(self._sessions),
            channels=self.channels(),
            live_port=self.live_port,
            cellular=self.cellular,
        )

    def handle(self, invite: InviteReceived, now: float) -> None:
        """Answer or take on a session invite; ``now`` is the presence core's clock.

        Called from the cloud link's step (the answers made here go out with it).

        Raises:
            ValueError: ``invite`` is neither of kind ``INVITE_KIND_SESSION`` nor
                ``INVITE_KIND_CANDIDATES`` (route only those here).
        """
        if invite.kind == INVITE_KIND_CANDIDATES:
            self._handle_candidates(invite, now)
            return
        if invite.kind != INVITE_KIND_SESSION:
            raise ValueError(f"invite kind {invite.kind} is not a session offer")
        self._handle_offer(invite, now, self._presence, lan=False)

    def handle_lan(self, invite: InviteReceived, now: float, replier: InviteReplier) -> None:
        """Take a session offer a paired viewer made on the LAN (``daemon.lan_responder``, which
        checked its signature) and answer it through ``replier``. The session gathers host
        candidates only; the QUIC handshake checks the viewer as for any session.

        Raises:
            ValueError: ``invite`` is not of kind ``INVITE_KIND_SESSION``.
        """
        if invite.kind != INVITE_KIND_SESSION:
            raise ValueError(f"invite kind {invite.kind} is not a session offer")
        self._handle_offer(invite, now, replier, lan=True)

    def _handle_offer(self, invite: InviteReceived, now: float, replier: InviteReplier, *, lan: bool) -> None:
        try:
            offer = SessionOffer.decode(invite.body)
        except ValueError as exc:
            log.info("invite %d: %s (%d bytes)", invite.invite_id, exc, len(invite.body))
            replier.reply_invite(invite.invite_id, INVITE_MALFORMED, b"", now)
            return
        session_id = offer.session_id.hex()
        label = f"{'LAN ' if lan else ''}session {session_id[:8]}"
        claimed = fingerprint(offer.viewer_key)
        log.info(
            "%s: offer for viewer %s (as the broker says; the handshake checks it), policy %s, "
            "%d candidates%s, %d TURN servers",
            label,
            claimed,
            offer.policy.name.lower(),
            len(offer.candidates),
            "" if offer.end_of_candidates else " (more to come)",
            len(offer.turn),
        )
        refusal: tuple[AnswerStatus, str] | None = None
        policy = combine_policies(offer.policy, self._config.policy)
        if self._closing:
            refusal = AnswerStatus.BUSY, "the device is shutting down; retry in a minute"
        elif held_back := self.admission():
            refusal = AnswerStatus.REFUSED, held_back
        elif session_id in self._sessions:
            refusal = AnswerStatus.REFUSED, f"session {session_id} is already open on the device"
        elif len(self._sessions) >= self._config.max_sessions:
            refusal = (
                AnswerStatus.BUSY,
                f"{len(self._sessions)} sessions open, the device's maximum ([sessions] max_sessions)",
            )
        elif policy is None:
            refusal = (
                AnswerStatus.REFUSED,
                f"the viewer asked for {offer.policy.name.lower()} paths but the device allows "
                f"{self._config.policy.name.lower()} only",
            )
        if refusal is not None:
            log.warning("%s: refused: %s", label, refusal[1])
            self._answer(replier, invite.invite_id, SessionAnswer(refusal[0], "", "", (), refusal[1]), now)
            return
        assert policy is not None
        if not self._is_authorised(offer.viewer_key):
            log.warning(
                "%s: viewer %s is not paired with this device; the handshake will refuse it", label, claimed
            )
        entry = self._sessions[session_id] = _Entry(session_id, label, replier, lan)
        task = asyncio.get_running_loop().create_task(self._serve(entry, invite.invite_id, offer, policy))
        task.add_done_callback(self._task_done)
        entry.task = task
        self._changed()

    def end_all(self, reason: str) -> int:
        """Close every open session now, telling its viewer ``reason`` (CONNECTION_CLOSE); a
        session still being set up is abandoned. Offers keep being judged as before (see
        ``admission``). Returns how many sessions were ended. Never raises."""
        entries = list(self._sessions.values())
        if entries:
            log.warning("ending %d session(s): %s", len(entries), reason)
        for entry in entries:
            if entry.runner is not None:
                task = asyncio.get_running_loop().create_task(entry.runner.close(reason))
                self._closers.add(task)
                task.add_done_callback(self._closers.discard)
            elif entry.task is not None:
                entry.task.cancel()
        return len(entries)

    async def close(self) -> None:
        """Close every session (CONNECTION_CLOSE to its viewer), release its paths and wait for
        its task. New offers are answered BUSY from now on. Never raises."""
        self._closing = True
        entries = list(self._sessions.values())
        for entry in entries:
            if entry.runner is not None:
                await entry.runner.close("the device is shutting down")
        tasks = [entry.task for entry in entries if entry.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one session --

    async def _serve(self, entry: _Entry, invite_id: int, offer: SessionOffer, policy: PathPolicy) -> None:
        from dvrlink.protocol.port_mapping import PortMappingConfig  # noqa: PLC0415
        from dvrlink.session.connectivity import Connectivity, ConnectivityError  # noqa: PLC0415

        label = entry.label
        try:
            try:
                conn = await Connectivity.prepare(
                    False,
                    None if entry.lan else self._stun_of(),
                    offer.turn,
                    policy,
                    host_addresses=self._config.host_addresses or None,
                    search=self._config.port_search,
                    coalesced_reads=False,  # a recorder mostly sends; it reads ACKs one at a time
                    port_mapping=PortMappingConfig(
                        protocols=() if entry.lan else self._config.port_mapping,
                        lifetime_s=self._config.port_mapping_lifetime_s,
                    ),
                    stun_server6=None if entry.lan else self.stun_server6,
                )
            except ConnectivityError as exc:
                status = AnswerStatus.NO_RELAY if policy is PathPolicy.RELAY_ONLY else AnswerStatus.REFUSED
                log.warning("%s: no paths: %s", label, exc)
                self._answer_later(entry, invite_id, SessionAnswer(status, "", "", (), str(exc)))
                return
            except Exception as exc:
                log.exception("%s: preparing the paths failed", label)
                self._answer_later(
                    entry,
                    invite_id,
                    SessionAnswer(AnswerStatus.REFUSED, "", "", (), f"cannot prepare paths: {exc}"),
                )
                return
            entry.conn = conn
            await self._run(entry, invite_id, offer, conn)
        finally:
            self._sessions.pop(entry.session_id, None)
            self._changed()
            log.info("%s: released; %d sessions open", label, len(self._sessions))

    async def _run(self, entry: _Entry, invite_id: int, offer: SessionOffer, conn: Connectivity) -> None:
        from dvrlink.protocol.session import DeviceSession, SessionState  # noqa: PLC0415
        from dvrlink.protocol.session_tls import device_certificate  # noqa: PLC0415
        from dvrlink.session.runner import DeviceRunner, SessionError  # noqa: PLC0415

        label = entry.label
        core = DeviceSession(
            self._key, device_certificate(self._key, self._serial, self._wall_clock()), self._is_authorised
        )
        services = SessionServices(
            self._services,
            self.info,
            stats=self.stats,
            label=label,
            revoke=lambda: self._revoke(core),
            handlers=self.handlers,
        )
        runner = DeviceRunner(core, conn, on_stream=services.start)
        runner.on_dataplane = self._changed  # the status file says what carries the streams
        entry.core, entry.runner = core, runner
        try:
            # Start first: the relay permission towards the viewer is then in place when its
            # first datagrams arrive, right after it gets the answer.
            await conn.start(
                offer.ice_ufrag, offer.ice_pwd, offer.candidates, end_of_candidates=offer.end_of_candidates
            )
            entry.started = True
            entry.received_end = offer.end_of_candidates
            if core.state is SessionState.CLOSED:
                reason = "; ".join(conn.errors) or "no path to the viewer"
                log.warning("%s: no path to the viewer: %s", label, reason)
                self._answer_later(entry, invite_id, SessionAnswer(AnswerStatus.REFUSED, "", "", (), reason))
                return
            answer = fit_answer(
                AnswerStatus.ACCEPTED,
                conn.local_ufrag,
                conn.local_pwd,
                conn.local_candidates(),
                end_of_candidates=conn.local_gathering_done,
            )
            entry.sent.update(answer.candidates)
            entry.sent_end = answer.end_of_candidates
            self._answer_later(entry, invite_id, answer)
            log.info("%s: accepted; waiting for the viewer's handshake", label)
            try:
                async with asyncio.timeout(self._config.handshake_timeout_s):
                    await runner.established()
            except TimeoutError:
                log.warning(
                    "%s: the viewer did not complete its handshake within %g s; dropped (paths: %s)",
                    label,
                    self._config.handshake_timeout_s,
                    "; ".join(conn.errors) or "no datagram from the viewer",
                )
                return
            except SessionError as exc:
                log.info("%s: ended before it was established: %s", label, exc)
                return
            log.info("%s: viewer %s authenticated on %s", label, core.peer_fingerprint, _label(runner))
            self._changed()
            reason = await runner.wait_closed()
            log.info("%s: closed (%s); %d bytes in, %d out", label, reason, runner.bytes_in, runner.bytes_out)
        finally:
            await runner.close("the device closed the session")
            await services.aclose()

    # -- trickle --

    def _handle_candidates(self, invite: InviteReceived, now: float) -> None:
        try:
            update = CandidateUpdate.decode(invite.body)
        except ValueError as exc:
            log.info("invite %d: %s (%d bytes)", invite.invite_id, exc, len(invite.body))
            self._presence.reply_invite(invite.invite_id, INVITE_MALFORMED, b"", now)
            return
        entry = self._sessions.get(update.session_id.hex())
        if entry is None or entry.conn is None or not entry.started:
            log.info(
                "invite %d: candidates for session %s, which is not open here",
                invite.invite_id,
                update.session_id.hex()[:8],
            )
            self._presence.reply_invite(invite.invite_id, INVITE_GONE, b"", now)
            return
        task = asyncio.get_running_loop().create_task(
            self._trickle(entry, entry.conn, invite.invite_id, update)
        )
        task.add_done_callback(self._task_done)

    async def _trickle(
        self, entry: _Entry, conn: Connectivity, invite_id: int, update: CandidateUpdate
    ) -> None:
        """Add the viewer's candidates, then reply with ours not yet sent (waiting up to
        ``TRICKLE_HOLD_S`` for one when there is none and gathering goes on)."""
        if not entry.received_end and (update.candidates or update.end_of_candidates):
            entry.received_end = update.end_of_candidates
            log.info(
                "%s: %d trickled candidates from the viewer%s",
                entry.label,
                len(update.candidates),
                ", end of candidates" if update.end_of_candidates else "",
            )
            try:
                await conn.add_remote_candidates(update.candidates, end=update.end_of_candidates)
            except RuntimeError:
                log.info("%s: candidates after the viewer's end-of-candidates ignored", entry.label)

        def unsent() -> list[str]:
            return [sdp for sdp in conn.local_candidates() if sdp not in entry.sent]

        if not unsent() and not entry.sent_end:
            await conn.wait_local_candidates(TRICKLE_HOLD_S)
        fresh = unsent()
        kept = fit_candidates(fresh, MAX_INVITE_BODY - UPDATE_OVERHEAD)
        end = conn.local_gathering_done and len(kept) == len(fresh)
        entry.sent.update(kept)
        entry.sent_end = entry.sent_end or end
        reply = CandidateUpdate(update.session_id, kept, end)
        log.debug(
            "%s: %d trickled candidates to the viewer%s", entry.label, len(kept), ", end" if end else ""
        )
        try:
            self._presence.reply_invite(invite_id, INVITE_OK, reply.encode(), self._clock())
        except ValueError as exc:  # a bug: fit_candidates keeps the reply within the limit
            log.error("invite %d: cannot send trickled candidates: %s", invite_id, exc)
            return
        self.on_reply()

    # -- helpers --

    def _revoke(self, core: DeviceSession) -> bool:
        """Forget the viewer authenticated on ``core`` (its ``unpair`` request).

        Raises:
            StateError: ``viewers.json`` cannot be read or written (the stream is reset).
        """
        key = core.peer_public_key
        if key is None:
            return False
        return self._viewers.remove_viewer(key)

    def is_paired(self, raw: bytes) -> bool:
        """Whether ``raw`` (an Ed25519 viewer key) is one of this device's paired viewers; False
        (and an error in the log) when ``viewers.json`` cannot be read."""
        return self._is_authorised(raw)

    def _is_authorised(self, raw: bytes) -> bool:
        """The device's own verdict on a viewer key (called by the session core)."""
        try:
            viewers = self._viewers.viewers()
        except StateError as exc:
            log.error("cannot read the paired viewers, refusing the viewer: %s", exc)
            return False
        return any(viewer.public_key == raw for viewer in viewers)

    def _answer(self, replier: InviteReplier, invite_id: int, answer: SessionAnswer, now: float) -> None:
        try:
            replier.reply_invite(invite_id, INVITE_OK, answer.encode(), now)
        except ValueError as exc:  # a bug: fit_answer keeps answers within the limit
            log.error("invite %d: cannot send the session answer: %s", invite_id, exc)

    def _answer_later(self, entry: _Entry, invite_id: int, answer: SessionAnswer) -> None:
        self._answer(entry.replier, invite_id, answer, self._clock())
        self.on_reply()

    def _changed(self) -> None:
        try:
            self.on_change()
        except Exception:
            log.exception("session status update failed; carrying on")

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("a session task failed", exc_info=task.exception())


def _label(runner: DeviceRunner) -> str:
    path = runner.path
    return "no path yet" if path is None else f"the {path[0]} path"
