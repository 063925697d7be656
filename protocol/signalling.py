"""Session signalling bodies: the offer the broker pushes to a device, the device's answer, and the
candidates both sides trickle afterwards.

The offer and answer travel as the body of an invite of kind ``INVITE_KIND_SESSION`` (presence
protocol) and its reply; trickled candidates as the body of an invite of kind
``INVITE_KIND_CANDIDATES`` (the viewer's) and its reply (the device's, held back by the device
until it has new ones or a short time has passed, so the viewer's request doubles as a long
poll). They are compact: the broker relays them and cannot read the QUIC session that follows
(the device checks the viewer's key itself, in the QUIC handshake).

ICE candidates are carried as SDP ``candidate`` attribute values (RFC 8839 §5.1), the form
``aioice.Candidate.to_sdp()`` writes and ``aioice.Candidate.from_sdp()`` reads.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import construct as c

from dvrlink.protocol.presence_wire import MAX_INVITE_BODY

INVITE_KIND_SESSION = 2
INVITE_KIND_CANDIDATES = 3
INVITE_GONE = 3
"""Invite reply status: the device has no session with the id the invite names (closed, expired)."""
SESSION_ID_SIZE = 16
_FLAG_END = 0x01


class PathPolicy(enum.IntEnum):
    """Which paths a session may use; ``RELAY_ONLY`` and ``DIRECT_ONLY`` exist for tests and for
    operators who must avoid one of them."""

    ALL = 0
    RELAY_ONLY = 1
    DIRECT_ONLY = 2


class AnswerStatus(enum.IntEnum):
    """The device's verdict on an offer."""

    ACCEPTED = 0
    BUSY = 1
    NO_RELAY = 2
    REFUSED = 3


_TURN = c.Struct(
    "host" / c.PascalString(c.Int8ub, "utf8"),
    "port" / c.Int16ub,
    "transport" / c.Enum(c.Int8ub, udp=0, tcp=1),
    "username" / c.PascalString(c.Int8ub, "utf8"),
    "password" / c.PascalString(c.Int8ub, "utf8"),
)
_CANDIDATES = c.PrefixedArray(c.Int8ub, c.PascalString(c.Int8ub, "utf8"))
_OFFER = c.Struct(
    "session_id" / c.Bytes(SESSION_ID_SIZE),
    "viewer_key" / c.Bytes(32),
    "policy" / c.Int8ub,
    "flags" / c.Int8ub,
    "ice_ufrag" / c.PascalString(c.Int8ub, "utf8"),
    "ice_pwd" / c.PascalString(c.Int8ub, "utf8"),
    "candidates" / _CANDIDATES,
    "turn" / c.PrefixedArray(c.Int8ub, _TURN),
    c.Terminated,
)
_ANSWER = c.Struct(
    "status" / c.Int8ub,
    "flags" / c.Int8ub,
    "ice_ufrag" / c.PascalString(c.Int8ub, "utf8"),
    "ice_pwd" / c.PascalString(c.Int8ub, "utf8"),
    "candidates" / _CANDIDATES,
    "message" / c.PascalString(c.Int8ub, "utf8"),
    c.Terminated,
)
_UPDATE = c.Struct(
    "session_id" / c.Bytes(SESSION_ID_SIZE),
    "flags" / c.Int8ub,
    "candidates" / _CANDIDATES,
    c.Terminated,
)


def _encode_body(layout: c.Construct, values: dict[str, object], what: str) -> bytes:
    """``layout`` built from ``values``, checked to fit an invite body.

    Raises:
        ValueError: a field is out of range, or the result exceeds an invite body.
    """
    try:
        data = bytes(layout.build(values))
    except (c.ConstructError, UnicodeEncodeError) as exc:
        raise ValueError(f"cannot encode {what}: {exc}") from exc
    if len(data) > MAX_INVITE_BODY:
        raise ValueError(f"{what} is {len(data)} bytes; at most {MAX_INVITE_BODY} fit an invite")
    return data


@dataclass(frozen=True, slots=True)
class TurnServer:
    """A TURN server and time-limited REST credentials for it."""

    host: str
    port: int
    transport: str  # "udp" or "tcp"
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class SessionOffer:
    """Broker → device: a paired viewer wants a session."""

    session_id: bytes
    viewer_key: bytes
    policy: PathPolicy
    ice_ufrag: str
    ice_pwd: str
    candidates: tuple[str, ...]
    turn: tuple[TurnServer, ...]
    end_of_candidates: bool = True
    """False: the viewer trickles more candidates later (``CandidateUpdate``)."""

    def encode(self) -> bytes:
        """Serialize.

        Raises:
            ValueError: a field is out of range or the result exceeds an invite body.
        """
        return _encode_body(
            _OFFER,
            {
                "session_id": self.session_id,
                "viewer_key": self.viewer_key,
                "policy": int(self.policy),
                "flags": _FLAG_END if self.end_of_candidates else 0,
                "ice_ufrag": self.ice_ufrag,
                "ice_pwd": self.ice_pwd,
                "candidates": list(self.candidates),
                "turn": [
                    {
                        "host": t.host,
                        "port": t.port,
                        "transport": t.transport,
                        "username": t.username,
                        "password": t.password,
                    }
                    for t in self.turn
                ],
            },
            "session offer",
        )

    @classmethod
    def decode(cls, data: bytes) -> SessionOffer:
        """Parse. Raises ValueError on malformed bytes."""
        try:
            v = _OFFER.parse(data)
            policy = PathPolicy(v.policy)
        except (c.ConstructError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"malformed session offer: {exc}") from exc
        return cls(
            session_id=bytes(v.session_id),
            viewer_key=bytes(v.viewer_key),
            policy=policy,
            ice_ufrag=str(v.ice_ufrag),
            ice_pwd=str(v.ice_pwd),
            candidates=tuple(str(x) for x in v.candidates),
            turn=tuple(
                TurnServer(str(t.host), int(t.port), str(t.transport), str(t.username), str(t.password))
                for t in v.turn
            ),
            end_of_candidates=bool(v.flags & _FLAG_END),
        )


@dataclass(frozen=True, slots=True)
class SessionAnswer:
    """Device → broker → viewer: the device's ICE parameters and candidates, or why not."""

    status: AnswerStatus
    ice_ufrag: str
    ice_pwd: str
    candidates: tuple[str, ...]
    message: str = ""
    end_of_candidates: bool = True
    """False: the device trickles more candidates in its replies to ``CandidateUpdate`` invites."""

    def encode(self) -> bytes:
        """Serialize.

        Raises:
            ValueError: a field is out of range or the result exceeds an invite body.
        """
        return _encode_body(
            _ANSWER,
            {
                "status": int(self.status),
                "flags": _FLAG_END if self.end_of_candidates else 0,
                "ice_ufrag": self.ice_ufrag,
                "ice_pwd": self.ice_pwd,
                "candidates": list(self.candidates),
                "message": self.message[:200],
            },
            "session answer",
        )

    @classmethod
    def decode(cls, data: bytes) -> SessionAnswer:
        """Parse. Raises ValueError on malformed bytes."""
        try:
            v = _ANSWER.parse(data)
            status = AnswerStatus(v.status)
        except (c.ConstructError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"malformed session answer: {exc}") from exc
        return cls(
            status,
            str(v.ice_ufrag),
            str(v.ice_pwd),
            tuple(str(x) for x in v.candidates),
            str(v.message),
            end_of_candidates=bool(v.flags & _FLAG_END),
        )


@dataclass(frozen=True, slots=True)
class CandidateUpdate:
    """Trickled ICE candidates of one session, either way: the viewer's as the body of an invite of
    kind ``INVITE_KIND_CANDIDATES``, the device's as the body of its reply.

    ``end_of_candidates``: the sender has gathered all it will (RFC 8838 end-of-candidates).
    An update may carry no candidates: a viewer that has nothing new asks for the device's.
    """

    session_id: bytes
    candidates: tuple[str, ...]
    end_of_candidates: bool = False

    def encode(self) -> bytes:
        """Serialize.

        Raises:
            ValueError: a field is out of range or the result exceeds an invite body.
        """
        return _encode_body(
            _UPDATE,
            {
                "session_id": self.session_id,
                "flags": _FLAG_END if self.end_of_candidates else 0,
                "candidates": list(self.candidates),
            },
            "candidate update",
        )

    @classmethod
    def decode(cls, data: bytes) -> CandidateUpdate:
        """Parse. Raises ValueError on malformed bytes."""
        try:
            v = _UPDATE.parse(data)
        except (c.ConstructError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"malformed candidate update: {exc}") from exc
        return cls(bytes(v.session_id), tuple(str(x) for x in v.candidates), bool(v.flags & _FLAG_END))


def fit_candidates(candidates: Sequence[str], room: int) -> tuple[str, ...]:
    """As many of ``candidates`` as fit in ``room`` bytes of encoded candidate list, in order;
    candidates longer than the layout allows (255 bytes) are left out."""
    kept: list[str] = []
    used = 1
    for sdp in candidates:
        size = len(sdp.encode())
        if size > 255:
            continue
        if used + 1 + size > room or len(kept) == 255:
            break
        kept.append(sdp)
        used += 1 + size
    return tuple(kept)


UPDATE_OVERHEAD = SESSION_ID_SIZE + 1
"""Bytes of a ``CandidateUpdate`` besides its candidate list."""
