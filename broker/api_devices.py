"""The viewer API's device routes: the caller's devices, a device's identity, ping, and pairing
(the proof goes to the device, which decides; the broker only counts wrong codes). Pairing proofs
are never logged. Routes are registered by ``BrokerApi.build_app``; see ``openapi.py``."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from aiohttp import web

from dvrlink.broker.api_common import ApiContext, ApiError, b64_field, json_body
from dvrlink.broker.rate_limit import PairFailures, RegistryPairFailures
from dvrlink.broker.registry import DeviceRecord, PairingRecord, format_address
from dvrlink.protocol.identity import ed25519_verify, fingerprint
from dvrlink.protocol.pairing import MAC_SIZE, NONCE_SIZE, PairRequest, PairResult, PairStatus, result_message
from dvrlink.protocol.presence_events import InviteAnswered
from dvrlink.protocol.presence_server import PresenceInfo
from dvrlink.protocol.presence_wire import INVITE_KIND_PAIR, INVITE_KIND_PING, INVITE_OK

NAME_MAX = 64
"""Characters a device name may have."""

log = logging.getLogger(__name__)


class DeviceRoutes:
    """GET /v1/devices, GET /v1/devices/{serial}, its identity, ping and pairings."""

    def __init__(self, ctx: ApiContext, pair_failures: PairFailures | None = None) -> None:
        self._ctx = ctx
        self._pair_failures = (
            pair_failures if pair_failures is not None else RegistryPairFailures(ctx.registry)
        )
        self._registry = ctx.registry
        self._presence = ctx.presence
        self._config = ctx.config
        self._clock = ctx.clock
        self._pairing_in_flight: set[str] = set()

    async def list_devices(self, request: web.Request) -> web.Response:
        """GET /v1/devices: devices paired to the caller."""
        user = self._ctx.user(request)
        devices = []
        for pairing in self._registry.pairings_for(user):
            device = self._registry.device(pairing.serial)
            if device is not None:
                info = await self._presence.lookup(device.serial)
                devices.append(self._device_json(device, pairing, info))
        return web.json_response({"devices": devices})

    async def get_device(self, request: web.Request) -> web.Response:
        """GET /v1/devices/{serial}."""
        user = self._ctx.user(request)
        serial = request.match_info["serial"]
        device = self._ctx.known_device(serial)
        pairing = self._registry.pairing(user, serial)
        if pairing is None:
            raise ApiError(403, "not_paired", f"device {serial} is not paired to {user!r}; pair it first")
        info = await self._presence.lookup(serial)
        return web.json_response(self._device_json(device, pairing, info))

    async def device_identity(self, request: web.Request) -> web.Response:
        """GET /v1/devices/{serial}/identity: the key to check before pairing."""
        self._ctx.user(request)
        device = self._ctx.known_device(request.match_info["serial"])
        info = self._presence.presence(device.serial)
        return web.json_response(
            {
                "serial": device.serial,
                "public_key": base64.b64encode(device.public_key).decode("ascii"),
                "fingerprint": fingerprint(device.public_key),
                "online": info is not None and info.online,
            }
        )

    async def ping_device(self, request: web.Request) -> web.Response:
        """POST /v1/devices/{serial}/ping: an empty invite the device answers at once, proof that
        it can be reached now (no session, no relay); returns the round trip in ms."""
        user = self._ctx.user(request)
        serial = request.match_info["serial"]
        self._ctx.known_device(serial)
        if self._registry.pairing(user, serial) is None:
            raise ApiError(403, "not_paired", f"device {serial} is not paired to {user!r}; pair it first")
        await self._ctx.require_reachable(serial)
        ttl = self._config.invite_ttl_s
        started = time.monotonic()
        outcome = await self._ctx.answered_invite(
            serial,
            INVITE_KIND_PING,
            b"",
            ttl,
            f"device {serial} is registered but did not answer within {ttl:.0f} s: its NAT may have "
            "dropped the mapping; it is reachable again after its next keepalive",
        )
        if outcome.status != INVITE_OK:
            raise ApiError(502, "device_error", f"device {serial} cannot answer pings; update its dvrlinkd")
        rtt_ms = round((time.monotonic() - started) * 1000, 1)
        return web.json_response({"serial": serial, "rtt_ms": rtt_ms}, headers={"Cache-Control": "no-store"})

    async def wake_status(self, request: web.Request) -> web.Response:
        """GET /v1/devices/{serial}/wake: how far the latest wake by SMS got (a viewer shows it
        while its session request is held)."""
        user = self._ctx.user(request)
        serial = request.match_info["serial"]
        self._ctx.paired_device(user, serial)
        waker = self._ctx.waker
        progress = None if waker is None else waker.progress(serial)
        if progress is None:
            raise ApiError(404, "no_wake", f"no wake of {serial} since the broker started")
        return web.json_response(progress.as_json(self._ctx.clock()), headers={"Cache-Control": "no-store"})

    async def unpair_device(self, request: web.Request) -> web.Response:
        """DELETE /v1/devices/{serial}/pairings: forget the caller's pairing of the device (the
        device's own list of viewers is the viewer's to change, over a session)."""
        user = self._ctx.user(request)
        serial = request.match_info["serial"]
        device = self._ctx.known_device(serial)
        if not self._registry.remove_pairing(user, device.serial):
            raise ApiError(403, "not_paired", f"device {serial} is not paired to {user!r}")
        log.info("%s unpaired %s", user, device.serial)
        return web.json_response({"serial": device.serial, "unpaired": True})

    async def name_device(self, request: web.Request) -> web.Response:
        """PUT /v1/devices/{serial}/name ``{"name": ...}``: the caller's name for a paired device
        (empty or null removes it)."""
        user = self._ctx.user(request)
        serial = request.match_info["serial"]
        body = await json_body(request, self._config.http_body_timeout_s)
        raw = body.get("name")
        if raw is not None and not isinstance(raw, str):
            raise ApiError(400, "bad_request", "field 'name' must be a string or null")
        name = (raw or "").strip()
        if len(name) > NAME_MAX or not name.isprintable():
            raise ApiError(
                400, "bad_request", f"field 'name' must be at most {NAME_MAX} printable characters"
            )
        device = self._ctx.known_device(serial)
        if not self._registry.set_device_name(user, device.serial, name or None):
            raise ApiError(403, "not_paired", f"device {serial} is not paired to {user!r}; pair it first")
        return web.json_response({"serial": device.serial, "name": name or None})

    async def pair_device(self, request: web.Request) -> web.Response:
        """POST /v1/devices/{serial}/pairings: relay a pairing proof to the device."""
        user = self._ctx.user(request)
        serial = request.match_info["serial"]
        body = await json_body(request, self._config.http_body_timeout_s)
        viewer_key = b64_field(body, "viewer_public_key", 32)
        nonce = b64_field(body, "nonce", NONCE_SIZE)
        proof = b64_field(body, "proof", MAC_SIZE)
        device = self._ctx.known_device(serial)
        await self._ctx.require_reachable(serial)
        now = self._clock()
        window = self._config.pairing_window_s
        await self._check_pairing_limits(user, serial, now)
        if serial in self._pairing_in_flight:
            raise ApiError(
                429,
                "rate_limited",
                f"another pairing attempt for {serial} is in progress; retry in a few seconds",
                retry_after=int(self._config.invite_ttl_s),
            )
        request_body = PairRequest(viewer_key, nonce, proof, account=user).encode()
        ttl = self._config.invite_ttl_s
        self._pairing_in_flight.add(serial)
        try:
            outcome = await self._ctx.answered_invite(
                serial,
                INVITE_KIND_PAIR,
                request_body,
                ttl,
                f"device {serial} did not answer within {ttl:.0f} s; check its network and retry",
            )
        finally:
            self._pairing_in_flight.discard(serial)
        result = self._check_result(device, outcome, viewer_key, nonce)
        result_b64 = base64.b64encode(outcome.body).decode("ascii")
        extra = {"result": result_b64}
        log.info("pairing of %s for %r: %s", serial, user, result.status.name)
        if result.status is PairStatus.PAIRED:
            self._registry.record_pairing(user, serial, viewer_key, self._clock())
            return web.json_response({"status": "paired", "result": result_b64})
        if result.status is PairStatus.WRONG_CODE:
            await self._pair_failures.record(serial, self._clock(), user)
            raise ApiError(
                403, "wrong_code", "the device says the pairing code is wrong; check it and retry", extra
            )
        if result.status is PairStatus.RATE_LIMITED:
            raise ApiError(
                429,
                "rate_limited",
                "the device refuses pairing for now after too many wrong codes; wait and retry",
                extra,
                retry_after=int(window),
            )
        raise ApiError(400, "bad_request", "the device found the pairing request malformed", extra)

    async def _check_pairing_limits(self, user: str, serial: str, now: float) -> None:
        """Refuse a pairing attempt over the limits on wrong codes: per account and device, so one
        account cannot spend the owner's tries (nor reach the device's own limit); and the slower
        cap per device over all accounts, which bounds guessing with many accounts. They live
        here, in the cloud API: pairing over the device's serial console is not subject to them.

        Raises:
            ApiError: 429 ``rate_limited`` with Retry-After.
        """
        window = self._config.pairing_window_s
        mine = await self._pair_failures.count_since(serial, now - window, user)
        if mine >= self._config.pairing_max_failures:
            raise ApiError(
                429,
                "rate_limited",
                f"too many wrong pairing codes from {user!r} for {serial} in the last {window:.0f} s; wait, "
                "then check the code on the device's label",
                retry_after=int(window),
            )
        device_window = self._config.pairing_device_window_s
        device_max = self._config.pairing_device_max_failures
        if await self._pair_failures.count_since(serial, now - device_window) >= device_max:
            raise ApiError(
                429,
                "rate_limited",
                f"{serial} had {device_max} wrong pairing codes from all accounts in the last "
                f"{device_window:.0f} s, so the broker stops forwarding attempts for a while; wait, or pair "
                "over the device's serial console",
                retry_after=int(device_window),
            )

    def _check_result(
        self, device: DeviceRecord, answer: InviteAnswered, viewer_key: bytes, nonce: bytes
    ) -> PairResult:
        serial = device.serial
        if answer.status != INVITE_OK:
            raise ApiError(
                502,
                "device_error",
                f"device {serial} cannot handle pairing (invite status {answer.status}); update it",
            )
        try:
            result = PairResult.decode(answer.body)
        except ValueError:
            raise ApiError(502, "device_error", f"device {serial} sent a malformed pairing result") from None
        signed = result_message(serial, viewer_key, nonce, result.status)
        if result.device_key != device.public_key or not ed25519_verify(
            result.device_key, result.signature, signed
        ):
            log.warning("device %s sent a pairing result not signed by its bound key", serial)
            raise ApiError(
                502, "device_error", f"device {serial} sent a pairing result not signed by its key"
            )
        return result

    def _device_json(
        self, device: DeviceRecord, pairing: PairingRecord, info: PresenceInfo | None
    ) -> dict[str, Any]:
        """``info``: the device's presence, here or (on a cluster, without details) at another node."""
        online = info is not None and info.online
        # The registry's record when the core has none (not seen since the broker started, or
        # held by another node of a cluster); the core's own when it has.
        last_seen: float | None = device.last_registered_at
        registered_at: float | None = device.last_registered_at
        address = device.last_address
        if info is not None and info.registered_at is not None:
            last_seen = None if info.last_seen is None else round(self._presence.wall_time(info.last_seen), 3)
            registered_at = round(self._presence.wall_time(info.registered_at), 3)
            address = None if info.address is None else format_address(info.address)
        return {
            "serial": device.serial,
            "online": online,
            "last_seen": last_seen,
            "reflexive_address": address,
            "registered_at": registered_at,
            "keepalive_interval": info.keepalive_interval if info is not None and online else None,
            "fingerprint": fingerprint(device.public_key),
            "paired_at": pairing.paired_at,
            "name": pairing.name,
            "report": device.report,
            "reported_at": device.reported_at,
        }
