"""The network side of a PPP call, as a cellular modem speaks it after ``CONNECT``: sans-I/O.

:class:`PppServer` takes the bytes the host's pppd writes to the modem port and returns the
bytes the modem writes back; it runs the server side of LCP (RFC 1661), PAP (RFC 1334) or
CHAP-MD5 (RFC 1994) and IPCP (RFC 1332, DNS options from RFC 1877), and hands IPv4 packets in and
out. Time is an argument (``now``, in seconds, any monotonic origin) and the restart timers are
read with :meth:`PppServer.get_timer` and fired with :meth:`PppServer.handle_timer`; randomness
(magic numbers, CHAP challenges) comes from the ``rng`` given. Nothing here does I/O.

scapy's PPP layers parse and build the options and the PAP/CHAP/IPCP packets
(``scapy.layers.ppp``); the byte stuffing and FCS are in :mod:`hil.modememu.ppp_framing`, since
scapy's ``HDLC`` layer is only the address and control octets. Option lists are split here
before scapy sees an option, because scapy's fixed-size option classes would read past a short
option. Whatever the peer sends, bad input is counted and dropped, never raised.

What the server does not do: compression (VJ, CCP: rejected), IPv6CP and multilink
(Protocol-Reject), LCP echoes of its own (it answers the peer's), link quality reports, MS-CHAP
and EAP.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from scapy.layers.ppp import (
    PPP_CHAP,
    PPP_PAP,
    PPP_CHAP_ChallengeResponse,
    PPP_IPCP_Option,
    PPP_IPCP_Option_DNS1,
    PPP_IPCP_Option_DNS2,
    PPP_IPCP_Option_IPAddress,
    PPP_LCP_ACCM_Option,
    PPP_LCP_Auth_Protocol_Option,
    PPP_LCP_Magic_Number_Option,
    PPP_LCP_MRU_Option,
    PPP_PAP_Request,
    PPP_PAP_Response,
)

from hil.modememu.ppp_framing import DEFAULT_ACCM, Deframer, encode_frame
from hil.modememu.ppp_fsm import TIMER_STATES, TRANSITIONS, Action, Event, State

PROTO_IP = 0x0021
PROTO_IPCP = 0x8021
PROTO_LCP = 0xC021
PROTO_PAP = 0xC023
PROTO_CHAP = 0xC223

CONF_REQ, CONF_ACK, CONF_NAK, CONF_REJ = 1, 2, 3, 4
TERM_REQ, TERM_ACK, CODE_REJ, PROTO_REJ = 5, 6, 7, 8
ECHO_REQ, ECHO_REPLY, DISCARD_REQ = 9, 10, 11

LCP_MRU, LCP_ACCM, LCP_AUTH, LCP_MAGIC, LCP_PFC, LCP_ACFC = 1, 2, 3, 5, 7, 8
IPCP_ADDRESS, IPCP_DNS1, IPCP_DNS2 = 3, 129, 131
CHAP_MD5 = 5
MIN_MRU = 128
"""Smaller MRUs are Nak'd (pppd's MINMRU)."""
DEFAULT_MRU = 1500


class AuthMethod(Enum):
    PAP = "pap"
    CHAP_MD5 = "chap-md5"


class Phase(Enum):
    """RFC 1661 section 3.2."""

    DEAD = "dead"
    ESTABLISH = "establish"
    AUTHENTICATE = "authenticate"
    NETWORK = "network"
    TERMINATE = "terminate"


@dataclass(frozen=True, slots=True)
class PppServerConfig:
    """How the emulated network side negotiates."""

    auth: tuple[AuthMethod, ...] = (AuthMethod.PAP,)
    """Methods to ask the peer for, in order of preference (a Nak can pick another of these);
    empty: no authentication."""
    credentials: tuple[tuple[str, str], ...] | None = None
    """(user name, password) pairs the network accepts; None: any name and password, and a peer
    that refuses every method goes on unauthenticated, as most modems let it. With credentials,
    authentication is required."""
    dns: tuple[str, ...] = ()
    """Up to two DNS server addresses given to a peer that asks (IPCP options 129/131); empty:
    those options are rejected."""
    mru: int = DEFAULT_MRU
    """Our Maximum-Receive-Unit (requested only when not 1500)."""
    accm: int = 0x00000000
    """The Async-Control-Character-Map we ask the peer to use."""
    accept_compression: bool = True
    """Ack the peer's Protocol-Field- and Address-and-Control-Field-Compression (frames we send
    stay uncompressed, which the RFCs allow); False: reject them."""
    restart_s: float = 3.0
    max_configure: int = 10
    max_terminate: int = 2
    max_failure: int = 5
    auth_timeout_s: float = 30.0
    """How long to wait for a PAP Authenticate-Request after LCP opened."""
    chap_name: str = "modememu"
    """The name in our CHAP Challenge."""

    def __post_init__(self) -> None:
        if len(self.dns) > 2:
            raise ValueError(f"PPP dns holds {len(self.dns)} addresses; IPCP carries two at most")
        for value in self.dns:
            ipaddress.IPv4Address(value)
        if not MIN_MRU <= self.mru <= 65535:
            raise ValueError(f"PPP mru {self.mru} is outside {MIN_MRU}..65535")
        if self.restart_s <= 0 or min(self.max_configure, self.max_terminate, self.max_failure) < 1:
            raise ValueError("PPP restart_s must be positive and the max_* counters at least 1")
        if not 0 <= self.accm <= 0xFFFFFFFF:
            raise ValueError(f"PPP accm {self.accm:#x} is not a 32-bit map")

    @property
    def require_auth(self) -> bool:
        return self.credentials is not None and bool(self.auth)


# ------------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class PppEvent:
    """Base of what the server reports."""


@dataclass(frozen=True, slots=True)
class LinkOpened(PppEvent):
    """LCP reached Opened."""

    peer_mru: int
    peer_accm: int
    auth: AuthMethod | None


@dataclass(frozen=True, slots=True)
class Authenticated(PppEvent):
    method: AuthMethod
    username: str


@dataclass(frozen=True, slots=True)
class AuthenticationFailed(PppEvent):
    """The peer's credentials were refused, or it never sent any; the link is being closed."""

    method: AuthMethod | None
    username: str
    reason: str


@dataclass(frozen=True, slots=True)
class NetworkOpened(PppEvent):
    """IPCP reached Opened: IP packets flow."""

    local_address: str
    peer_address: str
    dns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NetworkClosed(PppEvent):
    """IPCP left Opened."""


@dataclass(frozen=True, slots=True)
class IpPacketReceived(PppEvent):
    packet: bytes


@dataclass(frozen=True, slots=True)
class LinkTerminated(PppEvent):
    """LCP finished (This-Layer-Finished): the modem should end the call (``NO CARRIER``)."""

    reason: str
    by_peer: bool


@dataclass(slots=True)
class PppCounters:
    """Frames and packets the server dropped, by reason, beside the deframer's own counters."""

    malformed: int = 0
    """Frames or packets whose fields do not add up, or that scapy could not parse."""
    discarded: int = 0
    """Well-formed packets that do not fit the state (NCP before the network phase, stray ids)."""
    protocol_rejects: int = 0
    ip_in: int = 0
    ip_out: int = 0
    ip_dropped: int = 0
    """IP packets refused: before IPCP opened, not IPv4, a wrong source address, over the MRU."""


# ---------------------------------------------------------------------------------------- helpers


def split_options(data: bytes) -> list[tuple[int, bytes]] | None:
    """Configuration options as (type, raw option including type and length); None when a length
    field does not fit."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            return None
        kind, length = data[i], data[i + 1]
        if length < 2 or i + length > len(data):
            return None
        out.append((kind, data[i : i + length]))
        i += length
    return out


def _control(code: int, ident: int, data: bytes) -> bytes:
    """An LCP/IPCP-style packet: code, identifier, length, data."""
    return struct.pack("!BBH", code, ident & 0xFF, 4 + len(data)) + data


def _ip4(value: Any) -> str | None:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


# ------------------------------------------------------------------------------ control protocols


@dataclass(slots=True)
class _Reply:
    """The answer to a Configure-Request, decided when it arrives and sent if the table says so."""

    code: int
    data: bytes
    commit: Callable[[], None] | None = None


class _ControlProtocol:
    """One RFC 1661 automaton (LCP or IPCP) bound to the server that sends its packets."""

    name = "?"
    protocol = 0

    def __init__(self, server: PppServer) -> None:
        self.server = server
        self.config = server.config
        self.state = State.INITIAL
        self.deadline: float | None = None
        self._restart_count = 0
        self._failures = 0
        self._req_id = -1
        self._next_id = 1
        self._request = b""
        """The options of our last Configure-Request."""
        self._reply: _Reply | None = None
        self._rx_id = 0
        self._rx_packet = b""

    # ---------------------------------------------------------------- the automaton, one table

    def event(self, event: Event, now: float) -> None:
        entry = TRANSITIONS.get((self.state, event))
        if entry is None:
            return  # "-" in the RFC's table: not possible there, ignored
        actions, target = entry
        for action in actions:
            self._act(action, actions, now)
        self.state = target
        if target not in TIMER_STATES:
            self.deadline = None

    def _act(self, action: Action, actions: tuple[Action, ...], now: float) -> None:
        cfg = self.config
        if action is Action.IRC:
            self._restart_count = cfg.max_terminate if Action.STR in actions else cfg.max_configure
        elif action is Action.ZRC:
            self._restart_count = 0
            self.deadline = now + cfg.restart_s
        elif action is Action.SCR:
            self._request = self.build_request()
            self._req_id = self._take_id()
            self._send(CONF_REQ, self._req_id, self._request)
            self._restart_count -= 1
            self.deadline = now + cfg.restart_s
        elif action is Action.STR:
            self._send(TERM_REQ, self._take_id(), b"")
            self._restart_count -= 1
            self.deadline = now + cfg.restart_s
        elif action in (Action.SCA, Action.SCN):
            reply = self._reply
            if reply is not None:
                if reply.commit is not None:
                    reply.commit()
                self._send(reply.code, self._rx_id, reply.data)
        elif action is Action.STA:
            self._send(TERM_ACK, self._rx_id, b"")
        elif action is Action.SCJ:
            self._send(CODE_REJ, self._take_id(), self._rx_packet[: self.server.peer_mru - 4])
        elif action is Action.SER:
            self.send_echo_reply()
        elif action is Action.TLU:
            self.layer_up(now)
        elif action is Action.TLD:
            self.layer_down(now)
        elif action is Action.TLF:
            self.layer_finished(now)
        # TLS: the lower layer (the call) is already up while the server exists

    def _take_id(self) -> int:
        ident = self._next_id
        self._next_id = (self._next_id + 1) & 0xFF
        return ident

    def _send(self, code: int, ident: int, data: bytes) -> None:
        self.server._send(self.protocol, _control(code, ident, data))

    def timeout(self, now: float) -> None:
        if self.deadline is None or now < self.deadline:
            return
        self.deadline = None
        self.event(Event.TO_PLUS if self._restart_count > 0 else Event.TO_MINUS, now)

    # ------------------------------------------------------------------------------- packets

    def packet(self, info: bytes, now: float) -> None:
        if len(info) < 4:
            self.server.counters.malformed += 1
            return
        code, ident, length = struct.unpack("!BBH", info[:4])
        if length < 4 or length > len(info):
            self.server.counters.malformed += 1
            return
        data = info[4:length]  # octets past the length are padding (RFC 1661 5)
        self._rx_id, self._rx_packet = ident, info[:length]
        if code == CONF_REQ:
            reply = self._check_request(data)
            if reply is None:
                self.server.counters.malformed += 1
                return
            self._reply = reply
            self.event(Event.RCR_PLUS if reply.code == CONF_ACK else Event.RCR_MINUS, now)
        elif code in (CONF_ACK, CONF_NAK, CONF_REJ):
            if ident != self._req_id or self.state not in (State.REQ_SENT, State.ACK_RCVD, State.ACK_SENT,
                                                           State.OPENED):  # fmt: skip
                self.server.counters.discarded += 1
                return
            if code == CONF_ACK:
                if data != self._request:
                    self.server.counters.discarded += 1
                    return
                self._req_id = -1  # answered: a repeated reply is stale
                self.event(Event.RCA, now)
                return
            options = split_options(data)
            if options is None:
                self.server.counters.malformed += 1
                return
            try:
                if code == CONF_NAK:
                    self.received_nak(options)
                elif not self.received_reject(options):
                    self.server.counters.discarded += 1
                    return
            except Exception:  # scapy refusing an option the length check let through
                self.server.counters.malformed += 1
                return
            self._req_id = -1
            if self.server._pending.close is None:  # else Close follows, not another request
                self.event(Event.RCN, now)
        elif code == TERM_REQ:
            if self.protocol == PROTO_LCP:
                server = self.server
                server.terminate_reason = server.terminate_reason or "peer sent LCP Terminate-Request"
                server.closed_by_peer = True
            self.event(Event.RTR, now)
        elif code == TERM_ACK:
            self.event(Event.RTA, now)
        elif code == CODE_REJ:
            rejected = data[0] if data else 0
            self.event(Event.RXJ_MINUS if 1 <= rejected <= CODE_REJ else Event.RXJ_PLUS, now)
        else:
            self.extra_code(code, data, now)

    def extra_code(self, code: int, data: bytes, now: float) -> None:
        self.event(Event.RUC, now)

    def _check_request(self, data: bytes) -> _Reply | None:
        options = split_options(data)
        if options is None:
            return None
        try:
            rejects, naks, commit = self.check_options(options)
        except Exception:  # scapy refusing an option the length check let through
            return None
        if rejects:
            return _Reply(CONF_REJ, b"".join(rejects))
        if naks:
            self._failures += 1
            if self._failures > self.config.max_failure:  # RFC 1661 Max-Failure: Nak becomes Reject
                refused = b"".join(raw for _, raw in options if self._naked(raw[0], naks))
                if refused:
                    return _Reply(CONF_REJ, refused)
            return _Reply(CONF_NAK, b"".join(naks))
        self._failures = 0
        return _Reply(CONF_ACK, data, commit)

    @staticmethod
    def _naked(kind: int, naks: list[bytes]) -> bool:
        return any(raw[0] == kind for raw in naks)

    # ------------------------------------------------------------- protocol-specific hooks

    def build_request(self) -> bytes:
        raise NotImplementedError

    def check_options(
        self, options: list[tuple[int, bytes]]
    ) -> tuple[list[bytes], list[bytes], Callable[[], None] | None]:
        """Returns (options to reject, options to Nak with our values, what to keep on Ack)."""
        raise NotImplementedError

    def received_nak(self, options: list[tuple[int, bytes]]) -> None:
        raise NotImplementedError

    def received_reject(self, options: list[tuple[int, bytes]]) -> bool:
        """False: the Reject holds options we never asked for (discarded)."""
        raise NotImplementedError

    def send_echo_reply(self) -> None:
        pass

    def layer_up(self, now: float) -> None:
        pass

    def layer_down(self, now: float) -> None:
        pass

    def layer_finished(self, now: float) -> None:
        pass


class _Lcp(_ControlProtocol):
    name = "LCP"
    protocol = PROTO_LCP

    def __init__(self, server: PppServer) -> None:
        super().__init__(server)
        self.magic = server._random_magic()
        self.mru = self.config.mru
        self.request_mru = self.mru != DEFAULT_MRU
        self.request_accm = True
        self.request_magic = True
        self.auth_choices = list(self.config.auth)
        self.auth: AuthMethod | None = self.auth_choices[0] if self.auth_choices else None
        self.accm = self.config.accm
        self.peer_mru = DEFAULT_MRU
        self.peer_accm = DEFAULT_ACCM

    def build_request(self) -> bytes:
        options: list[Any] = []
        if self.request_mru:
            options.append(PPP_LCP_MRU_Option(max_recv_unit=self.mru))
        if self.request_accm:
            options.append(PPP_LCP_ACCM_Option(accm=self.accm))
        if self.auth is AuthMethod.PAP:
            options.append(PPP_LCP_Auth_Protocol_Option(auth_protocol=PROTO_PAP))
        elif self.auth is AuthMethod.CHAP_MD5:
            options.append(PPP_LCP_Auth_Protocol_Option(auth_protocol=PROTO_CHAP, algorithm=CHAP_MD5))
        if self.request_magic:
            options.append(PPP_LCP_Magic_Number_Option(magic_number=self.magic))
        return b"".join(bytes(o) for o in options)

    def check_options(
        self, options: list[tuple[int, bytes]]
    ) -> tuple[list[bytes], list[bytes], Callable[[], None] | None]:
        rejects: list[bytes] = []
        naks: list[bytes] = []
        mru, accm = DEFAULT_MRU, DEFAULT_ACCM
        for kind, raw in options:
            if kind == LCP_MRU and len(raw) == 4:
                value = int(PPP_LCP_MRU_Option(raw).max_recv_unit)
                if value < MIN_MRU:
                    naks.append(bytes(PPP_LCP_MRU_Option(max_recv_unit=MIN_MRU)))
                mru = value
            elif kind == LCP_ACCM and len(raw) == 6:
                accm = int(PPP_LCP_ACCM_Option(raw).accm)
            elif kind == LCP_MAGIC and len(raw) == 6:
                value = int(PPP_LCP_Magic_Number_Option(raw).magic_number)
                if value in (0, self.magic):  # zero is illegal; ours means a looped-back line
                    naks.append(bytes(PPP_LCP_Magic_Number_Option(magic_number=self.server._random_magic())))
            elif kind in (LCP_PFC, LCP_ACFC) and len(raw) == 2 and self.config.accept_compression:
                pass
            else:  # the peer asking to authenticate us, quality protocols, callback, multilink, ...
                rejects.append(raw)  # unmodified, as RFC 1661 5.4 wants

        def commit() -> None:
            self.peer_mru, self.peer_accm = mru, accm

        return rejects, naks, commit

    def received_nak(self, options: list[tuple[int, bytes]]) -> None:
        for kind, raw in options:
            if kind == LCP_MRU and len(raw) == 4:
                value = int(PPP_LCP_MRU_Option(raw).max_recv_unit)
                if MIN_MRU <= value <= max(self.config.mru, DEFAULT_MRU):  # what the deframer takes
                    self.mru = value
                self.request_mru = self.mru != DEFAULT_MRU
            elif kind == LCP_ACCM and len(raw) == 6:
                self.accm |= int(PPP_LCP_ACCM_Option(raw).accm)
            elif kind == LCP_MAGIC:
                self.magic = self.server._random_magic()
            elif kind == LCP_AUTH and self.auth is not None:
                if self.auth in self.auth_choices:
                    self.auth_choices.remove(self.auth)
                suggested = _auth_method(raw) if len(raw) >= 4 else None
                if suggested is not None and suggested in self.auth_choices:
                    self.auth = suggested
                else:
                    self._next_auth("the peer refused our authentication methods with a Nak")

    def received_reject(self, options: list[tuple[int, bytes]]) -> bool:
        asked = {raw[0] for kind, raw in split_options(self._request) or []}
        if any(kind not in asked for kind, _ in options):
            return False
        for kind, _ in options:
            if kind == LCP_MRU:
                self.request_mru = False
            elif kind == LCP_ACCM:
                self.request_accm = False
            elif kind == LCP_MAGIC:
                self.request_magic = False
            elif kind == LCP_AUTH and self.auth is not None:
                self.auth_choices.clear()
                self._next_auth("the peer rejected authentication")
        return True

    def _next_auth(self, why: str) -> None:
        if self.auth_choices:
            self.auth = self.auth_choices[0]
            return
        self.auth = None
        if self.config.require_auth:
            self.server._request_close(f"{why} and the network requires it", auth_failed=True)

    def extra_code(self, code: int, data: bytes, now: float) -> None:
        if code == PROTO_REJ:
            rejected = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
            self.server.counters.protocol_rejects += 1
            if rejected == PROTO_LCP:
                self.event(Event.RXJ_MINUS, now)
            elif rejected == PROTO_IPCP:
                self.server.ipcp.event(Event.RXJ_MINUS, now)
            else:
                self.event(Event.RXJ_PLUS, now)
        elif code == ECHO_REQ:
            self.event(Event.RXR, now)
        elif code in (ECHO_REPLY, DISCARD_REQ):
            pass
        else:
            self.event(Event.RUC, now)

    def send_echo_reply(self) -> None:
        data = self._rx_packet[8:]
        self._send(ECHO_REPLY, self._rx_id, struct.pack("!I", self.magic) + data)

    def layer_up(self, now: float) -> None:
        self.server._link_up(now)

    def layer_down(self, now: float) -> None:
        self.server._link_down(now)

    def layer_finished(self, now: float) -> None:
        self.server._link_finished()


def _auth_method(raw: bytes) -> AuthMethod | None:
    proto = int.from_bytes(raw[2:4], "big")
    if proto == PROTO_PAP:
        return AuthMethod.PAP
    if proto == PROTO_CHAP and len(raw) == 5 and raw[4] == CHAP_MD5:
        return AuthMethod.CHAP_MD5
    return None


class _Ipcp(_ControlProtocol):
    name = "IPCP"
    protocol = PROTO_IPCP

    def __init__(self, server: PppServer) -> None:
        super().__init__(server)
        self.request_address = True

    def build_request(self) -> bytes:
        if not self.request_address:
            return b""
        return bytes(PPP_IPCP_Option_IPAddress(data=self.server.local_address))

    def check_options(
        self, options: list[tuple[int, bytes]]
    ) -> tuple[list[bytes], list[bytes], Callable[[], None] | None]:
        rejects: list[bytes] = []
        naks: list[bytes] = []
        dns = self.config.dns
        peer = self.server.peer_address
        seen_address = False
        for kind, raw in options:
            if kind == IPCP_ADDRESS and len(raw) == 6:
                seen_address = True
                if _ip4(PPP_IPCP_Option(raw).data) != peer:
                    naks.append(bytes(PPP_IPCP_Option_IPAddress(data=peer)))
            elif kind in (IPCP_DNS1, IPCP_DNS2) and len(raw) == 6 and len(dns) > (kind == IPCP_DNS2):
                want = dns[1 if kind == IPCP_DNS2 else 0]
                if _ip4(PPP_IPCP_Option(raw).data) != want:
                    cls = PPP_IPCP_Option_DNS2 if kind == IPCP_DNS2 else PPP_IPCP_Option_DNS1
                    naks.append(bytes(cls(data=want)))
            else:  # VJ compression, the old IP-Addresses, NBNS, DNS we have none of, Mobile-IPv4
                rejects.append(raw)
        if not seen_address:  # tell a peer that asks for no address which one it has
            naks.append(bytes(PPP_IPCP_Option_IPAddress(data=peer)))
        return rejects, naks, None

    def received_nak(self, options: list[tuple[int, bytes]]) -> None:
        pass  # the network's own address is not negotiable: ask again with it

    def received_reject(self, options: list[tuple[int, bytes]]) -> bool:
        if any(kind != IPCP_ADDRESS for kind, _ in options):
            return False
        self.request_address = False
        return True

    def layer_up(self, now: float) -> None:
        self.server._emit(NetworkOpened(self.server.local_address, self.server.peer_address, self.config.dns))

    def layer_down(self, now: float) -> None:
        self.server._emit(NetworkClosed())

    def layer_finished(self, now: float) -> None:
        if self.server.lcp.state is State.OPENED:
            self.server._request_close("IPCP finished: no network protocol left")


# ------------------------------------------------------------------------------------- the server


@dataclass(slots=True)
class _Auth:
    method: AuthMethod
    deadline: float | None = None
    challenge: bytes = b""
    ident: int = 0
    tries: int = 0
    done_user: str | None = None
    done_reply: bytes = b""
    """Our last Ack/Success, sent again when the peer repeats its request (ours was lost)."""


@dataclass(slots=True)
class _Pending:
    close: str | None = None
    auth_failed: bool = False
    events: deque[PppEvent] = field(default_factory=deque)


class PppServer:
    """The network side of one PPP call (a new object per call).

    ``local_address`` is the network's end, ``peer_address`` the address IPCP assigns the host.
    ``rng(n)`` returns n random bytes.
    """

    def __init__(
        self,
        config: PppServerConfig,
        local_address: str,
        peer_address: str,
        rng: Callable[[int], bytes],
    ) -> None:
        self.config = config
        self.local_address = str(ipaddress.IPv4Address(local_address))
        self.peer_address = str(ipaddress.IPv4Address(peer_address))
        self._rng = rng
        self.counters = PppCounters()
        self.deframer = Deframer(max_frame=max(config.mru, DEFAULT_MRU) + 8)
        self.phase = Phase.DEAD
        self.terminate_reason: str | None = None
        self.closed_by_peer = False
        self.authenticated_user: str | None = None
        self._out = bytearray()
        self._pending = _Pending()
        self._auth: _Auth | None = None
        self.lcp = _Lcp(self)
        self.ipcp = _Ipcp(self)

    # ---------------------------------------------------------------------------------- inputs

    def start(self, now: float) -> None:
        """The call is up (after ``CONNECT``): LCP starts and sends its Configure-Request."""
        self.phase = Phase.ESTABLISH
        self.lcp.event(Event.UP, now)
        self.lcp.event(Event.OPEN, now)
        self._run_pending(now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the host's serial port."""
        for frame in self.deframer.feed(data):
            self._frame(frame, now)
            self._run_pending(now)

    def send_ip(self, packet: bytes, now: float) -> bool:
        """An IPv4 packet from the network to the host; False when dropped (IPCP not open, or
        larger than the peer's MRU)."""
        if self.ipcp.state is not State.OPENED or len(packet) > self.lcp.peer_mru:
            self.counters.ip_dropped += 1
            return False
        self.counters.ip_out += 1
        self._send(PROTO_IP, packet)
        return True

    def close(self, now: float, reason: str = "the network closed the link") -> None:
        """End the link from the network side with LCP Terminate-Request; :class:`LinkTerminated`
        follows once the peer acknowledged it or the retries ran out."""
        self._request_close(reason)
        self._run_pending(now)

    def lower_down(self, now: float) -> None:
        """The call ended underneath (``NO CARRIER``, hang-up): everything stops, nothing is sent."""
        self.ipcp.event(Event.DOWN, now)
        self.lcp.event(Event.DOWN, now)
        self._auth = None
        self.phase = Phase.DEAD

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` wants to run next; None: no timer."""
        times = [t for t in (self.lcp.deadline, self.ipcp.deadline) if t is not None]
        if self._auth is not None and self._auth.deadline is not None:
            times.append(self._auth.deadline)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Fire whatever timers are due at ``now`` (early calls do nothing)."""
        self.lcp.timeout(now)
        self.ipcp.timeout(now)
        auth = self._auth
        if auth is not None and auth.deadline is not None and now >= auth.deadline:
            auth.deadline = None
            if auth.method is AuthMethod.CHAP_MD5 and auth.tries < self.config.max_configure:
                self._send_challenge(now)
            else:
                self._auth_failed("", f"no {auth.method.value} credentials from the peer in time")
        self._run_pending(now)

    # --------------------------------------------------------------------------------- outputs

    def data_to_send(self) -> bytes:
        """Bytes for the host's serial port, and forget them."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> PppEvent | None:
        """The oldest event not yet taken; None when there is none."""
        return self._pending.events.popleft() if self._pending.events else None

    @property
    def peer_mru(self) -> int:
        return self.lcp.peer_mru

    # ------------------------------------------------------------------------------- internals

    def _emit(self, event: PppEvent) -> None:
        self._pending.events.append(event)

    def _random_magic(self) -> int:
        for _ in range(8):
            value = int.from_bytes(self._rng(4), "big")
            if value:
                return value
        return 0x4D4F4445  # "MODE": the rng keeps giving zeros

    def _send(self, protocol: int, packet: bytes) -> None:
        accm = DEFAULT_ACCM if protocol == PROTO_LCP else self.lcp.peer_accm
        frame = b"\xff\x03" + struct.pack("!H", protocol) + packet
        self._out += encode_frame(frame, accm)

    def _request_close(self, reason: str, *, auth_failed: bool = False) -> None:
        if self._pending.close is None:
            self._pending.close = reason
            self._pending.auth_failed = auth_failed

    def _run_pending(self, now: float) -> None:
        reason = self._pending.close
        if reason is None:
            return
        self._pending.close = None
        if self.terminate_reason is None:
            self.terminate_reason = reason
        if self.phase is not Phase.DEAD:
            self.phase = Phase.TERMINATE
        self.lcp.event(Event.CLOSE, now)

    def _frame(self, frame: bytes, now: float) -> None:
        if frame[:2] == b"\xff\x03":
            frame = frame[2:]
        if not frame:
            self.counters.malformed += 1
            return
        if frame[0] & 1:  # Protocol-Field-Compression
            protocol, info = frame[0], frame[1:]
        elif len(frame) >= 2 and frame[1] & 1:
            protocol, info = int.from_bytes(frame[:2], "big"), frame[2:]
        else:
            self.counters.malformed += 1
            return
        if protocol == PROTO_LCP:
            self.lcp.packet(info, now)
            return
        if self.lcp.state is not State.OPENED:
            self.counters.discarded += 1  # RFC 1661 3.4: only LCP before the link is open
            return
        if protocol in (PROTO_PAP, PROTO_CHAP):
            self._auth_packet(protocol, info, now)
        elif protocol == PROTO_IPCP:
            if self.phase is Phase.NETWORK:
                self.ipcp.packet(info, now)
            else:
                self.counters.discarded += 1
        elif protocol == PROTO_IP:
            self._ip_packet(info)
        else:
            self.counters.protocol_rejects += 1
            ident = self.lcp._take_id()
            body = struct.pack("!H", protocol) + info
            self.lcp._send(PROTO_REJ, ident, body[: self.peer_mru - 4])

    def _ip_packet(self, packet: bytes) -> None:
        if (
            self.ipcp.state is not State.OPENED
            or len(packet) < 20
            or packet[0] >> 4 != 4
            or _ip4(packet[12:16]) != self.peer_address
        ):
            self.counters.ip_dropped += 1
            return
        self.counters.ip_in += 1
        self._emit(IpPacketReceived(packet))

    # --------------------------------------------------------------------------------- phases

    def _link_up(self, now: float) -> None:
        lcp = self.lcp
        self.deframer.receive_accm = lcp.accm if lcp.request_accm else DEFAULT_ACCM
        self._emit(LinkOpened(lcp.peer_mru, lcp.peer_accm, lcp.auth))
        if lcp.auth is None:
            self._network_phase(now)
            return
        self.phase = Phase.AUTHENTICATE
        self._auth = _Auth(lcp.auth)
        if lcp.auth is AuthMethod.PAP:
            self._auth.deadline = now + self.config.auth_timeout_s
        else:
            self._send_challenge(now)

    def _link_down(self, now: float) -> None:
        self.ipcp.event(Event.DOWN, now)
        self.deframer.receive_accm = DEFAULT_ACCM
        self._auth = None
        self.phase = Phase.TERMINATE

    def _link_finished(self) -> None:
        self.phase = Phase.DEAD
        self._auth = None
        self._emit(LinkTerminated(self.terminate_reason or "LCP finished", self.closed_by_peer))

    def _network_phase(self, now: float) -> None:
        self.phase = Phase.NETWORK
        if self._auth is not None:
            self._auth.deadline = None
        self.ipcp.event(Event.UP, now)
        self.ipcp.event(Event.OPEN, now)

    # ---------------------------------------------------------------------------- authentication

    def _send_challenge(self, now: float) -> None:
        auth = self._auth
        assert auth is not None
        auth.tries += 1
        auth.ident = (auth.ident + 1) & 0xFF
        auth.challenge = self._rng(16)
        packet = PPP_CHAP_ChallengeResponse(
            code=1, id=auth.ident, value=auth.challenge, optional_name=self.config.chap_name.encode()
        )
        self._send(PROTO_CHAP, bytes(packet))
        auth.deadline = now + self.config.restart_s

    def _auth_packet(self, protocol: int, info: bytes, now: float) -> None:
        auth = self._auth
        want = AuthMethod.PAP if protocol == PROTO_PAP else AuthMethod.CHAP_MD5
        if auth is None or auth.method is not want:
            self.counters.discarded += 1
            return
        if len(info) < 4 or not 4 <= int.from_bytes(info[2:4], "big") <= len(info):
            self.counters.malformed += 1
            return
        info = info[: int.from_bytes(info[2:4], "big")]
        try:
            if protocol == PROTO_PAP:
                self._pap(auth, info, now)
            else:
                self._chap(auth, info, now)
        except Exception:  # scapy could not parse what the length fields allowed
            self.counters.malformed += 1

    def _secret(self, username: str) -> str | None:
        for name, password in self.config.credentials or ():
            if name == username:
                return password
        return None

    def _pap(self, auth: _Auth, info: bytes, now: float) -> None:
        if info[0] != 1:
            self.counters.discarded += 1
            return
        if len(info) < 5 or len(info) < 6 + info[4] or len(info) < 6 + info[4] + info[5 + info[4]]:
            self.counters.malformed += 1
            return
        request = PPP_PAP(info)
        if not isinstance(request, PPP_PAP_Request):
            self.counters.malformed += 1
            return
        user = bytes(request.username or b"").decode("utf-8", "replace")
        password = bytes(request.password or b"")
        if auth.done_user is not None:  # the peer missed our Ack
            if user == auth.done_user:
                self._send(PROTO_PAP, auth.done_reply)
            return
        secret = self._secret(user)
        accepted = self.config.credentials is None or (
            secret is not None and hmac.compare_digest(secret.encode(), password)
        )
        message = b"Login ok" if accepted else b"Login incorrect"
        reply = bytes(PPP_PAP_Response(code=2 if accepted else 3, id=request.id, message=message))
        self._send(PROTO_PAP, reply)
        if not accepted:
            self._auth_failed(user, f"PAP user {user!r}: wrong user name or password")
            return
        auth.done_user, auth.done_reply = user, reply
        self.authenticated_user = user
        self._emit(Authenticated(AuthMethod.PAP, user))
        self._network_phase(now)

    def _chap(self, auth: _Auth, info: bytes, now: float) -> None:
        if info[0] != 2:
            self.counters.discarded += 1
            return
        if len(info) < 5 or len(info) < 5 + info[4]:
            self.counters.malformed += 1
            return
        response = PPP_CHAP(info)
        if not isinstance(response, PPP_CHAP_ChallengeResponse) or response.id != auth.ident:
            self.counters.discarded += 1
            return
        user = bytes(response.optional_name or b"").decode("utf-8", "replace")
        if auth.done_user is not None:
            if user == auth.done_user:
                self._send(PROTO_CHAP, auth.done_reply)
            return
        value = bytes(response.value or b"")
        secret = self._secret(user)
        if self.config.credentials is None:
            accepted = len(value) == 16
        else:
            expected = hashlib.md5(bytes((auth.ident,)) + (secret or "").encode() + auth.challenge).digest()
            accepted = secret is not None and hmac.compare_digest(expected, value)
        code, message = (3, b"Welcome") if accepted else (4, b"Access denied")
        reply = bytes(PPP_CHAP(code=code, id=auth.ident, data=message))
        self._send(PROTO_CHAP, reply)
        if not accepted:
            self._auth_failed(user, f"CHAP user {user!r}: wrong user name or secret")
            return
        auth.done_user, auth.done_reply = user, reply
        self.authenticated_user = user
        self._emit(Authenticated(AuthMethod.CHAP_MD5, user))
        self._network_phase(now)

    def _auth_failed(self, user: str, reason: str) -> None:
        method = self._auth.method if self._auth is not None else None
        if self._auth is not None:
            self._auth.deadline = None
        self._emit(AuthenticationFailed(method, user, reason))
        self._request_close(reason, auth_failed=True)
