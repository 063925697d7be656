"""The serial console's machine mode: one JSON object per line, both ways (docs/console.md).

A request names the protocol version it speaks (``"v"``), an ``"id"`` the reply repeats, and a
``"cmd"``; the other fields are the command's arguments::

    {"v": 1, "id": 3, "cmd": "set", "settings": {"apn": "internet"}}
    {"v": 1, "id": 3, "ok": true, "result": {"changed": {"apn": "internet"}, ...}}
    {"v": 1, "id": 4, "ok": false, "error": {"code": "bad_value", "message": "..."}}

A request for a version the device does not speak gets ``unsupported_version`` with the list of
versions it does speak in ``"supported"``. Both ends share this module, so the recorder
(``daemon/console.py``) and the laptop (``viewer/console_client.py``) cannot drift apart.
Pure: strings in, values out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
"""The version this code speaks and sends."""
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
"""Every version the device answers."""

COMMANDS = ("hello", "status", "pairing-code", "unlock", "lock", "set", "reset-pairing", "reboot")
"""Machine-mode commands (``hello`` and ``unlock`` also work while the console is locked)."""

SETTING_KEYS = ("broker_host", "broker_port", "broker_public_key", "apn")
"""What ``set`` may change: ``[broker] host``, ``port``, ``public_key`` and ``[modem] apn``."""

# Error codes (the ``"code"`` of an error reply).
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
NO_VERSION = "no_version"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_COMMAND = "unknown_command"
LOCKED = "locked"
WRONG_PIN = "wrong_pin"
RATE_LIMITED = "rate_limited"
BAD_VALUE = "bad_value"
WRITE_FAILED = "write_failed"
LINE_TOO_LONG = "line_too_long"
UNREADABLE = "unreadable"
UNAVAILABLE = "unavailable"
"""The device cannot answer this now (no pairing code yet, a state file it cannot read)."""


@dataclass(frozen=True, slots=True)
class Request:
    """A machine-mode request, as the device parsed it."""

    version: int
    request_id: int | str | None
    command: str
    args: dict[str, Any] = field(default_factory=dict)


class WireError(Exception):
    """A request line the device refuses; ``code`` is one of the error codes above and the
    message says what to send instead. ``request_id`` is the request's id when it could be read."""

    def __init__(self, code: str, message: str, request_id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def _versions() -> str:
    return ", ".join(str(v) for v in SUPPORTED_VERSIONS)


def parse_request(line: str) -> Request:
    """Read one request line (the device's side).

    Raises:
        WireError: not a JSON object (``bad_json``), no usable ``"v"`` (``no_version``), a
            version not in ``SUPPORTED_VERSIONS`` (``unsupported_version``), a bad ``"id"`` or
            ``"cmd"`` (``bad_request``), or a command this version does not know
            (``unknown_command``).
    """
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise WireError(
            BAD_JSON, f"not a JSON object ({exc.args[0]}); send one JSON object per line"
        ) from None
    if not isinstance(doc, dict):
        raise WireError(BAD_JSON, "not a JSON object; send one JSON object per line")
    request_id = doc.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str | None):
        raise WireError(BAD_REQUEST, '"id" must be a number or a string')
    version = doc.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        raise WireError(
            NO_VERSION,
            f'the request names no protocol version: add "v" (this console speaks version {_versions()})',
            request_id,
        )
    if version not in SUPPORTED_VERSIONS:
        raise WireError(
            UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported: this console speaks version {_versions()}; "
            "use a dvrlink that speaks it",
            request_id,
        )
    command = doc.get("cmd")
    if not isinstance(command, str):
        raise WireError(BAD_REQUEST, f'"cmd" must be a string, one of {", ".join(COMMANDS)}', request_id)
    if command not in COMMANDS:
        raise WireError(
            UNKNOWN_COMMAND,
            f"unknown command {json.dumps(command)}; version {version} knows {', '.join(COMMANDS)}",
            request_id,
        )
    args = {k: v for k, v in doc.items() if k not in ("v", "id", "cmd")}
    return Request(version, request_id, command, args)


def encode_request(request_id: int | str | None, command: str, **args: Any) -> bytes:
    """A request line (the laptop's side), ending in CR LF."""
    doc = {"v": PROTOCOL_VERSION, "id": request_id, "cmd": command, **args}
    return _line(doc)


def encode_result(request_id: int | str | None, result: dict[str, Any]) -> bytes:
    """A success reply line."""
    return _line({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})


def encode_error(request_id: int | str | None, code: str, message: str) -> bytes:
    """An error reply line; ``unsupported_version`` and ``no_version`` list the supported versions."""
    error: dict[str, Any] = {"code": code, "message": message}
    if code in (UNSUPPORTED_VERSION, NO_VERSION):
        error["supported"] = list(SUPPORTED_VERSIONS)
    return _line({"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error})


def _line(doc: dict[str, Any]) -> bytes:
    # ASCII only: a UART at the wrong speed, or an 8-bit-unclean adapter, cannot pass for JSON.
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\r\n"


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply line, as the laptop parsed it."""

    version: int
    request_id: int | str | None
    ok: bool
    result: dict[str, Any]
    error_code: str = ""
    error_message: str = ""
    supported: tuple[int, ...] = ()


def parse_reply(line: str) -> Reply | None:
    """Read one line from the device (the laptop's side); None for anything that is not a reply
    object (the prompt, an echo, boot messages on a shared console, noise)."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        doc = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        return None
    version = doc.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        return None
    request_id = doc.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str | None):
        return None
    result = doc.get("result")
    error = doc.get("error")
    error = error if isinstance(error, dict) else {}
    supported = error.get("supported")
    versions = tuple(v for v in supported if isinstance(v, int)) if isinstance(supported, list) else ()
    return Reply(
        version=version,
        request_id=request_id,
        ok=doc["ok"],
        result=result if isinstance(result, dict) else {},
        error_code=str(error.get("code", "")),
        error_message=str(error.get("message", "")),
        supported=versions,
    )


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` as (host, port or None).

    Raises:
        ValueError: a port that is not 1 to 65535, or an empty host.
    """
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"broker {text!r}: an IPv6 address goes in brackets, [2001:db8::1]:3478")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"broker {text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise ValueError(f"broker {text!r}: no host name")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"broker {text!r}: the port must be 1 to 65535")
    return host, int(port_text)
