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
_UNIX_TIME = {"type": ["number", "null"], "description": "Unix seconds"}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dvrlink broker API",
            "version": API_VERSION,
            "description": (
                "Accounts, devices and pairing for dvrlink viewers. Errors are "
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
                "Pairing": {
                    "type": "object",
                    "required": ["status", "result"],
                    "properties": {
                        "status": {"const": "paired"},
                        "result": {**_B64, "description": "PairResult bytes signed by the device"},
                    },
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
                        "413": _error("Body larger than 64 KiB (`body_too_large`)"),
                        "429": _error(
                            "Too many failed logins for this username and address (`rate_limited`)"
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
                        "413": _error("Body larger than 64 KiB (`body_too_large`)"),
                        "429": _error(
                            "Too many wrong codes for this device, or a pairing in progress (`rate_limited`)"
                        ),
                        "502": _error("The device's answer was not a valid pairing result (`device_error`)"),
                        "504": _error("The device did not answer in time (`device_timeout`)"),
                    },
                }
            },
        },
    }
