"""Open an end-to-end encrypted session to a paired device: signalling through the broker, then
paths and QUIC on this computer.

``open_session`` runs the viewer's half of the flow in ``docs`` / issue 3::

    POST /v1/sessions                      -> session id, TURN credentials, STUN server
    Connectivity.prepare(controlling=True) -> TURN allocation + host candidates (together)
    POST /v1/sessions/{id}/offer           -> the device's ICE parameters and first candidates
    Connectivity.start(answer)             -> relay path at once, direct checks in the background
    ViewerSession + ViewerRunner           -> QUIC handshake; the device's key must be the pinned one
    POST /v1/sessions/{id}/candidates ...  -> trickle ICE both ways, in the background (``trickle``)

and returns the runner once the device is authenticated (``established``), so callers open
streams on it (``viewer.forward``). Every failure becomes one ``ViewerError`` that says what to do;
whatever was set up before the failure (the TURN allocation, the ICE sockets) is closed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.protocol.identity import ed25519_public_bytes, format_fingerprint
from dvrlink.protocol.presence_wire import MAX_INVITE_BODY
from dvrlink.protocol.session import SessionConfig, ViewerSession
from dvrlink.protocol.session_streams import RpcTarget
from dvrlink.protocol.session_tls import viewer_certificate
from dvrlink.protocol.signalling import UPDATE_OVERHEAD, PathPolicy, fit_candidates
from dvrlink.session.connectivity import ICE_TIMEOUT_S, Connectivity, ConnectivityError
from dvrlink.session.runner import (
    AFTER_CLOSE_TIMEOUT_S,
    PinMismatchError,
    SessionError,
    StreamResetError,
    ViewerRefusedError,
    ViewerRunner,
)
from dvrlink.viewer.api_types import CandidateBatch, OfferAnswer, SessionGrant, WakeStatus
from dvrlink.viewer.errors import ViewerError
from dvrlink.viewer.home import ViewerHome

log = logging.getLogger(__name__)

ESTABLISH_TIMEOUT_S = 20.0
"""How long the QUIC handshake (over the first path that opens) may take after the answer."""

PIN_MISMATCH = (
    "the device's key does not match the one pinned at pairing: do not trust this session; "
    "re-pair only if the device was replaced"
)
NOT_RECOGNISED = "the device does not recognise this viewer: pair again"
TRICKLE_MAX_UPDATES = 32
"""Candidate updates one session sends at most (the broker allows 64)."""


class SessionBroker(Protocol):
    """The broker calls a session needs (``BrokerClient``)."""

    async def create_session(
        self, serial: str, policy: PathPolicy, *, on_wake: Callable[[WakeStatus], None] | None = None
    ) -> SessionGrant:
        """Raises ViewerError. ``on_wake`` sees the progress of a wake by SMS while it lasts."""
        ...

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
        """Raises ViewerError."""
        ...

    async def end_session(self, session_id: str) -> bool:
        """Raises ViewerError."""
        ...

    async def send_candidates(
        self,
        session_id: str,
        candidates: Sequence[str],
        end_of_candidates: bool,
        *,
        serial: str | None = None,
    ) -> CandidateBatch:
        """Raises ViewerError."""
        ...


def path_name(runner: ViewerRunner) -> str:
    """``lan``, ``direct`` or ``relay``: the path the session uses now (``-`` before the first)."""
    path = runner.path
    return "-" if path is None else path[0]


async def open_session(
    client: SessionBroker,
    home: ViewerHome,
    serial: str,
    policy: PathPolicy,
    host_addresses: Sequence[str] | None = None,
    *,
    timeout_s: float = ESTABLISH_TIMEOUT_S,
    config: SessionConfig | None = None,
    end: Callable[[str], Awaitable[object]] | None = None,
    report_path: Callable[[str, str], Awaitable[object]] | None = None,
    wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    on_wake: Callable[[WakeStatus], None] | None = None,
    before_offer: Callable[[], Awaitable[None]] | None = None,
) -> ViewerRunner:
    """Open a session to ``serial`` and return its runner once the device proved its pinned key.

    ``host_addresses`` limits ICE host candidates to these IP literals (aioice skips loopback
    addresses, so tests on 127.0.0.1 must name it). The caller closes the runner. ``end`` tells
    the broker the session is over when the runner closes (``BrokerClient.end_session`` on a
    client of its own: ``client`` may be closed by then); one that fails to open is ended at once.
    ``report_path`` tells the broker the path the session runs on (``BrokerClient.report_path``,
    again on a client of its own), once it is up and after each move (``PathReporter``).
    ``on_wake`` sees the progress while the broker wakes a device that sleeps by SMS.
    ``before_offer`` is awaited once the broker granted the session, before anything is gathered
    or offered; what it raises ends the grant and comes out of here (the viewer's LAN discovery
    takes over that way).

    Raises:
        ViewerError: no pin or viewer key on this computer (pair first / log in first), any
            broker refusal (not paired, offline, no answer, refused, too many sessions, ...),
            no path found, the device's key is not the pinned one, or the device does not
            recognise this viewer.
    """
    pin = home.load_pins().get(serial)
    if pin is None:
        raise ViewerError(
            f"{serial} is not paired from this computer (no pin for it in {home.pins_path}): "
            f"pair first with `dvrlink pair {serial} CODE`"
        )
    key = home.load_key()
    if key is None:
        raise ViewerError(f"no viewer key in {home.path}: run `dvrlink login`, then pair {serial} again")
    grant = await client.create_session(serial, policy, on_wake=on_wake)
    try:
        if before_offer is not None:
            await before_offer()
        runner = await _establish(
            client, grant, serial, pin.fingerprint, key, policy, host_addresses, timeout_s, config, wall_clock
        )
    except BaseException:
        with contextlib.suppress(Exception):  # it does not count against the account's limit
            async with asyncio.timeout(AFTER_CLOSE_TIMEOUT_S):
                await client.end_session(grant.session_id)
        raise
    if report_path is not None:
        reporter = PathReporter(grant.session_id, report_path)
        runner.on_path_change = reporter.changed
        if runner.path is not None:
            reporter.changed(runner.path)
        reporter.start()
        runner.after_close.append(reporter.stop)
    if end is not None:
        runner.after_close.append(functools.partial(end, grant.session_id))
    return runner


class PathReporter:
    """Tells the broker which path a session runs on: one report at a time, the newest path wins
    (moves during a report are folded into the next one). A failed report is logged and not
    retried until the next move: the path is for the dashboard, the session does not need it."""

    def __init__(self, session_id: str, report: Callable[[str, str], Awaitable[object]]) -> None:
        self._session_id = session_id
        self._report = report
        self._wanted: str | None = None
        self._sent: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reported: list[str] = []
        """The paths reported so far, in order."""

    def changed(self, path: tuple[str, int]) -> None:
        """The session moved to ``path`` (``("lan"|"direct"|"relay", 0)``)."""
        self._wanted = path[0]
        self._wake.set()

    def start(self) -> None:
        """Start reporting in the running event loop."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"path report {self._session_id}"
        )

    async def stop(self) -> None:
        """Stop reporting (the session closed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            path = self._wanted
            if path is None or path == self._sent:
                continue
            try:
                async with asyncio.timeout(AFTER_CLOSE_TIMEOUT_S):
                    await self._report(self._session_id, path)
            except (ViewerError, TimeoutError) as exc:
                log.info("could not tell the broker the session runs on %s: %s", path, exc)
                continue
            self._sent = path
            self.reported.append(path)


async def _establish(
    client: SessionBroker,
    grant: SessionGrant,
    serial: str,
    pinned: str,
    key: Ed25519PrivateKey,
    policy: PathPolicy,
    host_addresses: Sequence[str] | None,
    timeout_s: float,
    config: SessionConfig | None,
    wall_clock: Callable[[], datetime.datetime],
) -> ViewerRunner:
    try:
        conn = await Connectivity.prepare(
            True, grant.stun, grant.turn, policy, host_addresses=host_addresses, stun_server6=grant.stun6
        )
    except ConnectivityError as exc:
        raise ViewerError(f"cannot open a session to {serial}: {exc}") from exc
    try:
        offered = conn.local_candidates()
        offered_end = conn.local_gathering_done
        answer = await client.send_offer(
            grant.session_id,
            conn.local_ufrag,
            conn.local_pwd,
            offered,
            ed25519_public_bytes(key),
            serial=serial,
            end_of_candidates=offered_end,
        )
        core = ViewerSession(key, viewer_certificate(key, wall_clock()), pinned, config)
        runner = ViewerRunner(core, conn)
    except BaseException:
        await conn.close()
        raise
    try:
        await conn.start(
            answer.ice_ufrag, answer.ice_pwd, answer.candidates, end_of_candidates=answer.end_of_candidates
        )
        if not (offered_end and answer.end_of_candidates):
            runner.spawn(
                trickle(
                    client,
                    grant.session_id,
                    conn,
                    sent=set(offered),
                    sent_end=offered_end,
                    received_end=answer.end_of_candidates,
                    serial=serial,
                ),
                f"trickling candidates to {serial}",
            )
        async with asyncio.timeout(timeout_s):
            await runner.established()
            await _confirm(runner)
    except PinMismatchError as exc:
        await runner.close("pin mismatch")
        raise ViewerError(f"{PIN_MISMATCH} ({serial}, pinned {format_fingerprint(pinned)})") from exc
    except ViewerRefusedError as exc:
        await runner.close("refused")
        raise ViewerError(f"{NOT_RECOGNISED}: `dvrlink pair {serial} CODE` ({serial} said: {exc})") from exc
    except SessionError as exc:
        await runner.close("failed")
        reason = str(exc).removeprefix("session closed: ")
        if "no path" in reason:
            raise ViewerError(_no_path(serial, reason, conn)) from exc
        raise ViewerError(
            f"the session to {serial} closed before it was set up ({reason}): retry, and check the "
            "device's log if it happens again"
        ) from exc
    except TimeoutError as exc:
        errors = conn.errors
        await runner.close("timed out")
        raise ViewerError(
            _no_path(
                serial,
                f"no session within {timeout_s:g} s on path {path_name(runner)}"
                + (f" ({'; '.join(errors)})" if errors else ""),
                conn,
            )
        ) from exc
    except BaseException:
        await runner.close("interrupted")
        raise
    return runner


async def trickle(
    client: SessionBroker,
    session_id: str,
    conn: Connectivity,
    *,
    sent: set[str],
    sent_end: bool,
    received_end: bool,
    serial: str,
    max_updates: int = TRICKLE_MAX_UPDATES,
    duration_s: float = ICE_TIMEOUT_S,
) -> None:
    """Trickle ICE (RFC 8838) through the broker until both sides have sent end-of-candidates.

    Each ``send_candidates`` carries our candidates not yet ``sent`` (none is fine: it then polls
    for the device's, which the device holds back a few seconds while it has none) and returns
    the device's new ones, added to ``conn``. When only ours remain, it waits for our gathering
    instead. Bounded by ``max_updates`` requests and ``duration_s``; on a broker error or at the
    bound the device's candidates are taken as ended, so the direct checks can conclude (the
    relay path is unaffected). Never raises but on cancellation.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    room = MAX_INVITE_BODY - UPDATE_OVERHEAD
    updates = 0
    try:
        while not (sent_end and received_end) and not conn.closed:
            left = deadline - loop.time()
            if left <= 0 or updates >= max_updates:
                log.info("trickle to %s stopped after %d updates", serial, updates)
                break
            if received_end:
                await conn.wait_local_candidates(left)
            fresh = [sdp for sdp in conn.local_candidates() if sdp not in sent]
            kept = fit_candidates(fresh, room)
            end = conn.local_gathering_done and len(kept) == len(fresh)
            if received_end and not kept and not end:
                continue
            batch = await client.send_candidates(session_id, kept, end, serial=serial)
            updates += 1
            sent.update(kept)
            sent_end = sent_end or end
            if not received_end and not conn.closed:
                await conn.add_remote_candidates(batch.candidates, end=batch.end_of_candidates)
                received_end = batch.end_of_candidates
    except ViewerError as exc:
        log.info("trickle to %s stopped: %s", serial, exc)
    if not received_end and not conn.closed:
        await conn.add_remote_candidates((), end=True)


async def _confirm(runner: ViewerRunner) -> None:
    """One empty ``ping`` round trip: proof that the device accepted this viewer.

    In TLS 1.3 the client's handshake completes before the server has checked the client
    certificate, so ``established`` alone does not tell whether the device authorised us; a
    refusing device closes the session instead of answering (``ViewerRefusedError``).

    Raises:
        SessionError: the session closed first (refused, pin, no path).
    """
    stream = await runner.open_stream(RpcTarget("ping"))
    stream.write_eof()
    try:
        while await stream.read(65536):
            pass
    except StreamResetError:
        pass  # the device answered (it does not serve ping): it accepted this viewer


def _no_path(serial: str, what: str, conn: Connectivity) -> str:
    hint = (
        "check that UDP to the broker's TURN port is open here and on the device"
        if conn.policy is not PathPolicy.DIRECT_ONLY
        else "a direct path needs one side reachable; retry without --direct-only to use the relay"
    )
    return f"no working path to {serial}: {what}: {hint}"
