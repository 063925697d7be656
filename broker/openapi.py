"""The OpenAPI 3.1 document of the viewer API, served at ``/openapi.json``.

A test checks that every route of the aiohttp application appears here and the reverse.
"""

from __future__ import annotations

from typing import Any

API_VERSION = "1.0.0"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_UNAUTHORIZED = _error("No, unknown or expired token (`unauthorized`, `token_expired`)")
_SERIAL = {
    "name": "serial",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Z0-9][A-Z0-9-]{2,31}$"},
    "description": "Device serial number",
}
_B64 = {"type": "string", "contentEncoding": "base64"}
_AFTER = {
    "name": "after",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "Only alarms with a larger id (the `id` of the last one seen)",
}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "description": "At most this many alarms",
}
_UNIX_TIME = {"type": ["number", "null"], "description": "Unix seconds"}
_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    "description": "Session id from POST /v1/sessions (32 hex digits)",
}
_POLICY = {
    "enum": ["all", "relay_only", "direct_only"],
    "description": "Paths the session may use; `all` opens on the relay and moves to a direct path",
}
_SESSION_FIELDS: dict[str, Any] = {
    "session_id": {"type": "string", "description": "32 hex digits"},
    "serial": {"type": "string"},
    "policy": _POLICY,
    "state": {
        "enum": ["created", "offered", "answered", "failed"],
        "description": "How far signalling got: no offer yet, waiting for the device, answered, failed",
    },
    "created_at": {"type": "number", "description": "Unix seconds"},
    "expires_at": {"type": "number", "description": "Unix seconds; the broker forgets the session then"},
    "path": {
        "enum": ["lan", "direct", "relay", None],
        "description": "The path the viewer last reported (PATCH); null until it reports",
    },
}
_CANDIDATES = {
    "type": "array",
    "maxItems": 32,
    "items": {"type": "string", "maxLength": 255},
    "description": "ICE candidates as SDP candidate attribute values (aioice `Candidate.to_sdp()`)",
}


def _body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dvrlink broker API",
            "version": API_VERSION,
            "description": (
                "Accounts, devices, pairing and session signalling for dvrlink viewers. Errors are "
                '`{"error": code, "message": text}`; `message` says what to do.'
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "Machine-readable code"},
                        "message": {"type": "string", "description": "What happened and what to do"},
                        "result": {
                            **_B64,
                            "description": "PairResult bytes (pairing errors from the device)",
                        },
                        "status": {
                            "enum": ["refused", "busy", "no_relay"],
                            "description": "The device's verdict (session offers it did not accept)",
                        },
                        "device_message": {"type": "string", "description": "The device's own words"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "online"],
                    "properties": {"status": {"const": "ok"}, "online": {"type": "integer", "minimum": 0}},
                },
                "TokenRequest": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "username": {"type": "string", "minLength": 1},
                        "password": {"type": "string", "minLength": 1, "maxLength": 1024},
                    },
                },
                "Token": {
                    "type": "object",
                    "required": ["token", "expires_at", "username"],
                    "properties": {
                        "token": {"type": "string"},
                        "expires_at": {"type": "number", "description": "Unix seconds"},
                        "username": {"type": "string"},
                    },
                },
                "Device": {
                    "type": "object",
                    "required": [
                        "serial",
                        "online",
                        "last_seen",
                        "reflexive_address",
                        "registered_at",
                        "keepalive_interval",
                        "fingerprint",
                        "paired_at",
                    ],
                    "properties": {
                        "serial": {"type": "string"},
                        "online": {"type": "boolean"},
                        "last_seen": _UNIX_TIME,
                        "reflexive_address": {
                            "type": ["string", "null"],
                            "description": "ip:port or [ip6]:port",
                        },
                        "registered_at": _UNIX_TIME,
                        "keepalive_interval": {"type": ["number", "null"], "description": "Seconds"},
                        "fingerprint": {"type": "string", "description": "Device key fingerprint (base32)"},
                        "paired_at": {"type": "number", "description": "Unix seconds"},
                        "name": {
                            "type": ["string", "null"],
                            "description": "The name this account gave the device (PUT .../name), or null",
                        },
                        "report": {
                            "type": ["object", "null"],
                            "description": (
                                "What the device last reported about itself (any of signal_dbm, rat, "
                                "data_used, modem_state, operator, keepalive_s, nat_lifetime_s, "
                                "presence_transport); null before its first report"
                            ),
                        },
                        "reported_at": _UNIX_TIME,
                    },
                },
                "DeviceList": {
                    "type": "object",
                    "required": ["devices"],
                    "properties": {
                        "devices": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}}
                    },
                },
                "Identity": {
                    "type": "object",
                    "required": ["serial", "public_key", "fingerprint", "online"],
                    "properties": {
                        "serial": {"type": "string"},
                        "public_key": {**_B64, "description": "Raw Ed25519 public key (32 bytes)"},
                        "fingerprint": {"type": "string"},
                        "online": {"type": "boolean"},
                    },
                },
                "PairingRequest": {
                    "type": "object",
                    "required": ["viewer_public_key", "nonce", "proof"],
                    "properties": {
                        "viewer_public_key": {**_B64, "description": "Raw viewer public key (32 bytes)"},
                        "nonce": {**_B64, "description": "16 random bytes"},
                        "proof": {**_B64, "description": "HMAC-SHA256 over the pairing code (32 bytes)"},
                    },
                },
                "SessionRequest": {
                    "type": "object",
                    "required": ["serial"],
                    "properties": {"serial": {"type": "string"}, "policy": {**_POLICY, "default": "all"}},
                },
                "TurnServer": {
                    "type": "object",
                    "required": ["host", "port", "transport", "username", "password"],
                    "properties": {
                        "host": {"type": "string"},
                        "port": {"type": "integer"},
                        "transport": {"enum": ["udp", "tcp"]},
                        "username": {"type": "string", "description": "`<expiry unix seconds>:<account>`"},
                        "password": {"type": "string", "description": "base64(HMAC-SHA1(secret, username))"},
                    },
                },
                "Session": {
                    "type": "object",
                    "required": list(_SESSION_FIELDS),
                    "properties": _SESSION_FIELDS,
                },
                "SessionCreated": {
                    "type": "object",
                    "required": [*_SESSION_FIELDS, "turn", "turn_expires_at", "stun"],
                    "properties": {
                        **_SESSION_FIELDS,
                        "turn": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/TurnServer"},
                            "description": "TURN servers with credentials for this account; allocate first",
                        },
                        "turn_expires_at": {**_UNIX_TIME, "description": "Unix seconds the credentials end"},
                        "stun": {
                            "type": ["object", "null"],
                            "required": ["host", "port"],
                            "properties": {"host": {"type": "string"}, "port": {"type": "integer"}},
                        },
                        "stun6": {
                            "type": ["object", "null"],
                            "required": ["host", "port"],
                            "properties": {"host": {"type": "string"}, "port": {"type": "integer"}},
                            "description": "The STUN service's IPv6 address (stun_host6), or null; "
                            "absent from older brokers",
                        },
                    },
                },
                "SessionPath": {
                    "type": "object",
                    "required": ["path"],
                    "additionalProperties": False,
                    "properties": {
                        "path": {
                            "enum": ["lan", "direct", "relay"],
                            "description": "The path the session runs on now; relay-only sessions "
                            "may only say relay, direct-only ones lan or direct",
                        }
                    },
                },
                "RelayList": {
                    "type": "object",
                    "required": ["turn", "stun"],
                    "properties": {
                        "turn": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["host", "port", "transport"],
                                "properties": {
                                    "host": {"type": "string"},
                                    "port": {"type": "integer"},
                                    "transport": {"enum": ["udp", "tcp"]},
                                },
                            },
                        },
                        "stun": {
                            "type": ["object", "null"],
                            "properties": {"host": {"type": "string"}, "port": {"type": "integer"}},
                        },
                        "stun6": {
                            "type": ["object", "null"],
                            "properties": {"host": {"type": "string"}, "port": {"type": "integer"}},
                            "description": "The STUN service's IPv6 address (stun_host6), or null; "
                            "absent from older brokers",
                        },
                    },
                },
                "SessionList": {
                    "type": "object",
                    "required": ["sessions"],
                    "properties": {
                        "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}
                    },
                },
                "Offer": {
                    "type": "object",
                    "required": ["ice_ufrag", "ice_pwd", "candidates", "viewer_public_key"],
                    "properties": {
                        "ice_ufrag": {"type": "string", "minLength": 4, "maxLength": 256},
                        "ice_pwd": {"type": "string", "minLength": 22, "maxLength": 256},
                        "candidates": _CANDIDATES,
                        "viewer_public_key": {
                            **_B64,
                            "description": "Raw viewer public key (32 bytes); the device checks it",
                        },
                        "end_of_candidates": {
                            "type": "boolean",
                            "default": True,
                            "description": "False: more candidates follow (POST .../candidates)",
                        },
                    },
                },
                "Answer": {
                    "type": "object",
                    "required": ["status", "session_id", "ice_ufrag", "ice_pwd", "candidates"],
                    "properties": {
                        "status": {"const": "accepted"},
                        "session_id": {"type": "string"},
                        "ice_ufrag": {"type": "string"},
                        "ice_pwd": {"type": "string"},
                        "candidates": _CANDIDATES,
                        "end_of_candidates": {
                            "type": "boolean",
                            "description": "False: the device trickles more (POST .../candidates returns it)",
                        },
                    },
                },
                "Alarm": {
                    "type": "object",
                    "required": ["id", "serial", "seq", "time", "received_at", "kind", "kind_code"],
                    "properties": {
                        "id": {"type": "integer", "description": "The broker's id: increasing, never reused"},
                        "serial": {"type": "string"},
                        "seq": {"type": "integer", "description": "The device's own number for it"},
                        "time": {"type": "number", "description": "Unix seconds, by the device's clock"},
                        "received_at": {"type": "number", "description": "Unix seconds, broker's clock"},
                        "kind": {
                            "type": "string",
                            "description": (
                                "SignalLost, SignalRestored, FormatChanged, MotionStart, "
                                "MotionStop, StreamStalled, DeviceError, AlarmInput, DiskError, "
                                "EncoderError, SimRemoved, DataCapReached, SupervisorReset, BrownOut, "
                                "Other (the detail names it), "
                                "or KindN for a kind this broker does not know"
                            ),
                        },
                        "kind_code": {"type": "integer", "description": "The kind's number on the wire"},
                        "channel": {"type": ["integer", "null"]},
                        "detail": {"type": "string", "maxLength": 120},
                        "snapshot_size": {
                            "type": ["integer", "null"],
                            "description": "Bytes of its JPEG snapshot (GET .../events/{event_id}/snapshot)",
                        },
                    },
                },
                "WebhookRequest": {
                    "type": "object",
                    "required": ["url"],
                    "properties": {
                        "url": {
                            "type": "string",
                            "maxLength": 2048,
                            "description": (
                                "An https URL of a public endpoint (not this broker, loopback, private "
                                "or link-local addresses, unless the broker's webhook_allowed_networks "
                                "allow them)"
                            ),
                        }
                    },
                },
                "Webhook": {
                    "type": "object",
                    "required": ["url", "created_at"],
                    "properties": {
                        "url": {"type": "string"},
                        "created_at": {"type": "number", "description": "Unix seconds"},
                        "secret": {
                            **_B64,
                            "description": (
                                "Only in the answer to PUT: the HMAC-SHA256 key of X-Dvrlink-Signature "
                                "(sha256=hex of HMAC(secret, '<X-Dvrlink-Timestamp>.' + body))"
                            ),
                        },
                    },
                },
                "AlarmList": {
                    "type": "object",
                    "required": ["serial", "events", "last_id"],
                    "properties": {
                        "serial": {"type": "string"},
                        "events": {"type": "array", "items": {"$ref": "#/components/schemas/Alarm"}},
                        "last_id": {
                            "type": ["integer", "null"],
                            "description": "The last id in `events` (or `after`): the next `after`",
                        },
                    },
                },
                "Wake": {
                    "type": "object",
                    "required": ["serial", "state", "started_at", "elapsed_s", "hold_s"],
                    "properties": {
                        "serial": {"type": "string"},
                        "state": {
                            "type": "string",
                            "enum": ["sending", "sent", "online", "failed", "timed_out"],
                        },
                        "started_at": _UNIX_TIME,
                        "elapsed_s": {"type": "number", "description": "Seconds since the wake began"},
                        "hold_s": {"type": "number", "description": "How long a session request waits"},
                        "sms_sent_at": _UNIX_TIME,
                        "online_at": _UNIX_TIME,
                        "via": {"type": "string", "description": "Gateway backend and form: `modem 8-bit`"},
                        "error": {"type": "string"},
                    },
                },
                "Ping": {
                    "type": "object",
                    "required": ["serial", "rtt_ms"],
                    "properties": {
                        "serial": {"type": "string"},
                        "rtt_ms": {"type": "number", "description": "Broker to device and back, ms"},
                    },
                },
                "CandidateUpdate": {
                    "type": "object",
                    "required": ["candidates"],
                    "properties": {
                        "candidates": _CANDIDATES,
                        "end_of_candidates": {"type": "boolean", "default": False},
                    },
                },
                "Pairing": {
                    "type": "object",
                    "required": ["status", "result"],
                    "properties": {
                        "status": {"const": "paired"},
                        "result": {**_B64, "description": "PairResult bytes signed by the device"},
                    },
                },
                "Unpairing": {
                    "type": "object",
                    "required": ["serial", "unpaired"],
                    "properties": {"serial": {"type": "string"}, "unpaired": {"const": True}},
                },
                "DeviceName": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {
                            "type": ["string", "null"],
                            "maxLength": 64,
                            "description": "Printable text; empty or null removes the name",
                        }
                    },
                },
                "NamedDevice": {
                    "type": "object",
                    "required": ["serial", "name"],
                    "properties": {"serial": {"type": "string"}, "name": {"type": ["string", "null"]}},
                },
            },
        },
        "paths": {
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "getOpenApi",
                    "responses": {
                        "200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}
                    },
                }
            },
            "/v1/health": {
                "get": {
                    "summary": "Liveness and the number of online devices",
                    "operationId": "getHealth",
                    "responses": {"200": _json("Broker is serving", "Health")},
                }
            },
            "/v1/tokens": {
                "post": {
                    "summary": "Log in: exchange a username and password for a bearer token",
                    "operationId": "createToken",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}
                        },
                    },
                    "responses": {
                        "200": _json("Token issued", "Token"),
                        "400": _error("Malformed body (`bad_request`)"),
                        "401": _error("Wrong username or password (`bad_credentials`)"),
                        "408": _error(
                            "The body did not arrive within http_body_timeout_s (`body_timeout`); the "
                            "connection is closed"
                        ),
                        "413": _error("Body larger than 64 KiB (`body_too_large`)"),
                        "429": _error(
                            "Too many failed logins for this username and address (`rate_limited`), or "
                            "too many logins being checked at once (`busy`, retry after a second)"
                        ),
                    },
                }
            },
            "/v1/devices": {
                "get": {
                    "summary": "Devices paired to the caller's account",
                    "operationId": "listDevices",
                    "security": [{"bearer": []}],
                    "responses": {"200": _json("Paired devices", "DeviceList"), "401": _UNAUTHORIZED},
                }
            },
            "/v1/devices/{serial}": {
                "get": {
                    "summary": "One paired device",
                    "operationId": "getDevice",
                    "security": [{"bearer": []}],
                    "parameters": [_SERIAL],
                    "responses": {
                        "200": _json("The device", "Device"),
                        "401": _UNAUTHORIZED,
                        "403": _error("Known but not paired to this account (`not_paired`)"),
                        "404": _error("Never registered and not in the manifest (`unknown_device`)"),
                    },
                }
            },
            "/v1/devices/{serial}/identity": {
                "get": {
                    "summary": "The device's public key, to compare with its label before pairing",
                    "operationId": "getDeviceIdentity",
                    "security": [{"bearer": []}],
                    "parameters": [_SERIAL],
                    "responses": {
                        "200": _json("The device key", "Identity"),
                        "401": _UNAUTHORIZED,
                        "404": _error("Never registered and not in the manifest (`unknown_device`)"),
                    },
                }
            },
            "/v1/devices/{serial}/ping": {
                "post": {
                    "summary": (
                        "Ask the device to answer through its presence channel (no session): proof that "
                        "it is reachable now, with the round trip"
                    ),
                    "operationId": "pingDevice",
                    "security": [{"bearer": []}],
                    "parameters": [_SERIAL],
                    "responses": {
                        "200": _json("The device answered", "Ping"),
                        "401": _UNAUTHORIZED,
                        "403": _error("Not paired (`not_paired`)"),
                        "404": _error("Unknown device (`unknown_device`)"),
                        "409": _error("Device offline (`device_offline`)"),
                        "502": _error("The device cannot answer pings (`device_error`)"),
                        "504": _error("Registered but no answer in time (`device_timeout`)"),
                    },
                }
            },
            "/v1/devices/{serial}/wake": {
                "get": {
                    "summary": (
                        "How far the latest wake of the device by SMS got (since the broker started): "
                        "a viewer shows it while its session request is held"
                    ),
                    "operationId": "getDeviceWake",
                    "security": [{"bearer": []}],
                    "parameters": [_SERIAL],
                    "responses": {
                        "200": _json("The latest wake", "Wake"),
                        "401": _UNAUTHORIZED,
                        "403": _error("Not paired (`not_paired`)"),
                        "404": _error("Unknown device (`unknown_device`), or no wake yet (`no_wake`)"),
                    },
                }
            },
            "/v1/devices/{serial}/events": {
                "get": {
                    "summary": "The device's stored alarms, oldest first (the broker keeps the last 1000)",
                    "operationId": "listDeviceEvents",
                    "security": [{"bearer": []}],
                    "parameters": [_SERIAL, _AFTER, _LIMIT],
                    "responses": {
                        "200": _json("Alarms after `after`, or the last `limit` without it", "AlarmList"),
                        "400": _error("A bad query parameter (`bad_request`)"),
                        "401": _UNAUTHORIZED,
                        "403": _error("Not paired (`not_paired`)"),
                        "404": _error("Unknown device (`unknown_device`)"),
                    },
                }
            },
            "/v1/devices/{serial}/events/stream": {
                "get": {
                    "summary": (
                        "Follow the device's alarms as Server-Sent Events: a `: following` comment once "
                        "live, then `id: <id>`, `event: alarm`, `data: <Alarm JSON>` per alarm, and a "
                        "`: keepalive` comment every 15 s. With `after` or a `Last-Event-ID` header, the "
                        "stored alarms after that id come first"
                    ),
                    "operationId": "streamDeviceEvents",
                    "security": [{"bearer": []}],
                    "parameters": [
                        _SERIAL,
                        _AFTER,
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "The last alarm id seen (EventSource sends it on reconnect)",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The event stream (it ends when the broker stops)",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": _error("A bad query parameter (`bad_request`)"),
                        "401": _UNAUTHORIZED,
                        "403": _error("Not paired (`not_paired`)"),
                        "404": _error("Unknown device (`unknown_device`)"),
                    },
                }
            },
            "/v1/devices/{serial}/events/{event_id}/snapshot": {
                "get": {
                    "summary": "The JPEG snapshot that came with an alarm",
                    "operationId": "getDeviceEventSnapshot",
                    "security": [{"bearer": []}],
                    "parameters": [
                        _SERIAL,
                        {"name": "event_id", "in": "path", "required": True, "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "The JPEG",
                            "content": {"image/jpeg": {"schema": {"type": "string"}}},
                        },
                        "401": _UNAUTHORIZED,
                        "403": _error("Not paired (`not_paired`)"),
                        "404": _error("Unknown device, or no such alarm or snapshot (`no_snapshot`)"),
                    },
                }
            },
            "/v1/webhook": {
                "put": {
                    "summary": (
                        "Set the caller's alarm webhook: every alarm of a device paired to the account is "
                        'POSTed there as {"event": Alarm}, signed (X-Dvrlink-Signature), with its id in '
                        "X-Dvrlink-Event-Id, retried with backoff until a 2xx answer"
                    ),
                    "operationId": "putWebhook",
                    "security": [{"bearer": []}],
                    "requestBody": _body("WebhookRequest"),
                    "responses": {
                        "200": _json("Set; the answer holds the signing secret, shown only now", "Webhook"),
                        "400": _error("A bad body, or a URL the SSRF guard refuses (`webhook_refused`)"),
                        "401": _UNAUTHORIZED,
                    },
                },
                "get": {
                    "summary": "The caller's alarm webhook (without its secret)",
                    "operationId": "getWebhook",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": _json("The webhook", "Webhook"),
                        "401": _UNAUTHORIZED,
                        "404": _error("None set (`no_webhook`)"),
                    },
                },
                "delete": {
                    "summary": "Remove the caller's alarm webhook and the deliveries waiting for it",
                    "operationId": "deleteWebhook",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {"description": "Removed"},
                        "401": _UNAUTHORIZED,
                        "404": _error("None set (`no_webhook`)"),
                    },
                },
            },
            "/v1/devices/{serial}/pairings": {
                "post": {
                    "summary": "Pair the device to the caller's account with a proof of its pairing code",
                    "operationId": "pairDevice",
                    "security": [{"bearer": []}],
                    "parameters": [_SERIAL],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/PairingRequest"}}
                        },
                    },
                    "responses": {
                        "200": _json("Paired", "Pairing"),
                        "400": _error(
                            "Malformed body, or the device found the request malformed (`bad_request`)"
                        ),
                        "401": _UNAUTHORIZED,
                        "403": _error("The device says the code is wrong (`wrong_code`, with `result`)"),
                        "404": _error("Unknown device (`unknown_device`)"),
                        "409": _error("Device offline (`device_offline`)"),
                        "408": _error(
                            "The body did not arrive within http_body_timeout_s (`body_timeout`); the "
                            "connection is closed"
                        ),
                        "413": _error("Body larger than 64 KiB (`body_too_large`)"),
                        "429": _error(
                            "Too many wrong codes from this account for this device, or from all accounts "
                            "for it (the slower cap), or a pairing in progress (`rate_limited`)"
                        ),
                        "502": _error("The device's answer was not a valid pairing result (`device_error`)"),
                        "504": _error("The device did not answer in time (`device_timeout`)"),
                    },
                },
                "delete": {
                    "summary": (
                        "Forget the caller's pairing of the device (the device's own list of viewers is "
                        "changed by the viewer over a session, with the `unpair` request)"
                    ),
                    "operationId": "unpairDevice",
                    "security": [{"bearer": []}],
                    "parameters": [_SERIAL],
                    "responses": {
                        "200": _json("Unpaired", "Unpairing"),
                        "401": _UNAUTHORIZED,
                        "403": _error("Not paired to this account (`not_paired`)"),
                        "404": _error("Unknown device (`unknown_device`)"),
                    },
                },
            },
            "/v1/devices/{serial}/name": {
                "put": {
                    "summary": "Name the device for the caller's account (the dashboard shows the name)",
                    "operationId": "nameDevice",
                    "security": [{"bearer": []}],
                    "parameters": [_SERIAL],
                    "requestBody": _body("DeviceName"),
                    "responses": {
                        "200": _json("Named", "NamedDevice"),
                        "400": _error("Malformed body, or a name too long or not printable (`bad_request`)"),
                        "401": _UNAUTHORIZED,
                        "403": _error("Not paired to this account (`not_paired`)"),
                        "404": _error("Unknown device (`unknown_device`)"),
                    },
                }
            },
            "/v1/relays": {
                "get": {
                    "summary": "The STUN service and TURN relays sessions use (no credentials: for "
                    "`dvrlink netcheck` to time them; nothing is stored)",
                    "operationId": "listRelays",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": _json("The relays, UDP first, and the STUN service", "RelayList"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/v1/sessions": {
                "post": {
                    "summary": (
                        "Start a session with a paired, online device; returns TURN credentials. A device "
                        "that sleeps by SMS (sms-wake mode) is woken first and the request is held until "
                        "it registers, up to the broker's wake_hold_s; GET /v1/devices/{serial}/wake shows "
                        "the wake meanwhile"
                    ),
                    "operationId": "createSession",
                    "security": [{"bearer": []}],
                    "requestBody": _body("SessionRequest"),
                    "responses": {
                        "201": _json(
                            "Session created; gather candidates, then POST its offer", "SessionCreated"
                        ),
                        "400": _error("Malformed body (`bad_request`)"),
                        "401": _UNAUTHORIZED,
                        "403": _error("Not paired to this account (`not_paired`)"),
                        "404": _error("Unknown device (`unknown_device`)"),
                        "409": _error("Device offline, and it cannot be woken by SMS (`device_offline`)"),
                        "502": _error("The wake SMS could not be sent (`wake_failed`, with `wake`)"),
                        "504": _error(
                            "Woken by SMS but not registered in time (`device_not_woken`, with `wake`)"
                        ),
                        "408": _error(
                            "The body did not arrive within http_body_timeout_s (`body_timeout`); the "
                            "connection is closed"
                        ),
                        "413": _error("Body larger than 64 KiB (`body_too_large`)"),
                        "429": _error("The account holds too many sessions (`too_many_sessions`)"),
                    },
                },
                "get": {
                    "summary": "The caller's sessions that the broker still remembers",
                    "operationId": "listSessions",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": _json("Sessions, oldest first", "SessionList"),
                        "401": _UNAUTHORIZED,
                    },
                },
            },
            "/v1/sessions/{session_id}": {
                "delete": {
                    "summary": "End a session: its viewer closed it, and it no longer counts against "
                    "the account's session limit",
                    "operationId": "endSession",
                    "security": [{"bearer": []}],
                    "parameters": [_SESSION_ID],
                    "responses": {
                        "200": {
                            "description": "Forgotten",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["session_id", "ended"],
                                        "properties": {
                                            "session_id": {"type": "string"},
                                            "ended": {"type": "boolean", "const": True},
                                        },
                                    }
                                }
                            },
                        },
                        "401": _UNAUTHORIZED,
                        "404": _error("No such session for this account, or it expired (`unknown_session`)"),
                    },
                },
                "patch": {
                    "summary": "Report the path the session runs on (when it is up and at each move); "
                    "the dashboard shows it",
                    "operationId": "reportSessionPath",
                    "security": [{"bearer": []}],
                    "parameters": [_SESSION_ID],
                    "requestBody": _body("SessionPath"),
                    "responses": {
                        "200": _json("The session with its path", "Session"),
                        "400": _error(
                            "Malformed body, an unknown field, or a path the session's policy does not "
                            "allow (`bad_request`)"
                        ),
                        "401": _UNAUTHORIZED,
                        "404": _error("No such session for this account, or it expired (`unknown_session`)"),
                        "409": _error("The device has not answered the offer yet (`session_not_answered`)"),
                        "413": _error("Body larger than 64 KiB (`body_too_large`)"),
                    },
                },
            },
            "/v1/sessions/{session_id}/offer": {
                "post": {
                    "summary": "Send the viewer's ICE offer to the device and wait for its answer",
                    "operationId": "offerSession",
                    "security": [{"bearer": []}],
                    "parameters": [_SESSION_ID],
                    "requestBody": _body("Offer"),
                    "responses": {
                        "200": _json("The device accepted; its ICE parameters and candidates", "Answer"),
                        "400": _error(
                            "Malformed body, or an offer too large for an invite (`bad_request`, "
                            "`offer_too_large`)"
                        ),
                        "401": _UNAUTHORIZED,
                        "403": _error(
                            "Not paired (`not_paired`), or the device refused or is busy (`refused`, with "
                            "`status` and `device_message`)"
                        ),
                        "404": _error("No such session for this account, or it expired (`unknown_session`)"),
                        "409": _error(
                            "Device offline (`device_offline`), or the session already has an offer "
                            "(`session_used`)"
                        ),
                        "408": _error(
                            "The body did not arrive within http_body_timeout_s (`body_timeout`); the "
                            "connection is closed"
                        ),
                        "413": _error("Body larger than 64 KiB (`body_too_large`)"),
                        "502": _error(
                            "The device cannot handle sessions or answered badly (`device_error`), or it "
                            "reaches no relay (`no_relay`)"
                        ),
                        "504": _error("The device did not answer in time (`device_timeout`)"),
                    },
                }
            },
            "/v1/sessions/{session_id}/candidates": {
                "post": {
                    "summary": (
                        "Trickle the viewer's new ICE candidates to the device; returns the device's new "
                        "ones (held up to a few seconds while it has none, so an empty update polls)"
                    ),
                    "operationId": "trickleCandidates",
                    "security": [{"bearer": []}],
                    "parameters": [_SESSION_ID],
                    "requestBody": _body("CandidateUpdate"),
                    "responses": {
                        "200": _json(
                            "The device's candidates found since its last answer", "CandidateUpdate"
                        ),
                        "400": _error(
                            "Malformed body, or too many candidates for one update (`bad_request`)"
                        ),
                        "401": _UNAUTHORIZED,
                        "403": _error("Not paired (`not_paired`)"),
                        "404": _error("No such session for this account, or it expired (`unknown_session`)"),
                        "409": _error(
                            "Device offline (`device_offline`), or the session has no answer yet "
                            "(`session_not_answered`)"
                        ),
                        "410": _error("The device closed the session (`session_gone`)"),
                        "408": _error(
                            "The body did not arrive within http_body_timeout_s (`body_timeout`); the "
                            "connection is closed"
                        ),
                        "413": _error("Body larger than 64 KiB (`body_too_large`)"),
                        "429": _error("Too many updates for one session (`too_many_updates`)"),
                        "502": _error("The device answered badly (`device_error`)"),
                        "504": _error("The device did not answer in time (`device_timeout`)"),
                    },
                }
            },
        },
    }
