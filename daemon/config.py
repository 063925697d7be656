"""dvrlinkd configuration: one frozen dataclass per TOML section, checked once at start.

Every field carries its unit in its name (``_s`` = seconds) and a default unless it is
required. Unknown sections and keys are errors, so a typo never passes silently. The commented
example is ``dvrlinkd.example.toml`` next to this module.

Relative paths (``state_dir``, ``runtime_dir``) are taken relative to the config file's folder.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvrlink.daemon.board_io_config import parse_board_io
from dvrlink.daemon.broker_nodes import BrokerNode, bracket, parse_node
from dvrlink.daemon.capture_config import parse_capture
from dvrlink.daemon.console_pin import parse_pin_hash
from dvrlink.daemon.disk_watch import MAX_DISKS, DisksConfig
from dvrlink.daemon.errors import ConfigError
from dvrlink.daemon.live_view import LiveConfig
from dvrlink.daemon.services import ServicesConfig, parse_services
from dvrlink.hal.config import CaptureConfig
from dvrlink.hal.gpio import AlarmInputConfig, RelayConfig
from dvrlink.modem import DEFAULT_PROVIDER_DATABASE
from dvrlink.protocol.identity import b64decode_key, validate_serial
from dvrlink.protocol.port_mapping import MappingProtocol
from dvrlink.protocol.port_prediction import SearchBudget
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.store.toml_text import toml_key, toml_value

if TYPE_CHECKING:
    from dvrlink.modem.profiles import ModemProfile

DEFAULT_CONFIG_PATH = Path("/etc/dvrlink/dvrlinkd.toml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PORT_SEARCH_CHOICES = ("auto", "full", "light", "off")
PRESENCE_TRANSPORTS = ("udp", "tcp", "auto")
"""``[presence] transport`` values."""
PRESENCE_MODES = ("always", "sms-wake")
"""``[presence] mode`` values."""
_E164 = re.compile(r"\+[1-9][0-9]{5,14}")
PATH_POLICIES = {
    "all": PathPolicy.ALL,
    "relay_only": PathPolicy.RELAY_ONLY,
    "direct_only": PathPolicy.DIRECT_ONLY,
}
"""``[sessions] policy`` values (as the viewer API spells them)."""
_PLACEHOLDER_KEY = bytes(32)


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """``[device]``: who this device is and where it keeps its files."""

    serial: str
    """Serial number the device registers under (required), e.g. ``DL-0001-0002``."""
    state_dir: Path = Path("/var/lib/dvrlink")
    """Persistent state: device key, pairing secret, paired viewers."""
    runtime_dir: Path = Path("/run/dvrlink")
    """Volatile state (tmpfs): the status file read by ``dvrlinkd status``."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """``[broker]``: the cloud broker's presence endpoint (or a fleet's nodes) and its pinned key."""

    host: str
    """Host name or IP literal of the broker (required, unless ``hosts`` lists the nodes). A
    name with several addresses is one node per address."""
    public_key: bytes
    """Broker's static X25519 public key, raw 32 bytes (base64 in the file; required, pinned).
    All nodes of a fleet hold the same key (the fleet key)."""
    port: int = 3478
    """UDP port of the broker's presence service (of every node in ``hosts`` that names none)."""
    hosts: tuple[BrokerNode, ...] = ()
    """Several broker nodes of one fleet (``"host"`` or ``"host:port"`` in the file), instead of
    ``host``: registration goes to one, and the device moves to the next when it falls silent."""
    tcp_host: str = ""
    """Host of the broker's presence over TCP/TLS, used where UDP is blocked; empty: ``host``
    (with ``hosts``: each node's host)."""
    tcp_port: int = 443
    """TCP port of the broker's presence over TCP/TLS."""
    stun_host6: str = ""
    """IPv6 literal where the broker also answers STUN (its ``stun_host6``; on ``port``), for
    IPv6 server-reflexive candidates and ``dvrlinkd netcheck``'s IPv6 tests when ``host`` is an
    IPv4 literal. Empty: ``host``'s own IPv6 address, if its name has one. One node only."""

    @property
    def stun6(self) -> tuple[str, int] | None:
        """(``stun_host6``, ``port``), or None when not set."""
        return (self.stun_host6, self.port) if self.stun_host6 else None

    @property
    def nodes(self) -> tuple[BrokerNode, ...]:
        """The configured nodes: ``hosts``, or ``host``:``port`` as a list of one."""
        return self.hosts or (BrokerNode(self.host, self.port),)

    @property
    def address(self) -> str:
        """``host:port`` of the first node, for logs and status (IPv6 literals in brackets)."""
        first = self.nodes[0]
        return f"{bracket(first.host)}:{first.port}"

    @property
    def tcp_address(self) -> tuple[str, int]:
        """Where presence over TCP/TLS goes for the first node."""
        return self.tcp_address_of(self.nodes[0])

    def tcp_address_of(self, node: BrokerNode) -> tuple[str, int]:
        """Where presence over TCP/TLS goes for ``node``: (``tcp_host`` or its host, ``tcp_port``)."""
        return (self.tcp_host or node.connect_host, self.tcp_port)


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    """``[presence]``: keepalive timing; the keepalive keeps the NAT mapping open."""

    mode: str = "always"
    """``"always"``: registered all the time, kept reachable by keepalives. ``"sms-wake"``: the
    device registers at start (to report that it sleeps by SMS), then sleeps: no keepalives, no
    IP traffic; an authenticated wake SMS (``[sms_wake]``, docs/sms-wake.md) makes it register
    and serve, and it sleeps again after ``awake_idle_s`` without a session. Needs ``[modem]
    enabled`` and ``transport = "udp"``; keepalive learning and NAT classification are off."""
    awake_idle_s: float = 300.0
    """``sms-wake``: seconds awake without a session before the device sleeps again."""
    transport: str = "auto"
    """``"udp"``, ``"tcp"`` (TLS to ``[broker] tcp_host``:``tcp_port``) or ``"auto"``: UDP, moving
    to TCP when registrations over UDP go unanswered, and back when UDP answers again."""
    fallback_after_failures: int = 2
    """``auto``: registration attempts in a row without any reply before switching transport."""
    fallback_after_s: float = 30.0
    """``auto``: seconds of registering without any reply before switching transport."""
    udp_probe_interval_s: float = 600.0
    """``auto`` on TCP: how often UDP is tried again (a STUN request; jittered by 20 %)."""
    tcp_keepalive_interval_s: float = 300.0
    """Seconds between keepalives over TCP (carrier TCP mappings last minutes to an hour)."""
    keepalive_interval_s: float = 25.0
    """Seconds between keepalives; keep it below the uplink NAT's UDP timeout (30 s on some carriers)."""
    reply_timeout_s: float = 3.0
    """Seconds to wait for a broker reply before retransmitting."""
    retries: int = 2
    """Retransmissions before a keepalive or registration counts as lost."""
    learn_keepalive: bool = True
    """Measure how long the NAT keeps an idle UDP mapping (with probes from extra sockets) and
    keep alive just under it, starting from ``keepalive_interval_s``: the least cellular data that
    keeps the device reachable. False: always ``keepalive_interval_s``."""
    max_keepalive_interval_s: float = 1800.0
    """The longest interval learning may reach."""
    learn_after_s: float = 60.0
    """Seconds after the first registration before learning starts, so its probes do not
    compete with what a device does first (a viewer's session on a slow uplink)."""
    report_min_interval_s: float = 60.0
    """Shortest time between two reports to the broker (signal, network, data used, keepalive);
    a change of the modem's state goes at once. Reports ride on keepalives."""
    classify_nat: bool = True
    """Classify the NAT (RFC 5780 tests against the broker node, when it has an alternate
    address: ``learn_after_s`` after the first registration, again from a new public address, at
    most hourly; typically under 1.5 kB a run) and report its type. False: never."""


@dataclass(frozen=True, slots=True)
class PairingConfig:
    """``[pairing]``: limits on wrong pairing codes."""

    max_failures: int = 10
    """Wrong codes allowed per window; further tries are refused, even with the right code. The
    device's own guard, against a broker that forwards guesses: the broker's limits (3 per account
    and hour, 10 per device and day) bind first, so other accounts' wrong codes cannot make the
    device refuse its owner."""
    window_s: float = 3600.0
    """Sliding window in seconds over which wrong codes are counted."""


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    """``[sessions]``: viewer sessions the device serves (QUIC over a TURN relay or a direct path)."""

    max_sessions: int = 8
    """Sessions open at once, counting those being set up; further offers are answered BUSY."""
    host_addresses: tuple[str, ...] = ()
    """IP literals offered as ICE host candidates; empty: every interface's addresses but loopback
    (aioice never offers loopback, so a loopback-only test or demo lists ``"127.0.0.1"`` here)."""
    policy: PathPolicy = PathPolicy.ALL
    """Paths this device allows (``"all"``, ``"relay_only"``, ``"direct_only"`` in the file); the
    stricter of this and the viewer's policy is used, and opposite ones refuse the session."""
    handshake_timeout_s: float = 30.0
    """Seconds an accepted session may take until the viewer is authenticated; then it is dropped."""
    port_search: SearchBudget = SearchBudget.FULL
    """This device's part in a birthday search for a direct path through a NAT with random ports
    (``"auto"``, ``"full"``, ``"light"``, ``"off"`` in the file). ``auto``: ``light`` (only the
    ~32 kB part, never the ~127 kB probes) when ``[modem] enabled``, else ``full``."""
    port_mapping: tuple[MappingProtocol, ...] = (
        MappingProtocol.PCP,
        MappingProtocol.NATPMP,
        MappingProtocol.UPNP,
    )
    """Ask the home router to map each session's UDP port with these protocols (``["pcp",
    "natpmp", "upnp"]`` in the file; ``[]`` turns port mapping off). A mapped port is offered to
    the viewer as a server-reflexive candidate, so a session can go direct even behind a
    symmetric NAT; it is renewed while the session lasts and deleted when it ends. Without a
    default gateway (a modem's PPP link) nothing is asked."""
    port_mapping_lifetime_s: int = 3600
    """Lifetime asked for each mapping, seconds (renewed at half of what the router grants)."""


@dataclass(frozen=True, slots=True)
class LanConfig:
    """``[lan]``: LAN discovery, so paired viewers on the same LAN reach the device without the
    broker (docs/connectivity.md, "LAN discovery")."""

    discovery: bool = True
    """Answer paired viewers' LAN discovery queries on UDP ``port``. On by default: the device
    answers only a query made with its public key (paired viewers and the broker know it; its
    serial alone is not enough) and tells the LAN nothing else, and a LAN viewer keeps working
    while the cloud or the uplink is down. Turn it off where no UDP port may listen on the LAN."""
    port: int = 5398
    """The UDP port for LAN discovery (viewers use the same one: ``dvrlink --lan-port``)."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: logging."""

    level: str = "INFO"
    """One of DEBUG, INFO, WARNING, ERROR."""


DATA_LINKS = ("auto", "ppp", "ecm")
"""``[modem] data_link`` values: the profile's dial method, or PPP/ECM forced."""
DEFAULT_DHCP_COMMAND = ("udhcpc", "-f", "-i", "{iface}", "-t", "5", "-T", "3", "-n", "-R")
"""BusyBox udhcpc in the foreground on the modem's interface (the Buildroot image's client)."""


@dataclass(frozen=True, slots=True)
class ModemSettings:
    """``[modem]``: the cellular modem. Off unless ``enabled``; everything else has a default that
    suits a recorder with one USB modem, so a SIM and ``enabled = true`` are enough."""

    enabled: bool = False
    """Manage the cellular modem."""
    profile: str = "auto"
    """``"auto"``: find the modem by its USB ID (udev); or a profile name (``quectel-ec25``, ...)."""
    port: str = ""
    """AT port device path; overrides detection (a UART modem, or the emulator's PTY). Empty: detect."""
    data_port: str = ""
    """PPP port when ``port`` is given; empty: the AT port itself (one-port modems)."""
    net_interface: str = ""
    """ECM network interface when ``port`` is given (``usb0``, ``wwan0``); detection finds it otherwise."""
    pin: str = field(default="", repr=False)
    """SIM PIN (4-8 digits); empty: none. A PIN the SIM refuses is not sent again."""
    apn: str = ""
    """APN tried before the provider database's; empty: automatic."""
    apn_username: str = ""
    apn_password: str = field(default="", repr=False)
    apn_auth: str = ""
    """``"pap"``, ``"chap"`` or empty (whatever the network offers)."""
    allow_roaming: bool = False
    """Go online while registered on a visited network (roaming charges)."""
    provider_database: Path = DEFAULT_PROVIDER_DATABASE
    """mobile-broadband-provider-info's serviceproviders.xml (Debian and Buildroot path)."""
    billing_cycle_day: int = 1
    """Day of month (1-31) the SIM's billing cycle starts."""
    monthly_cap_mb: int = 0
    """Data included per billing cycle, megabytes (10^6 bytes); 0: no cap policy."""
    cap_warn_percent: int = 80
    """Share of the cap that logs a warning and shows ``warn`` in status."""
    cap_stop_percent: int = 100
    """Share of the cap at which optional traffic stops (presence and control go on)."""
    data_link: str = "auto"
    """``"auto"`` (the profile's dial method), ``"ppp"`` or ``"ecm"``."""
    pppd: tuple[str, ...] = ("/usr/sbin/pppd",)
    """pppd program (a path, or a list: program and leading arguments)."""
    chat: tuple[str, ...] = ("/usr/sbin/chat",)
    """chat program, as ``pppd``."""
    dhcp_command: tuple[str, ...] = DEFAULT_DHCP_COMMAND
    """DHCP client for ECM modems; ``{iface}`` becomes the interface name."""
    reboots_per_day: int = 2
    """Board reboots the recovery ladder may take in any 24 h (only with ``board_reboot``)."""
    usb_reset: bool = True
    """Recovery may reset the modem's USB device (sysfs ``authorized`` 0 then 1)."""
    power_cycle_command: tuple[str, ...] = ()
    """Board hook that power-cycles the modem through its GPIO; empty: that step is off."""
    board_reboot: bool = False
    """Recovery may reboot the board (the last step, at most ``reboots_per_day``)."""
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    """How the board is rebooted when ``board_reboot`` is on."""
    probe_host: str = ""
    """Data-path health probe target (STUN); empty: the broker's host."""
    probe_port: int = 0
    """Its UDP port; 0: the broker's presence port (which answers STUN)."""


CONSOLE_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1500000)
"""``[console] baud`` values."""


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """``[console]``: the installer's serial console (docs/console.md). Off unless ``port``."""

    port: str = ""
    """TTY the console answers on, e.g. ``/dev/ttyS1`` (a UART no getty or kernel console uses);
    empty: no console."""
    baud: int = 115200
    """Its speed (8N1)."""
    pin_hash: str = field(default="", repr=False)
    """The installer PIN's scrypt hash, as ``dvrlinkd hash-pin`` prints it (never the PIN);
    empty: no PIN, the console is open to whoever holds the cable."""
    pin_max_failures: int = 5
    """Wrong PINs allowed per ``pin_window_s``; then no PIN is checked until the oldest leaves it."""
    pin_window_s: float = 300.0
    """Sliding window in seconds over which wrong PINs are counted."""
    idle_lock_s: float = 600.0
    """With a PIN: seconds without input after which the console locks again."""


@dataclass(frozen=True, slots=True)
class AlarmsConfig:
    """``[alarms]``: the device's alarm queue (``daemon/alarms.py``)."""

    queue_size: int = 1000
    """Alarms kept while the broker has not acknowledged them; when full, the oldest is dropped."""
    retransmit_initial_s: float = 1.0
    """Seconds to wait for the broker's acknowledgement before sending again; doubles each time."""
    retransmit_max_s: float = 30.0
    """Longest wait between two sends of the same alarms."""
    snapshots: bool = False
    """A motion alarm carries a JPEG of its channel (at most 16 KiB: about 3 s of a GPRS uplink)."""


SUPERVISOR_MODEMS = ("auto", "sim800", "quectel-ec2x-uc20")
"""``[board] supervisor_modem`` values: the supervisor's PWRKEY timing for the modem."""
SUPERVISOR_MODEM_OF_PROFILE = {
    "simcom-sim800": "sim800",
    "quectel-ec25": "quectel-ec2x-uc20",
    "quectel-uc20": "quectel-ec2x-uc20",
}
"""The supervisor's timing for each ``[modem] profile`` that has one (``supervisor_modem = "auto"``)."""


@dataclass(frozen=True, slots=True)
class BoardConfig:
    """``[board]``: the board's supervisor MCU (docs/supervisor.md). Off unless ``supervisor``."""

    supervisor: str = ""
    """The supervisor's UART, e.g. ``/dev/ttyS2``; empty: the board has none."""
    supervisor_baud: int = 115200
    """Its speed (8N1); the firmware's is 115200."""
    supervisor_heartbeat_s: float = 10.0
    """Seconds between heartbeats when no systemd watchdog is set (with ``WatchdogSec`` the daemon
    sends one at every watchdog ping)."""
    supervisor_timeout_s: int = 0
    """Heartbeat timeout the supervisor is told at each start (10-3600 s): no heartbeat for this
    long and it resets the board; 0: keep the firmware's (120 s)."""
    supervisor_modem: str = "auto"
    """The supervisor's power-cycle timing: ``"sim800"`` (PWRKEY low 1.2 s), ``"quectel-ec2x-uc20"``
    (PWRKEY low 0.7 s), or ``"auto"``: from the modem's profile."""
    supervisor_power_cut: bool = False
    """The board has the supervisor's modem power switch (a MOSFET): a power cycle cuts the
    modem's supply for 5 s, then presses PWRKEY."""
    low_supply_v: float = 0.0
    """Supply voltage below which the supervisor's reading raises a BrownOut alarm (10.5 for a
    12 V lead-acid battery); 0: no threshold (a power-on of the supervisor still raises one)."""


@dataclass(frozen=True, slots=True)
class SmsWakeConfig:
    """``[sms_wake]``: who may wake the device by SMS (``[presence] mode = "sms-wake"``)."""

    allowed_senders: tuple[str, ...] = ()
    """The broker's SMS numbers, +E.164 (the modem's SIM, or the provider's sender)."""
    any_sender: bool = False
    """Accept a wake from any number (the MAC still holds): for providers whose sender varies."""
    country_code: str = ""
    """The country code (``"49"``) to read national sender numbers with; empty: none."""
    window: int = 64
    """Counters below the highest seen that are still accepted once (SMS arrive out of order)."""
    sweep_interval_s: float = 600.0
    """Seconds between full reads of the SIM's message store, besides the modem's indications."""
    own_number: str = ""
    """This SIM's number (+E.164), reported to the broker so it knows where to send the wake;
    empty: the operator sets it on the broker (``dvrlink-broker device sms SERIAL --number``)."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The whole dvrlinkd configuration."""

    device: DeviceConfig
    broker: BrokerConfig
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    log: LogConfig = field(default_factory=LogConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    modem: ModemSettings = field(default_factory=ModemSettings)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    capture: tuple[CaptureConfig, ...] = ()
    """``[[capture]]``: the board's capture devices (none: no HAL)."""
    live: LiveConfig = field(default_factory=LiveConfig)
    """``[live]``: the capture channels as RTSP streams for sessions (only with capture devices)."""
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    """``[alarms]``: the queue of alarms for the broker."""
    disks: DisksConfig = field(default_factory=DisksConfig)
    """``[disks]``: the recording disks watched for errors (none: not watched)."""
    alarm_inputs: tuple[AlarmInputConfig, ...] = ()
    """``[[alarm_input]]``: the board's GPIO alarm inputs (docs/hal.md, "Board I/O")."""
    relays: tuple[RelayConfig, ...] = ()
    """``[[relay]]``: the board's GPIO relay outputs."""
    sms_wake: SmsWakeConfig = field(default_factory=SmsWakeConfig)
    """``[sms_wake]``: who may wake the device by SMS."""
    board: BoardConfig = field(default_factory=BoardConfig)
    """``[board]``: the board's supervisor MCU (none: no heartbeats, the modem's GPIO hook)."""
    lan: LanConfig = field(default_factory=LanConfig)
    """``[lan]``: LAN discovery without the broker."""
    source: Path = DEFAULT_CONFIG_PATH
    """The file this was loaded from (for messages)."""


def load_config(path: Path) -> DaemonConfig:
    """Read and check the TOML config file at ``path``.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or a section/key is unknown,
            missing or has a bad value; the message names the file, the key, what was seen and
            what to do.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; create it from dvrlinkd.example.toml "
            "or pass another file with --config (or $DVRLINKD_CONFIG)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the config file ({exc.strerror}); check its permissions"
        ) from exc
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc}); save the file as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax there") from exc
    return parse_config(document, path)


def parse_config(document: Mapping[str, object], source: Path) -> DaemonConfig:
    """Check a parsed TOML document; ``source`` names it in messages and anchors relative paths.

    Raises:
        ConfigError: as for ``load_config``.
    """
    sections = (
        "device",
        "broker",
        "presence",
        "pairing",
        "log",
        "services",
        "sessions",
        "modem",
        "console",
        "capture",
        "live",
        "alarms",
        "disks",
        "alarm_input",
        "relay",
        "sms_wake",
        "board",
        "lan",
    )
    _reject_unknown(source, "", document.keys(), sections)
    base = source.parent.absolute()

    dev = _Table(source, "device", document, DeviceConfig)
    device = DeviceConfig(
        serial=dev.serial("serial"),
        state_dir=dev.path("state_dir", base),
        runtime_dir=dev.path("runtime_dir", base),
    )

    brk = _Table(source, "broker", document, BrokerConfig)
    broker = _parse_broker(brk)

    pre = _Table(source, "presence", document, PresenceConfig)
    presence = PresenceConfig(
        mode=pre.choice_lower("mode", PRESENCE_MODES),
        awake_idle_s=pre.number("awake_idle_s", 1.0, 86400.0),
        transport=pre.choice_lower("transport", PRESENCE_TRANSPORTS),
        fallback_after_failures=pre.integer("fallback_after_failures", 1, 100),
        fallback_after_s=pre.number("fallback_after_s", 1.0, 3600.0),
        udp_probe_interval_s=pre.number("udp_probe_interval_s", 1.0, 86400.0),
        tcp_keepalive_interval_s=pre.number("tcp_keepalive_interval_s", 1.0, 3600.0),
        keepalive_interval_s=pre.number("keepalive_interval_s", 1.0, 3600.0),
        reply_timeout_s=pre.number("reply_timeout_s", 0.1, 60.0),
        retries=pre.integer("retries", 0, 10),
        learn_keepalive=pre.boolean("learn_keepalive"),
        max_keepalive_interval_s=pre.number("max_keepalive_interval_s", 10.0, 3600.0),
        learn_after_s=pre.number("learn_after_s", 0.0, 86400.0),
        report_min_interval_s=pre.number("report_min_interval_s", 1.0, 86400.0),
        classify_nat=pre.boolean("classify_nat"),
    )
    if presence.reply_timeout_s * (presence.retries + 1) >= presence.keepalive_interval_s:
        raise ConfigError(
            f"{source}: [presence] reply_timeout_s = {presence.reply_timeout_s:g} with retries = "
            f"{presence.retries} waits {presence.reply_timeout_s * (presence.retries + 1):g} s, not less "
            f"than keepalive_interval_s = {presence.keepalive_interval_s:g}; lower reply_timeout_s or "
            "retries, or raise keepalive_interval_s"
        )

    _check_tcp_keepalive(presence, source)

    pai = _Table(source, "pairing", document, PairingConfig)
    pairing = PairingConfig(
        max_failures=pai.integer("max_failures", 1, 1000),
        window_s=pai.number("window_s", 1.0, 30 * 86400.0),
    )

    lg = _Table(source, "log", document, LogConfig)
    log = LogConfig(level=lg.choice("level", LOG_LEVELS))

    services = parse_services(document, source)

    modem = _parse_modem(_Table(source, "modem", document, ModemSettings), base)
    ses = _Table(source, "sessions", document, SessionsConfig)
    sessions = SessionsConfig(
        max_sessions=ses.integer("max_sessions", 1, 256),
        host_addresses=ses.ip_list("host_addresses"),
        policy=ses.policy("policy"),
        handshake_timeout_s=ses.number("handshake_timeout_s", 1.0, 600.0),
        port_search=ses.search_budget("port_search", metered=modem.enabled),
        port_mapping=ses.mapping_protocols("port_mapping"),
        port_mapping_lifetime_s=ses.integer("port_mapping_lifetime_s", 120, 86400),
    )
    console = _parse_console(_Table(source, "console", document, ConsoleConfig))
    capture = parse_capture(document, source)
    liv = _Table(source, "live", document, LiveConfig)
    live = LiveConfig(
        port=liv.integer("port", 0, 65535),
        encoder=liv.command("encoder"),
        main_kbit=liv.integer("main_kbit", 64, 20000),
        sub_kbit=liv.integer("sub_kbit", 16, 4000),
        sub_width=liv.integer("sub_width", 160, 1920),
        idle_stop_s=liv.number("idle_stop_s", 0.0, 3600.0),
        stall_after_s=liv.number("stall_after_s", 1.0, 600.0),
    )
    alarms = parse_alarms(document, source)
    disks = parse_disks(document, source)
    alarm_inputs, relays = parse_board_io(document, source)
    sms_wake = _parse_sms_wake(_Table(source, "sms_wake", document, SmsWakeConfig))
    if presence.mode == "sms-wake":
        presence = _check_sms_wake(presence, modem, sms_wake, source)
    board = parse_board(document, source, modem)
    ln = _Table(source, "lan", document, LanConfig)
    lan = LanConfig(discovery=ln.boolean("discovery"), port=ln.integer("port", 1, 65535))
    return DaemonConfig(
        device,
        broker,
        presence,
        pairing,
        log,
        services,
        sessions,
        modem,
        console,
        capture,
        live,
        alarms,
        disks,
        alarm_inputs,
        relays,
        sms_wake,
        board,
        lan,
        source,
    )


def _parse_sms_wake(sms: _Table) -> SmsWakeConfig:
    """The ``[sms_wake]`` section; each bad value names the key and what to write."""
    senders = sms._get("allowed_senders")
    example = 'expected a list of numbers as +E.164, e.g. ["+491701234567"]'
    if not isinstance(senders, list | tuple) or not all(isinstance(n, str) for n in senders):
        raise sms.error("allowed_senders", senders, example)
    for number in senders:
        if not _E164.fullmatch(number):
            raise sms.error("allowed_senders", senders, f"{toml_value(number)} is not +E.164; {example}")
    country = sms.string("country_code").strip().lstrip("+")
    if country and not (country.isdigit() and 1 <= len(country) <= 3):
        raise sms.error("country_code", country, 'expected 1 to 3 digits, e.g. "49", or "" for none')
    own = sms.string("own_number").strip()
    if own and not _E164.fullmatch(own):
        raise sms.error("own_number", own, 'expected this SIM\'s number as +E.164, e.g. "+491701234567"')
    return SmsWakeConfig(
        allowed_senders=tuple(senders),
        any_sender=sms.boolean("any_sender"),
        country_code=country,
        window=sms.integer("window", 1, 1024),
        sweep_interval_s=sms.number("sweep_interval_s", 10.0, 86400.0),
        own_number=own,
    )


def _check_sms_wake(
    presence: PresenceConfig, modem: ModemSettings, sms_wake: SmsWakeConfig, source: Path
) -> PresenceConfig:
    """``[presence] mode = "sms-wake"`` needs a modem, UDP presence and a sender to trust; it
    turns keepalive learning and NAT classification off (a sleeping device keeps no mapping)."""
    if not modem.enabled:
        raise ConfigError(
            f'{source}: [presence] mode = "sms-wake" needs the modem, which receives the wake SMS; '
            'set [modem] enabled = true, or mode = "always"'
        )
    if presence.transport != "udp":
        raise ConfigError(
            f'{source}: [presence] mode = "sms-wake" with transport = "{presence.transport}": a sleeping '
            'device keeps no TCP connection; set transport = "udp"'
        )
    if not sms_wake.allowed_senders and not sms_wake.any_sender:
        raise ConfigError(
            f'{source}: [presence] mode = "sms-wake" but [sms_wake] allows no sender: set '
            'allowed_senders = ["+E164 of the broker\'s SMS number"] (or any_sender = true)'
        )
    return replace(presence, learn_keepalive=False, classify_nat=False)


def _parse_broker(brk: _Table) -> BrokerConfig:
    port = brk.integer("port", 1, 65535)
    hosts = brk.node_list("hosts", port)
    host = brk.string("host").strip() if brk.has("host") else ""
    if hosts and host:
        raise brk.error(
            "hosts",
            [n.label for n in hosts],
            "give host (one node) or hosts (several), not both; move the host into the hosts list",
        )
    if not hosts and not host:
        raise ConfigError(
            f'{brk.source}: [broker] host is missing; add host = "broker.example.net" (one node) or '
            'hosts = ["node1.example.net", "node2.example.net:3478"] (a fleet; see dvrlinkd.example.toml)'
        )
    tcp_host = brk.host("tcp_host") if brk.string("tcp_host").strip() else ""
    if tcp_host and len(hosts) > 1:
        raise brk.error(
            "tcp_host",
            tcp_host,
            "names one node, but hosts lists several; remove tcp_host: presence "
            "over TCP/TLS then goes to each node's host at tcp_port",
        )
    stun_host6 = brk.string("stun_host6").strip()
    if stun_host6:
        try:
            literal = ipaddress.ip_address(stun_host6)
        except ValueError:
            literal = None
        if literal is None or literal.version != 6 or literal.is_unspecified:
            raise brk.error(
                "stun_host6",
                stun_host6,
                "expected the broker's IPv6 address (its stun_host6), e.g. 2001:db8::10",
            )
        if len(hosts) > 1:
            raise brk.error(
                "stun_host6",
                stun_host6,
                "names one node, but hosts lists several; remove it: each node's host name then gives "
                "its IPv6 address",
            )
    return BrokerConfig(
        host=brk.host("host") if host else hosts[0].host,
        port=port if host else hosts[0].port,
        hosts=hosts,
        tcp_host=tcp_host,
        stun_host6=stun_host6,
        tcp_port=brk.integer("tcp_port", 1, 65535),
        public_key=brk.key("public_key"),
    )


def _parse_console(con: _Table) -> ConsoleConfig:
    """The ``[console]`` section; a bad PIN hash is reported without showing it."""
    port = con.string("port").strip()
    if port and not port.startswith("/"):
        raise con.error(
            "port", port, "expected an absolute device path such as /dev/ttyS1 (or empty: no console)"
        )
    baud = con.integer("baud", 1200, 1500000)
    if baud not in CONSOLE_BAUDS:
        raise con.error("baud", baud, f"expected one of {', '.join(map(str, CONSOLE_BAUDS))}")
    pin_hash = con.string("pin_hash").strip()
    if pin_hash:
        try:
            parse_pin_hash(pin_hash)
        except ValueError as exc:
            raise con.error(
                "pin_hash",
                "(hidden)",
                f"{exc}; make it with `dvrlinkd hash-pin` (it prints the line to paste)",
            ) from None
    return ConsoleConfig(
        port=port,
        baud=baud,
        pin_hash=pin_hash,
        pin_max_failures=con.integer("pin_max_failures", 1, 100),
        pin_window_s=con.number("pin_window_s", 1.0, 86400.0),
        idle_lock_s=con.number("idle_lock_s", 10.0, 86400.0),
    )


def _check_tcp_keepalive(presence: PresenceConfig, source: Path) -> None:
    wait = presence.reply_timeout_s * (presence.retries + 1)
    if presence.transport != "udp" and wait >= presence.tcp_keepalive_interval_s:
        raise ConfigError(
            f"{source}: [presence] reply_timeout_s = {presence.reply_timeout_s:g} with retries = "
            f"{presence.retries} waits {wait:g} s, not less than tcp_keepalive_interval_s = "
            f"{presence.tcp_keepalive_interval_s:g}; raise tcp_keepalive_interval_s"
        )


def _profiles() -> Mapping[str, ModemProfile]:
    from dvrlink.modem.profiles import PROFILES  # noqa: PLC0415  (only for a section that names one)

    return PROFILES


def _auth_methods() -> frozenset[str]:
    from dvrlink.modem.apn import AUTH_METHODS  # noqa: PLC0415  (only for a section that sets one)

    return AUTH_METHODS


def _parse_modem(mod: _Table, base: Path) -> ModemSettings:
    """The ``[modem]`` section; each bad value names the key and what to write."""
    # The modem stack's tables load only for a section that names a profile or an auth method:
    # a daemon without a modem never imports them (docs/benchmarks.md, section 4).
    profile = mod.string("profile").strip().lower()
    profiles = _profiles() if profile != "auto" else {}
    if profile != "auto" and profile not in profiles:
        raise mod.error("profile", profile, f'expected "auto" or one of {", ".join(sorted(profiles))}')
    pin = mod.string("pin").strip()
    if pin and not (pin.isdigit() and 4 <= len(pin) <= 8):
        raise mod.error("pin", "****", "a SIM PIN is 4 to 8 digits; leave it empty if the SIM has none")
    auth = mod.string("apn_auth").strip().lower()
    if auth and auth not in _auth_methods():
        raise mod.error("apn_auth", auth, 'expected "pap", "chap" or "" (whatever the network offers)')
    apn = mod.string("apn").strip()
    for key, value in (("apn", apn), ("apn_username", mod.string("apn_username"))):
        if any(ch in value for ch in '"\r\n'):
            raise mod.error(key, value, "must not hold quotes or line breaks; copy it from the carrier")
    if (mod.string("apn_username") or mod.string("apn_password")) and not apn:
        raise mod.error("apn_username", mod.string("apn_username"), "credentials need an APN: set apn too")
    port = mod.string("port").strip()
    data_port = mod.string("data_port").strip()
    for key, value in (("port", port), ("data_port", data_port)):
        if value and not value.startswith("/"):
            raise mod.error(key, value, "expected an absolute device path such as /dev/ttyUSB2")
    if data_port and not port:
        raise mod.error("data_port", data_port, "needs port as well (or leave both empty to detect)")
    net_interface = mod.string("net_interface").strip()
    if net_interface and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", net_interface):
        raise mod.error("net_interface", net_interface, "expected a network interface name such as usb0")
    if port and profile == "auto":
        raise mod.error(
            "port", port, 'with an explicit port, set profile too (e.g. "generic" or "quectel-ec25")'
        )
    data_link = mod.string("data_link").strip().lower()
    if data_link not in DATA_LINKS:
        raise mod.error("data_link", data_link, f"expected one of {', '.join(DATA_LINKS)}")
    if data_link == "ecm" and profile != "auto" and profiles[profile].ecm_connect is None:
        raise mod.error(
            "data_link", data_link, f'profile {profile} has no ECM call command: use "ppp" or "auto"'
        )
    dhcp_command = mod.command("dhcp_command")
    if not any("{iface}" in word for word in dhcp_command):
        raise mod.error(
            "dhcp_command", list(dhcp_command), 'pass the interface as "{iface}", e.g. "-i", "{iface}"'
        )
    warn = mod.integer("cap_warn_percent", 1, 100)
    stop = mod.integer("cap_stop_percent", 1, 100)
    if warn > stop:
        raise mod.error("cap_warn_percent", warn, f"must not be above cap_stop_percent ({stop})")
    probe_host = mod.string("probe_host").strip()
    if probe_host:
        probe_host = mod.host("probe_host")
    return ModemSettings(
        enabled=mod.boolean("enabled"),
        profile=profile,
        port=port,
        data_port=data_port,
        net_interface=net_interface,
        pin=pin,
        apn=apn,
        apn_username=mod.string("apn_username"),
        apn_password=mod.string("apn_password"),
        apn_auth=auth,
        allow_roaming=mod.boolean("allow_roaming"),
        provider_database=mod.file_path("provider_database", base),
        billing_cycle_day=mod.integer("billing_cycle_day", 1, 31),
        monthly_cap_mb=mod.integer("monthly_cap_mb", 0, 10_000_000),
        cap_warn_percent=warn,
        cap_stop_percent=stop,
        data_link=data_link,
        pppd=mod.command("pppd"),
        chat=mod.command("chat"),
        dhcp_command=dhcp_command,
        reboots_per_day=mod.integer("reboots_per_day", 0, 24),
        usb_reset=mod.boolean("usb_reset"),
        power_cycle_command=mod.command("power_cycle_command", allow_empty=True),
        board_reboot=mod.boolean("board_reboot"),
        reboot_command=mod.command("reboot_command"),
        probe_host=probe_host,
        probe_port=mod.integer("probe_port", 0, 65535),
    )


def _reject_unknown(source: Path, where: str, keys: Iterable[str], known: tuple[str, ...]) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            if close:
                hint = f"did you mean {close[0]}? " if where else f"did you mean [{close[0]}]? "
            else:
                hint = ""
            what = f"unknown key {toml_key(key)} in [{where}]" if where else f"unknown section [{key}]"
            raise ConfigError(
                f"{source}: {what}; {hint}known {'keys' if where else 'sections'}: {', '.join(known)}"
            )


_REQUIRED: Any = object()


class _Table:
    """One TOML section being read: rejects unknown keys, then typed getters with defaults."""

    def __init__(self, source: Path, name: str, document: Mapping[str, object], schema: type) -> None:
        # Defaults come from the dataclass (a slotted class hides them from attribute access).
        self._defaults: dict[str, Any] = {
            f.name: _REQUIRED if f.default is MISSING else f.default for f in fields(schema)
        }
        self._source = source
        self._name = name
        raw = document.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{source}: {name} must be a section [{name}], got {toml_value(raw)}; write it as [{name}]"
            )
        # Unknown keys first, so a typo in a required key is reported as the typo.
        _reject_unknown(source, name, raw, tuple(self._defaults))
        self._data: dict[str, object] = raw

    def _error(self, key: str, seen: object, problem: str) -> ConfigError:
        return ConfigError(f"{self._source}: [{self._name}] {key} = {toml_value(seen)}: {problem}")

    def error(self, key: str, seen: object, problem: str) -> ConfigError:
        """A ConfigError naming this section's ``key``, what was seen and what to do."""
        return self._error(key, seen, problem)

    def _get(self, key: str) -> object:
        if key in self._data:
            return self._data[key]
        default = self._defaults[key]
        if default is _REQUIRED:
            raise ConfigError(
                f"{self._source}: [{self._name}] {key} is missing; add it (see dvrlinkd.example.toml)"
            )
        return default

    def string(self, key: str) -> str:
        value = self._get(key)
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str):
            raise self._error(key, value, "expected a string in double quotes")
        return value

    def serial(self, key: str) -> str:
        value = self.string(key)
        try:
            return validate_serial(value)
        except ValueError as exc:
            raise self._error(key, value, f"{exc}; copy it from the device label") from None

    def host(self, key: str) -> str:
        value = self.string(key).strip()
        if not value or any(ch.isspace() or ch in "/[]" for ch in value):
            raise self._error(key, value, "expected a host name or IP address without scheme, port or path")
        return value

    def has(self, key: str) -> bool:
        """True if the file sets ``key`` in this section."""
        return key in self._data

    @property
    def source(self) -> Path:
        """The file being read."""
        return self._source

    def node_list(self, key: str, default_port: int) -> tuple[BrokerNode, ...]:
        """A list of broker nodes, ``"host"`` or ``"host:port"`` (``default_port`` when none)."""
        value = self._get(key)
        example = (
            'expected a list of "host" or "host:port" strings, '
            'e.g. ["node1.example.net", "node2.example.net:3478"]'
        )
        if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
            raise self._error(key, value, example)
        nodes: list[BrokerNode] = []
        for item in value:
            try:
                node = parse_node(item, default_port)
            except ValueError as exc:
                raise self._error(key, value, str(exc)) from None
            if node in nodes:
                raise self._error(key, value, f"{item!r} is listed twice; list each node once")
            nodes.append(node)
        return tuple(nodes)

    def path(self, key: str, base: Path) -> Path:
        value = self.string(key)
        if not value:
            raise self._error(key, value, "expected a folder path")
        path = Path(value)
        return path if path.is_absolute() else base / path

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._error(key, value, "expected true or false (without quotes)")
        return value

    def file_path(self, key: str, base: Path) -> Path:
        value = self.string(key).strip()
        if not value:
            raise self._error(key, value, "expected a file path")
        path = Path(value)
        return path if path.is_absolute() else base / path

    def command(self, key: str, *, allow_empty: bool = False) -> tuple[str, ...]:
        value = self._get(key)
        example = (
            'expected a program path, or a list of strings (program and arguments), e.g. ["/usr/sbin/pppd"]'
        )
        if isinstance(value, str):
            value = [value] if value.strip() else []
        if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) and w for w in value):
            raise self._error(key, value, example)
        if not value and not allow_empty:
            raise self._error(key, value, example)
        return tuple(value)

    def key(self, key: str) -> bytes:
        value = self.string(key)
        try:
            raw = b64decode_key(value.strip(), "the key")
        except ValueError as exc:
            raise self._error(
                key, value, f"{exc}; copy the broker's base64 X25519 public key (dvrlink-broker prints it)"
            ) from None
        if raw == _PLACEHOLDER_KEY:
            raise self._error(
                key, value, "this is the example's placeholder; put your broker's public key here"
            )
        return raw

    def integer(self, key: str, low: int, high: int) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._error(key, value, f"expected a whole number from {low} to {high}")
        if not low <= value <= high:
            raise self._error(key, value, f"out of range; use a value from {low} to {high}")
        return value

    def number(self, key: str, low: float, high: float) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._error(key, value, f"expected a number of seconds from {low:g} to {high:g}")
        if not low <= value <= high:
            raise self._error(key, value, f"out of range; use a value from {low:g} to {high:g}")
        return float(value)

    def ip_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        example = 'expected a list of IP addresses, e.g. ["192.168.1.20"]'
        if not isinstance(value, (list, tuple)):
            raise self._error(key, value, example)
        out: list[str] = []
        for item in value:
            try:
                ip = ipaddress.ip_address(item.strip() if isinstance(item, str) else item)
            except ValueError:
                raise self._error(key, value, f"{toml_value(item)} is not an IP address; {example}") from None
            if ip.is_unspecified or ip.is_multicast:
                problem = f"{item} cannot be a host candidate; name an interface's address"
                raise self._error(key, value, problem)
            out.append(str(ip))
        return tuple(out)

    def policy(self, key: str) -> PathPolicy:
        value = self._get(key)
        if isinstance(value, PathPolicy):
            return value
        if not isinstance(value, str) or value.strip().lower() not in PATH_POLICIES:
            raise self._error(key, value, f"expected one of {', '.join(PATH_POLICIES)}")
        return PATH_POLICIES[value.strip().lower()]

    def search_budget(self, key: str, metered: bool) -> SearchBudget:
        """``auto`` (also when absent): ``light`` on a metered link, else ``full``."""
        value = self._get(key)
        text = "auto" if isinstance(value, SearchBudget) else str(value).strip().lower()
        if text not in PORT_SEARCH_CHOICES:
            raise self._error(key, value, f"expected one of {', '.join(PORT_SEARCH_CHOICES)}")
        if text == "auto":
            return SearchBudget.LIGHT if metered else SearchBudget.FULL
        return SearchBudget(text)

    def mapping_protocols(self, key: str) -> tuple[MappingProtocol, ...]:
        value = self._get(key)
        names = ", ".join(f'"{p.value}"' for p in MappingProtocol)
        example = f"expected a list of port mapping protocols out of {names} (or [] for none)"
        if not isinstance(value, (list, tuple)):
            raise self._error(key, value, example)
        out: list[MappingProtocol] = []
        for item in value:
            if isinstance(item, MappingProtocol):
                out.append(item)
                continue
            try:
                out.append(MappingProtocol(str(item).strip().lower()))
            except ValueError:
                raise self._error(key, value, f"{toml_value(item)} is not one; {example}") from None
        return tuple(dict.fromkeys(out))

    def choice_lower(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.string(key).strip().lower()
        if value not in choices:
            raise self._error(key, value, f"expected one of {', '.join(choices)}")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.string(key)
        if value.upper() not in choices:
            raise self._error(key, value, f"expected one of {', '.join(choices)}")
        return value.upper()


def describe(config: DaemonConfig) -> str:
    """One line for ``--check-config`` and the start-up log."""
    return (
        f"{config.source}: serial {config.device.serial}, {_describe_broker(config.broker)}, "
        f"state {config.device.state_dir}, runtime {config.device.runtime_dir}, "
        f"keepalive {config.presence.keepalive_interval_s:g} s, "
        f"forward {', '.join(f'{t.host}:{t.port}' for t in config.services.forward_allow) or 'nothing'}, "
        f"sessions at most {config.sessions.max_sessions} ({config.sessions.policy.name.lower()} paths), "
        f"modem {_describe_modem(config.modem)}, "
        f"console {_describe_console(config.console)}"
        + (f", supervisor on {config.board.supervisor}" if config.board.supervisor else "")
    )


def _describe_broker(broker: BrokerConfig) -> str:
    if len(broker.nodes) == 1:
        return f"broker {broker.address}"
    labels = ", ".join(f"{bracket(n.host)}:{n.port}" for n in broker.nodes)
    return f"broker nodes {labels} (one fleet key)"


def _describe_console(console: ConsoleConfig) -> str:
    if not console.port:
        return "off"
    return f"on {console.port} at {console.baud} baud{', PIN' if console.pin_hash else ''}"


def _describe_modem(modem: ModemSettings) -> str:
    if not modem.enabled:
        return "off"
    where = modem.port or "detected by USB ID"
    return f"{modem.profile} on {where}, data link {modem.data_link}, APN {modem.apn or 'automatic'}"


# -- [board] -----------------------------------------------------------------------------------


def parse_board(document: Mapping[str, object], source: Path, modem: ModemSettings) -> BoardConfig:
    """The ``[board]`` section (absent: no supervisor).

    Raises:
        ConfigError: an unknown key, a value of the wrong type or out of range, a supervisor
            port that is not a device path, or a modem whose power-cycle timing the supervisor
            cannot tell (named, with what to set).
    """
    table = _Table(source, "board", document, BoardConfig)
    port = table.string("supervisor").strip()
    if port and (not port.startswith("/") or port.endswith("/")):
        raise table.error("supervisor", port, 'expected the UART device path, e.g. "/dev/ttyS2"')
    timeout = table.integer("supervisor_timeout_s", 0, 3600)
    if 0 < timeout < 10:
        raise table.error("supervisor_timeout_s", timeout, "the supervisor takes 10-3600 s; or 0 for its own")
    heartbeat = table.number("supervisor_heartbeat_s", 1.0, 600.0)
    if timeout and heartbeat * 3 > timeout:
        raise table.error(
            "supervisor_heartbeat_s",
            heartbeat,
            f"at most a third of supervisor_timeout_s ({timeout} s), so one lost heartbeat never "
            "resets the board; lower it or raise the timeout",
        )
    baud = table.integer("supervisor_baud", 1200, 1_500_000)
    if baud not in CONSOLE_BAUDS:
        raise table.error("supervisor_baud", baud, f"expected one of {', '.join(map(str, CONSOLE_BAUDS))}")
    choice = table.choice_lower("supervisor_modem", SUPERVISOR_MODEMS)
    if (
        port
        and choice == "auto"
        and modem.enabled
        and modem.profile != "auto"
        and modem.profile not in SUPERVISOR_MODEM_OF_PROFILE
    ):
        raise table.error(
            "supervisor_modem",
            choice,
            f"the supervisor has no power-cycle timing for [modem] profile {modem.profile}; set "
            'supervisor_modem = "sim800" or "quectel-ec2x-uc20" to the closest PWRKEY timing',
        )
    low = table.number("low_supply_v", 0.0, 60.0)
    return BoardConfig(
        supervisor=port,
        supervisor_baud=baud,
        supervisor_heartbeat_s=heartbeat,
        supervisor_timeout_s=timeout,
        supervisor_modem=choice,
        supervisor_power_cut=table.boolean("supervisor_power_cut"),
        low_supply_v=low,
    )


# -- [alarms] ----------------------------------------------------------------------------------


def parse_disks(document: Mapping[str, object], source: Path) -> DisksConfig:
    """The ``[disks]`` section of a config document (absent: no disk watched).

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or out of range (named).
    """
    table = _Table(source, "disks", document, DisksConfig)
    paths = table._get("paths")
    if not isinstance(paths, (list, tuple)) or not all(
        isinstance(p, str) and p.startswith("/") for p in paths
    ):
        raise table.error("paths", paths, 'expected a list of absolute mount points, e.g. ["/mnt/hdd"]')
    if len(paths) > MAX_DISKS or len(set(paths)) != len(paths):
        raise table.error("paths", paths, f"list each mount point once, at most {MAX_DISKS}")
    if "/" in paths:
        raise table.error(
            "paths", paths, "the root filesystem is not a recording disk; name the disk's mount point"
        )
    return DisksConfig(
        paths=tuple(Path(p) for p in paths),
        min_free_percent=table.number("min_free_percent", 0.0, 50.0),
        interval_s=table.number("interval_s", 1.0, 3600.0),
        timeout_s=table.number("timeout_s", 1.0, 600.0),
    )


def parse_alarms(document: Mapping[str, object], source: Path) -> AlarmsConfig:
    """The ``[alarms]`` section of a config document (all keys optional).

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or out of range (named).
    """
    table = _Table(source, "alarms", document, AlarmsConfig)
    initial = table.number("retransmit_initial_s", 0.05, 600.0)
    most = table.number("retransmit_max_s", 0.05, 3600.0)
    if most < initial:
        raise table.error(
            "retransmit_max_s", most, f"must be at least retransmit_initial_s ({initial:g}); raise it"
        )
    return AlarmsConfig(
        queue_size=table.integer("queue_size", 1, 100_000),
        retransmit_initial_s=initial,
        retransmit_max_s=most,
        snapshots=table.boolean("snapshots"),
    )
