"""Broker configuration: one frozen dataclass, loaded from TOML and checked once at start.

Example ``broker.toml`` (every key is optional except ``state_dir``; relative paths are taken
from the directory that holds the file)::

    state_dir = "/var/lib/dvrlink-broker"   # registry, keys, self-signed certificate, broker.json
    udp_host = "0.0.0.0"                    # presence and STUN
    udp_port = 3478                         # 0 = pick a free port (see broker.json)
    udp_reuse_port = false                  # true: several broker processes share udp_port
    # presence_tcp_host = "203.0.113.11"    # presence over TCP/TLS where UDP is blocked; default udp_host
    # presence_tcp_port = 443               # default 443 (skipped with a warning if it cannot be bound)
    https_host = "0.0.0.0"                  # viewer API
    https_port = 8443                       # 0 = pick a free port
    # tls_cert = "/etc/dvrlink/broker.crt"  # both or neither; default: self-signed in state_dir
    # tls_key = "/etc/dvrlink/broker.key"
    server_names = ["broker.example.net"]   # added to the self-signed certificate
    token_lifetime_s = 2592000              # 30 days
    manifest_only = false                   # true: only serials from the factory manifest register
    registry_url = ""                       # "": SQLite in state_dir; or "postgresql://user@host:5432/db"
    pairing_max_failures = 3                # wrong pairing codes per account and device and window ...
    pairing_window_s = 3600                 # ... before the broker stops forwarding that account's tries
    pairing_device_max_failures = 10        # wrong codes per device from all accounts and window ...
    pairing_device_window_s = 86400         # ... before the broker stops forwarding any try
    invite_ttl_s = 15                       # how long a pairing request waits for the device
    presence_ticket_lifetime_s = 604800     # devices re-register by ticket this long; 0 = always in full
    login_max_failures = 10                 # wrong passwords per username and address ...
    login_window_s = 300                    # ... before logins are refused for a while
    dashboard_operators = ["alice"]         # accounts that see the whole fleet on /dashboard/
    dashboard_session_ttl_s = 28800         # a dashboard login lasts this long (8 h)
    session_ttl_s = 600                     # how long a session's signalling state is kept
    session_max_per_account = 16            # sessions at once per account
    session_answer_timeout_s = 10           # how long an offer waits for the device's answer
    http_body_timeout_s = 10                # a request body must arrive within this (else 408)
    http_idle_timeout_s = 75                # an API connection with no request is closed after this
    http_max_connections_per_address = 64   # API connections at once from one client address
    turn_enabled = true                     # built-in TURN relay (RFC 8656)
    turn_udp_port = 3479                    # 0 = free port (see broker.json)
    turn_tcp_port = 3479                    # 0 = free port
    # turn_relay_host = "203.0.113.10"      # relay sockets bind here; default udp_host
    # turn_relay_public_host = "203.0.113.10"  # address peers reach relays at (behind 1:1 NAT)
    turn_relay_port_min = 49152             # relay ports; 0 and 0 = kernel-picked
    turn_relay_port_max = 65535
    turn_realm = "dvrlink"
    # turn_secret_file = "/etc/dvrlink/turn_secret"  # default state_dir/turn_secret (made 0600)
    turn_credential_ttl_s = 3600            # lifetime of TURN REST credentials handed out
    turn_allow_loopback_peers = false       # true only for loopback tests and the demo
    webhook_allowed_networks = []           # e.g. ["10.0.0.0/8"]: labs whose webhooks are private
    # turn_servers = [{host = "turn1.example.net", port = 3478, transport = "udp"}]  # coturn fleet
    # stun_alternate_host = "203.0.113.11"  # RFC 5780 NAT discovery: a second local address
    stun_alternate_port = 3480              # ... and a second port (udp_host must be specific)
    # stun_host6 = "2001:db8:203::10"       # presence and STUN over IPv6 too, when udp_host is IPv4
    # stun_alternate_host6 = "2001:db8:203::11"  # RFC 5780 over IPv6: a second local IPv6 address
    log_level = "INFO"
    # redis_url = "redis://10.0.0.5:6379/0"  # a cluster's presence location and routing; empty: one node
    # node_id = "broker-a"                  # this node's name in the cluster; default host name:udp port
    # fleet_key_file = "/etc/dvrlink/fleet_key.pem"  # the key every node serves; default state_dir's

    [sms_gateway]                           # wake SMS to devices in sms-wake mode (docs/sms-wake.md)
    backend = "modem"                       # "modem" (on this host) or "http" (an SMS provider); absent: none
    modem_port = "/dev/ttyUSB2"             # modem: its AT port
    # modem_text_only = false               # modem: send the text form (AT+CMGF=1), not 8-bit PDU
    # url = "https://sms.example.net/send?to={to}"   # http: {to} {text} {from} are filled in
    # method = "POST"
    # body = '{"to": "{to}", "text": "{text}"}'      # http: escaped for content_type
    # content_type = "application/json"
    # auth_header = "Authorization"         # http: this header gets the content of auth_value_file
    # auth_value_file = "/etc/dvrlink/sms_token"
    # basic_user = "fleet"                  # http: or basic auth, with basic_password_file
    # sender = "+491701234567"              # {from}: the number devices allow (their allowed_senders)
    wake_hold_s = 90                        # a session request waits this long for a woken device
    validity_minutes = 10                   # the network drops an undelivered wake after this
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dvrlink.broker.registry import validate_username

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TURN_TRANSPORTS = ("udp", "tcp")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
TURN_SECRET_FILE = "turn_secret"  # noqa: S105 (a file name, not a secret)


class ConfigError(ValueError):
    """A configuration file or value is unusable; the message names the file, the key, what was
    seen and what to do."""


@dataclass(frozen=True, slots=True)
class ExternalTurnServer:
    """A TURN server the broker does not run (e.g. coturn with ``use-auth-secret`` and
    ``static-auth-secret`` = the content of ``turn_secret_file``); the API hands out credentials
    for it."""

    host: str
    """Host name or IP literal clients connect to."""
    port: int = 3478
    """Port, 1..65535."""
    transport: str = "udp"
    """"udp" or "tcp"."""


SMS_BACKENDS = ("modem", "http")
HTTP_METHODS = ("GET", "POST", "PUT")


@dataclass(frozen=True, slots=True)
class SmsGatewayConfig:
    """How the broker sends wake SMS (``[sms_gateway]``; docs/sms-wake.md "On the broker")."""

    backend: str
    """"modem": a modem on the broker host, over the AT engine; "http": an SMS provider's API."""
    modem_port: str = ""
    """modem: the AT port (``/dev/ttyUSB2``, ``/dev/serial/by-id/...``)."""
    modem_baudrate: int = 115200
    modem_text_only: bool = False
    """modem: send the wake's text form in text mode (``AT+CMGF=1``); else 8-bit data in PDU mode
    (a modem that refuses PDU mode is used in text mode anyway)."""
    url: str = ""
    """http: the request URL; ``{to}``, ``{text}`` and ``{from}`` are replaced, percent-encoded."""
    method: str = "POST"
    """http: GET, POST or PUT."""
    body: str = ""
    """http: the request body; ``{to}``, ``{text}``, ``{from}`` are replaced, escaped for
    ``content_type`` (JSON string escapes, or form encoding). Empty: no body."""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    """http: extra request headers (no secrets here: use ``auth_value_file``)."""
    auth_header: str = ""
    """http: a header whose value is the content of ``auth_value_file`` (``Authorization``,
    ``X-Api-Key``)."""
    auth_value_file: Path | None = None
    basic_user: str = ""
    """http: basic auth user; the password is the content of ``basic_password_file``."""
    basic_password_file: Path | None = None
    sender: str = ""
    """The number wake SMS come from, as +E.164 (``{from}``); devices allow-list it."""
    timeout_s: float = 10.0
    """http: seconds a provider request may take; modem: the ``AT+CMGS`` reply is the AT engine's."""
    wake_hold_s: float = 90.0
    """Seconds a session request for a device being woken waits for it to register."""
    validity_minutes: int = 10
    """Minutes the network keeps trying to deliver a wake SMS (PDU mode; a provider's own)."""
    resend_after_s: float = 30.0
    """Another session request after this long sends a new wake SMS; sooner ones join the wait."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything ``dvrlink-broker serve`` needs; build it with :func:`load_config`."""

    state_dir: Path
    """Directory for the registry (SQLite), the broker's keys, the certificate and broker.json."""
    udp_host: str = "0.0.0.0"
    """IP literal to bind the presence/STUN UDP socket to."""
    udp_port: int = 3478
    udp_reuse_port: bool = False
    """Bind the presence port with ``SO_REUSEPORT``, so several broker processes of one host (one
    per core, each a node of the cluster) share it; the kernel keeps each device with one."""
    """UDP port; 0 picks a free port (written to broker.json)."""
    presence_tcp_host: str | None = None
    """IP literal to listen on for presence over TCP/TLS (devices whose network blocks UDP); None =
    ``udp_host``. Give it its own address when the HTTPS API or TURN over TCP also use port 443."""
    presence_tcp_port: int | None = None
    """TCP port for presence over TCP/TLS; 0 picks a free port. None = 443, and if 443 cannot be
    bound there (no privilege, or another service holds it) the broker warns and serves presence
    over UDP only; a port given here must bind or the broker does not start."""
    https_host: str = "0.0.0.0"
    """IP literal to bind the HTTPS viewer API to."""
    https_port: int = 8443
    """TCP port; 0 picks a free port (written to broker.json)."""
    tls_cert: Path | None = None
    """PEM certificate chain for the API; None = self-signed certificate in state_dir."""
    tls_key: Path | None = None
    """PEM private key for ``tls_cert``; given together with it."""
    server_names: tuple[str, ...] = ()
    """DNS names or IP literals added to the self-signed certificate's subjectAltName."""
    token_lifetime_s: float = 30 * 86400.0
    """Seconds an API token stays valid."""
    manifest_only: bool = False
    """False: a serial is bound to the key of its first registration. True: only serials loaded
    from the factory manifest may register."""
    registry_url: str = ""
    """Where the registry lives: "" = SQLite in ``state_dir`` (one broker), or a PostgreSQL URL
    ``postgresql://user@host:port/database`` that several broker nodes share."""
    pairing_max_failures: int = 3
    """Wrong pairing codes one account may send one device within ``pairing_window_s`` before
    its attempts on that device are refused (429). Keep it below the device's own limit (5 per
    hour), so that one account cannot make the device lock out its owner."""
    pairing_window_s: float = 3600.0
    """Seconds of the sliding window for ``pairing_max_failures``."""
    pairing_device_max_failures: int = 10
    """Wrong pairing codes one device may receive from all accounts within
    ``pairing_device_window_s`` before every attempt on it is refused (429): the slower cap that
    bounds guessing with many accounts."""
    pairing_device_window_s: float = 86400.0
    """Seconds of the sliding window for ``pairing_device_max_failures``."""
    invite_ttl_s: float = 15.0
    """Seconds a pairing request waits for the device's answer before 504."""
    presence_ticket_lifetime_s: float = 7 * 86400.0
    """Seconds a resumption ticket stays good (protocol/presence_ticket.py): within it a device the
    fleet knows re-registers without a signature or X25519; 0: no tickets, every registration in
    full."""
    login_max_failures: int = 10
    """Wrong passwords per (username, client address) within ``login_window_s`` before 429."""
    login_window_s: float = 300.0
    """Seconds of the sliding window for ``login_max_failures``."""
    dashboard_operators: tuple[str, ...] = ()
    """Accounts with the operator role on the dashboard (``/dashboard/``): they see every device
    and the fleet counters; every other account sees the devices it paired."""
    dashboard_session_ttl_s: float = 8 * 3600.0
    """Seconds a dashboard login (its session cookie) stays valid."""
    session_ttl_s: float = 600.0
    """Seconds the broker keeps a session's signalling state (``GET /v1/sessions``)."""
    session_max_per_account: int = 16
    """Sessions one account may hold at once (429 above)."""
    session_answer_timeout_s: float = 10.0
    """Seconds an offer waits for the device's answer before 504."""
    http_body_timeout_s: float = 10.0
    """Seconds a viewer API request body may take to arrive; then 408 and the connection closes."""
    http_idle_timeout_s: float = 75.0
    """Seconds an API connection may stay open without a request (before its first and between
    requests); then it is closed."""
    http_max_connections_per_address: int = 64
    """API connections one client address may hold at once; further ones are closed as soon as
    they are accepted (and logged once per burst)."""
    turn_enabled: bool = True
    """Run the built-in TURN relay (UDP and TCP) and hand out credentials for it."""
    turn_udp_port: int = 3479
    """Built-in TURN UDP port, on ``udp_host``; 0 picks a free port (written to broker.json)."""
    turn_tcp_port: int = 3479
    """Built-in TURN TCP port, on ``udp_host``; 0 picks a free port (written to broker.json)."""
    turn_relay_host: str | None = None
    """IP literal relay sockets bind to; None = ``udp_host``."""
    turn_relay_public_host: str | None = None
    """IP literal peers reach relay sockets at (XOR-RELAYED-ADDRESS) and clients reach the TURN
    server at; None = the relay host, or if that is a wildcard the address of the interface
    with the default route (found at start)."""
    turn_relay_port_min: int = 49152
    """Lowest relay port; ``turn_relay_port_min`` = ``turn_relay_port_max`` = 0: kernel-picked."""
    turn_relay_port_max: int = 65535
    """Highest relay port."""
    turn_realm: str = "dvrlink"
    """TURN REALM."""
    turn_secret_file: Path | None = None
    """File holding the TURN REST secret; None = ``state_dir/turn_secret``. Made (mode 0600) with
    a random secret if missing; coturn shares it with ``use-auth-secret`` and
    ``static-auth-secret=<its content>``."""
    turn_credential_ttl_s: float = 3600.0
    """Seconds the TURN credentials the API hands out stay valid."""
    turn_allow_loopback_peers: bool = False
    """True: relays may reach loopback, link-local, multicast and broadcast peers (loopback tests
    and the demo); False: those peers are refused. Private-use (RFC 1918) peers are allowed
    either way, since relayed addresses may be private; firewall the relay host if it must not
    reach its own network."""
    turn_servers: tuple[ExternalTurnServer, ...] = ()
    """External TURN servers (a coturn fleet) handed out after the built-in one, or instead of it
    when ``turn_enabled`` is false."""
    stun_alternate_host: str | None = None
    """IP literal of a second address of this host: with it, STUN on the presence port gains
    RFC 5780 (OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST), so clients can classify their NAT.
    Needs a specific ``udp_host`` of the same IP family. None = plain STUN."""
    stun_alternate_port: int = 3480
    """Second STUN port for RFC 5780, bound on ``udp_host`` and on ``stun_alternate_host``; 0 = a
    free port. Only used with ``stun_alternate_host``."""
    stun_host6: str | None = None
    """IPv6 literal of this host where presence and STUN also answer (on ``udp_port``, and with
    ``stun_alternate_host6`` RFC 5780 on ``stun_alternate_port`` too), for a broker whose
    ``udp_host`` is a specific IPv4 address: devices whose ``[broker] host`` is this address
    register over IPv6, clients gather IPv6 server-reflexive candidates and netcheck tests the
    IPv6 path against it. Handed out as ``stun6`` with sessions and ``GET /v1/relays``. None = no
    IPv6 presence or STUN (unless ``udp_host`` is ``::``, which takes both families but answers
    from whichever address the kernel picks: give a host with several IPv6 addresses this key
    instead)."""
    stun_alternate_host6: str | None = None
    """IPv6 literal of a second address of this host: RFC 5780 over IPv6 next to
    ``stun_host6`` (needs it). None = plain STUN over IPv6."""
    stun_rate_per_s: int = 50
    """STUN Binding requests answered per second per source IP (presence port, alternate sockets
    and TURN port alike), after a burst of ``stun_rate_burst``; more are dropped. 0 = no limit."""
    stun_rate_burst: int = 100
    """STUN Binding requests one source IP may send at once before ``stun_rate_per_s`` applies."""
    turn_max_allocations_per_name: int = 40
    """Built-in TURN relay: allocations at once per REST name (account or serial); 486 above. The
    default covers an account's 16 sessions (``session_max_per_account``) with room, and the
    standard client's ``turnutils_uclient -m 10 -y`` (RTP and RTCP for 10 pairs: 40)."""
    log_level: str = "INFO"
    """One of DEBUG, INFO, WARNING, ERROR, CRITICAL."""
    node_id: str = ""
    """This node's name in a cluster (1 to 64 letters, digits and ``.:_-``), unique in the fleet;
    it names the node's Redis channel and is the value of its devices' presence keys. Empty =
    the host name and the bound presence UDP port. Only used with ``redis_url``."""
    redis_url: str = ""
    """Redis of a broker cluster (``redis://host:6379/0``, ``rediss://`` for TLS,
    ``unix:///run/redis.sock``): presence location, invites routed between nodes, shared
    session records and failure counters. Empty: a single node, nothing is shared."""
    fleet_key_file: Path | None = None
    """PEM file with the fleet's static X25519 key, the one devices pin as ``[broker] public_key``;
    every node of a fleet serves the same key. Never created: copy it from the fleet's first node.
    None = ``state_dir/broker_key.pem`` (made if missing), as for a single node."""
    webhook_allowed_networks: tuple[str, ...] = ()
    """CIDR networks (``"10.0.0.0/8"``, ``"127.0.0.1/32"``) that alarm webhooks may reach although
    they are loopback, private, link-local or this broker's own addresses (and there plain
    http is allowed too): for labs. Empty: webhooks must be https to public addresses."""
    webhook_retry_initial_s: float = 2.0
    """Seconds before a failed webhook delivery is retried; doubling each time up to 300 s."""
    webhook_max_attempts: int = 12
    """Deliveries of one alarm to one webhook before it is given up (logged): about 37 minutes
    with the default backoff."""
    sms_gateway: SmsGatewayConfig | None = None
    """How wake SMS go out (``[sms_gateway]``); None: the broker wakes no device."""

    @property
    def turn_secret_path(self) -> Path:
        """Where the TURN REST secret lives."""
        return (
            self.turn_secret_file if self.turn_secret_file is not None else self.state_dir / TURN_SECRET_FILE
        )

    @property
    def turn_relay_bind_host(self) -> str:
        """The IP literal relay sockets bind to."""
        return self.turn_relay_host if self.turn_relay_host is not None else self.udp_host

    @property
    def log_level_number(self) -> int:
        """The ``logging`` level number of ``log_level``."""
        return int(logging.getLevelName(self.log_level))


_FIELDS = {f.name: f for f in dataclasses.fields(BrokerConfig)}
_INT_LIMITS = {
    "udp_port": (0, 65535),
    "presence_tcp_port": (0, 65535),
    "https_port": (0, 65535),
    "pairing_max_failures": (1, 1_000_000),
    "pairing_device_max_failures": (1, 1_000_000),
    "http_max_connections_per_address": (1, 1_000_000),
    "login_max_failures": (1, 1_000_000),
    "session_max_per_account": (1, 10_000),
    "turn_udp_port": (0, 65535),
    "turn_tcp_port": (0, 65535),
    "turn_relay_port_min": (0, 65535),
    "turn_relay_port_max": (0, 65535),
    "stun_alternate_port": (0, 65535),
    "stun_rate_per_s": (0, 1_000_000),
    "stun_rate_burst": (1, 1_000_000),
    "turn_max_allocations_per_name": (1, 100_000),
    "webhook_max_attempts": (1, 1000),
}
_DURATION_LIMITS = {
    "token_lifetime_s": (60.0, 10 * 365 * 86400.0),
    "pairing_window_s": (1.0, 30 * 86400.0),
    "pairing_device_window_s": (1.0, 30 * 86400.0),
    "http_body_timeout_s": (1.0, 300.0),
    "http_idle_timeout_s": (1.0, 86400.0),
    "invite_ttl_s": (1.0, 300.0),
    "presence_ticket_lifetime_s": (0.0, 30 * 86400.0),
    "login_window_s": (1.0, 86400.0),
    "dashboard_session_ttl_s": (60.0, 30 * 86400.0),
    "session_ttl_s": (10.0, 86400.0),
    "session_answer_timeout_s": (1.0, 120.0),
    "turn_credential_ttl_s": (60.0, 7 * 86400.0),
    "webhook_retry_initial_s": (0.01, 3600.0),
}


def load_config(path: Path, overrides: Mapping[str, object] | None = None) -> BrokerConfig:
    """Read and check a TOML configuration file; ``overrides`` (from the command line) win.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML, or a key is unknown, of the
            wrong type or out of range; the message names the file and the key.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such configuration file; create it (state_dir is the only required key) "
            "or run with --state-dir DIR"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot read the configuration file ({exc}); check its permissions"
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from exc
    merged: dict[str, object] = dict(data)
    merged.update(overrides or {})
    return config_from_mapping(merged, source=str(path), base_dir=path.parent)


def config_from_mapping(
    data: Mapping[str, object], source: str, base_dir: Path | None = None
) -> BrokerConfig:
    """Check ``data`` (keys as in the TOML file) and build a :class:`BrokerConfig`.

    ``source`` names where the values came from in error messages; relative paths are taken
    from ``base_dir`` (default: the current directory).

    Raises:
        ConfigError: a key is unknown, missing, of the wrong type or out of range.
    """
    base = base_dir if base_dir is not None else Path.cwd()
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        known = ", ".join(_FIELDS)
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; remove it or use one of: {known}")
    if "state_dir" not in data:
        raise ConfigError(
            f"{source}: key 'state_dir' is missing; set it to a writable directory for the registry "
            'and keys, e.g. state_dir = "/var/lib/dvrlink-broker"'
        )
    values: dict[str, object] = {}
    for name, raw in data.items():
        values[name] = _check(name, raw, source, base)
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        raise ConfigError(
            f"{source}: 'tls_cert' and 'tls_key' go together; set both, or neither to use a "
            "self-signed certificate in state_dir"
        )
    _check_turn(values, source)
    _check_stun(values, source)
    return BrokerConfig(**values)  # type: ignore[arg-type]


def _check_turn(values: Mapping[str, object], source: str) -> None:
    low = values.get("turn_relay_port_min", 49152)
    high = values.get("turn_relay_port_max", 65535)
    assert isinstance(low, int) and isinstance(high, int)
    if (low, high) != (0, 0) and not 1 <= low <= high:
        raise ConfigError(
            f"{source}: turn_relay_port_min..turn_relay_port_max is {low}..{high}; use 1 <= min <= max, "
            "or 0 and 0 to let the kernel pick relay ports"
        )
    relay = values.get("turn_relay_host", values.get("udp_host", "0.0.0.0"))
    public = values.get("turn_relay_public_host")
    if (
        public is not None
        and relay is not None
        and ipaddress.ip_address(str(public)).version != ipaddress.ip_address(str(relay)).version
    ):
        raise ConfigError(
            f"{source}: turn_relay_public_host {public} and the relay host {relay} differ in IP "
            "version; use addresses of one family"
        )


def _check_stun(values: Mapping[str, object], source: str) -> None:
    _check_stun6(values, source)
    alternate = values.get("stun_alternate_host")
    if alternate is None:
        return
    primary = ipaddress.ip_address(str(values.get("udp_host", "0.0.0.0")))
    other = ipaddress.ip_address(str(alternate))
    if primary.is_unspecified or other.is_unspecified or primary.version != other.version or primary == other:
        raise ConfigError(
            f"{source}: stun_alternate_host {other} with udp_host {primary}: RFC 5780 needs two "
            "different specific addresses of one IP family; set udp_host to the primary address "
            "(not a wildcard) and stun_alternate_host to a second address of this host"
        )
    port = values.get("stun_alternate_port", 3480)
    taken = {"udp_port": values.get("udp_port", 3478)}
    if values.get("turn_enabled", True):
        taken["turn_udp_port"] = values.get("turn_udp_port", 3479)
    for key, used in taken.items():
        if port != 0 and port == used:
            raise ConfigError(
                f"{source}: stun_alternate_port {port} is also {key}; give the RFC 5780 port its own number"
            )


def _check_stun6(values: Mapping[str, object], source: str) -> None:
    host6, alternate6 = values.get("stun_host6"), values.get("stun_alternate_host6")
    if host6 is None:
        if alternate6 is not None:
            raise ConfigError(
                f"{source}: stun_alternate_host6 {alternate6} needs stun_host6, the primary IPv6 STUN "
                "address; set stun_host6 to an IPv6 address of this host"
            )
        return
    primary6 = ipaddress.ip_address(str(host6))
    if primary6.version != 6 or primary6.is_unspecified:
        raise ConfigError(
            f"{source}: stun_host6 is {host6}; give one specific IPv6 address of this host (udp_host "
            '"::" already answers STUN on both families)'
        )
    if ipaddress.ip_address(str(values.get("udp_host", "0.0.0.0"))).version == 6:
        raise ConfigError(
            f"{source}: stun_host6 {host6} with an IPv6 udp_host: presence and STUN already answer "
            "over IPv6 there; remove stun_host6 (or set udp_host to the IPv4 address)"
        )
    if alternate6 is not None:
        other6 = ipaddress.ip_address(str(alternate6))
        if other6.version != 6 or other6.is_unspecified or other6 == primary6:
            raise ConfigError(
                f"{source}: stun_alternate_host6 {alternate6} with stun_host6 {host6}: RFC 5780 needs "
                "two different specific IPv6 addresses of this host"
            )


def _check(name: str, raw: object, source: str, base: Path) -> object:
    where = f"{source}: key {name!r}"
    if name in ("state_dir", "tls_cert", "tls_key", "turn_secret_file", "fleet_key_file"):
        if not isinstance(raw, str | Path) or not str(raw):
            raise ConfigError(f"{where} must be a path string, got {raw!r}")
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (base / p)
    if name in (
        "udp_host",
        "presence_tcp_host",
        "https_host",
        "turn_relay_host",
        "turn_relay_public_host",
        "stun_alternate_host",
        "stun_host6",
        "stun_alternate_host6",
    ):
        if not isinstance(raw, str):
            raise ConfigError(f'{where} must be an IP literal string such as "0.0.0.0" or "::", got {raw!r}')
        try:
            ipaddress.ip_address(raw)
        except ValueError:
            raise ConfigError(
                f'{where} is {raw!r}, not an IP address; use "0.0.0.0" for all IPv4 interfaces, '
                '"::" for all IPv6 ones, or one local address'
            ) from None
        return raw
    if name in _INT_LIMITS:
        lo, hi = _INT_LIMITS[name]
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{where} must be an integer from {lo} to {hi}, got {raw!r}")
        if not lo <= raw <= hi:
            raise ConfigError(f"{where} is {raw}, out of range; use an integer from {lo} to {hi}")
        return raw
    if name in _DURATION_LIMITS:
        lo_f, hi_f = _DURATION_LIMITS[name]
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(f"{where} must be a number of seconds from {lo_f:g} to {hi_f:g}, got {raw!r}")
        if not lo_f <= raw <= hi_f:
            raise ConfigError(f"{where} is {raw} s, out of range; use {lo_f:g} to {hi_f:g} seconds")
        return float(raw)
    if name == "registry_url":
        if not isinstance(raw, str) or (raw and not raw.startswith(("postgresql://", "postgres://"))):
            raise ConfigError(
                f'{where} must be "" (SQLite in state_dir) or a PostgreSQL URL such as '
                f'"postgresql://dvrlink@db.example.net:5432/dvrlink", got {raw!r}'
            )
        return raw
    if name in ("manifest_only", "turn_enabled", "turn_allow_loopback_peers", "udp_reuse_port"):
        if not isinstance(raw, bool):
            raise ConfigError(f"{where} must be true or false, got {raw!r}")
        return raw
    if name == "server_names":
        if not isinstance(raw, list | tuple) or not all(isinstance(n, str) and n for n in raw):
            raise ConfigError(
                f"{where} must be a list of host names or IP literals, "
                f'e.g. ["broker.example.net"], got {raw!r}'
            )
        return tuple(raw)
    if name == "dashboard_operators":
        if not isinstance(raw, list | tuple) or not all(isinstance(n, str) for n in raw):
            raise ConfigError(f'{where} must be a list of account names, e.g. ["alice"], got {raw!r}')
        for username in raw:
            try:
                validate_username(username)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        return tuple(raw)
    if name == "turn_realm":
        if not isinstance(raw, str) or not raw or len(raw.encode("utf-8")) > 127 or not raw.isprintable():
            raise ConfigError(
                f'{where} must be 1 to 127 bytes of printable text, e.g. "dvrlink", got {raw!r}'
            )
        return raw
    if name == "turn_servers":
        return _turn_servers(raw, where)
    if name == "webhook_allowed_networks":
        if not isinstance(raw, list | tuple) or not all(isinstance(n, str) for n in raw):
            raise ConfigError(f'{where} must be a list of CIDR networks, e.g. ["10.0.0.0/8"], got {raw!r}')
        for network in raw:
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ConfigError(
                    f"{where}: {network!r} is not a CIDR network ({exc}), e.g. 10.0.0.0/8"
                ) from None
        return tuple(raw)
    if name == "redis_url":
        if not isinstance(raw, str) or (raw and not raw.startswith(REDIS_SCHEMES)):
            raise ConfigError(
                f'{where} must be empty (one node) or a Redis URL such as "redis://10.0.0.5:6379/0" '
                f"(schemes: {', '.join(REDIS_SCHEMES)}), got {raw!r}"
            )
        return raw
    if name == "node_id":
        if (
            not isinstance(raw, str)
            or len(raw) > 64
            or not all(ch.isascii() and (ch.isalnum() or ch in ".:_-") for ch in raw)
        ):
            raise ConfigError(
                f'{where} must be up to 64 letters, digits and ".:_-", unique in the fleet, e.g. '
                f'"broker-a" (empty: host name and UDP port), got {raw!r}'
            )
        return raw
    if name == "sms_gateway":
        return _sms_gateway(raw, where, base)
    if name == "log_level":
        if not isinstance(raw, str) or raw.upper() not in LOG_LEVELS:
            raise ConfigError(f"{where} is {raw!r}; use one of {', '.join(LOG_LEVELS)}")
        return raw.upper()
    raise AssertionError(f"no check for configuration key {name}")  # pragma: no cover


def _turn_servers(raw: object, where: str) -> tuple[ExternalTurnServer, ...]:
    example = '[{host = "turn1.example.net", port = 3478, transport = "udp"}]'
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{where} must be a list of tables such as {example}, got {raw!r}")
    servers = []
    for index, entry in enumerate(raw):
        at = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at} must be a table such as {example}, got {entry!r}")
        unknown = sorted(set(entry) - {"host", "port", "transport"})
        if unknown:
            raise ConfigError(f"{at}: unknown key {unknown[0]!r}; use host, port and transport")
        host = entry.get("host")
        if not isinstance(host, str) or not _is_host(host):
            raise ConfigError(f"{at}: host must be a host name or an IP literal, got {host!r}")
        port = entry.get("port", 3478)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{at}: port must be an integer from 1 to 65535, got {port!r}")
        transport = entry.get("transport", "udp")
        if transport not in TURN_TRANSPORTS:
            raise ConfigError(f'{at}: transport must be "udp" or "tcp", got {transport!r}')
        servers.append(ExternalTurnServer(host, port, str(transport)))
    return tuple(servers)


_SMS_FIELDS = {f.name: f for f in dataclasses.fields(SmsGatewayConfig)}


def _sms_gateway(raw: object, where: str, base: Path) -> SmsGatewayConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f'{where} must be a table ([sms_gateway] with backend = "modem" or "http")')
    unknown = sorted(set(raw) - set(_SMS_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; use one of: {', '.join(_SMS_FIELDS)}")
    values: dict[str, object] = {}
    for key, value in raw.items():
        at = f"{where}.{key}"
        field_type = str(_SMS_FIELDS[key].type)
        if key in ("auth_value_file", "basic_password_file"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{at} must be a path string, got {value!r}")
            path = Path(value).expanduser()
            values[key] = path if path.is_absolute() else base / path
        elif key == "headers":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
            ):
                raise ConfigError(f'{at} must be a table of header names and values, e.g. {{Accept = "*/*"}}')
            values[key] = tuple((str(k), str(v)) for k, v in value.items())
        elif field_type == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{at} must be true or false, got {value!r}")
            values[key] = value
        elif field_type in ("int", "float"):
            limits = {
                "modem_baudrate": (300, 4_000_000),
                "timeout_s": (1, 120),
                "wake_hold_s": (5, 600),
                "validity_minutes": (5, 1440),
                "resend_after_s": (5, 3600),
            }[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not limits[0] <= value <= limits[1]
            ):
                raise ConfigError(f"{at} is {value!r}; use a number from {limits[0]} to {limits[1]}")
            if field_type == "int" and not isinstance(value, int):
                raise ConfigError(f"{at} is {value!r}; use a whole number")
            values[key] = float(value) if field_type == "float" else value
        else:
            if not isinstance(value, str):
                raise ConfigError(f"{at} must be a string, got {value!r}")
            values[key] = value
    backend = values.get("backend")
    if backend not in SMS_BACKENDS:
        raise ConfigError(f'{where}: backend is {backend!r}; set backend = "modem" or "http"')
    if backend == "modem" and not values.get("modem_port"):
        raise ConfigError(f'{where}: the modem backend needs modem_port, e.g. modem_port = "/dev/ttyUSB2"')
    if backend == "http":
        url = str(values.get("url", ""))
        if not url.startswith(("https://", "http://")):
            raise ConfigError(
                f"{where}: the http backend needs url, an http(s) URL template such as "
                f'"https://sms.example.net/send?to={{to}}", got {url!r}'
            )
        method = str(values.get("method", "POST")).upper()
        if method not in HTTP_METHODS:
            raise ConfigError(f"{where}.method is {method!r}; use one of {', '.join(HTTP_METHODS)}")
        values["method"] = method
        if "{text}" not in url + str(values.get("body", "")):
            raise ConfigError(
                f"{where}: neither url nor body holds {{text}}, so no wake would be sent; add it"
            )
        if bool(values.get("auth_header")) != ("auth_value_file" in values):
            raise ConfigError(f"{where}: auth_header and auth_value_file go together; set both or neither")
        if bool(values.get("basic_user")) != ("basic_password_file" in values):
            raise ConfigError(f"{where}: basic_user and basic_password_file go together; set both or neither")
    sender = str(values.get("sender", ""))
    if sender and not (sender.startswith("+") and sender[1:].isdigit() and 2 <= len(sender) <= 16):
        raise ConfigError(f'{where}.sender is {sender!r}; write it as +E.164, e.g. "+491701234567"')
    return SmsGatewayConfig(**values)  # type: ignore[arg-type]


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return 0 < len(text) <= 253 and all(ch.isalnum() or ch in "-." for ch in text) and text.isascii()
    return True
