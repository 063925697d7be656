"""The PPP data link: the daemon writes pppd's options, chat script and hook scripts, runs pppd, and
turns how it ends into an outcome the modem manager acts on.

How the call is dialled: pppd's ``connect`` runs ``chat`` on the modem's data port. pppd holds the
port from the dial to the hang-up, so nothing closes it between ``CONNECT`` and LCP (closing a tty
drops DTR, which hangs up most modems), and the AT port stays with the daemon's AT engine for
signal and URCs during the call. The chat script sets the PDP context (``AT+CGDCONT``) and dials
the profile's ``ATD*99#``; its ``ABORT`` strings are in a fixed order, and a small ``connect``
wrapper records chat's exit status (chat(8): 3 timeout, 4 + n the n-th ``ABORT`` string), because
pppd reports any connect failure as its own exit status 8 and nothing more.

How "up" is seen: pppd's ``ip-up-script`` (run as ``ip-up interface tty speed local-IP remote-IP
ipparam``, with ``DNS1``/``DNS2`` under ``usepeerdns``) writes one line to a FIFO the supervisor reads.
"Up" means IPCP finished; whether data flows is for :mod:`dvrlink.modem.netprobe` to judge.

Retries are the daemon's: no ``persist``, no ``maxfail``, no ``demand``. pppd runs with ``nodetach``
and exits when the link ends; :func:`outcome_for_exit` maps its exit status (pppd(8) EXIT STATUS) to
a :class:`FailureAction`. Credentials go into the options file (mode 0600, in the daemon's run
directory) and nowhere else: not on a command line, not in a log.

The pure parts (file contents, exit-status mapping, the hook's status line) are functions; the only
I/O is :class:`PppLink`, a thin asyncio supervisor. It fits the manager's data link shape:
``await up(apn)`` → :class:`LinkUp` or :class:`LinkFailed`, ``await down()``, ``probe()``, and
``await wait_down()`` for how an established link ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shlex
import signal
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dvrlink.modem.apn import ApnSettings
from dvrlink.modem.data_link import DataFailed, DataFailure, DataLink, DataRequest, DataUp
from dvrlink.store.files import atomic_write

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ data link results


class FailureAction(enum.Enum):
    """What the modem manager should do after a data link failed (shared by PPP and ECM)."""

    NEXT_APN = "next-apn"
    """The network refused this APN or its credentials: try the next candidate."""
    RETRY = "retry"
    """A transient failure (hang-up, coverage, peer silent): retry after a backoff."""
    RECOVER = "recover"
    """The modem or its port misbehaves: climb the recovery ladder."""
    CONFIG = "config"
    """This system or the configuration is wrong: report it, do not retry in a loop."""
    STOPPED = "stopped"
    """The daemon stopped the link itself."""


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The data link has an address. ``dns`` holds the servers the network gave (may be empty)."""

    interface: str
    local_ip: str
    remote_ip: str = ""
    dns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """The data link did not come up, or went down. ``reason`` names what was seen and what to do;
    ``exit_code`` is the link program's exit status (negative: killed by that signal)."""

    action: FailureAction
    reason: str
    exit_code: int | None = None
    failure: DataFailure = DataFailure.OTHER
    """The manager's class of this failure (``DataFailed.reason``)."""

    def to_data_failed(self) -> DataFailed:
        """The manager's :class:`~dvrlink.modem.manager.DataFailed` for this failure: a
        configuration failure is always ``DataFailure.CONFIG`` (no APN or modem step fixes it)."""
        failure = DataFailure.CONFIG if self.action is FailureAction.CONFIG else self.failure
        return DataFailed(failure, f"{self.action.value}: {self.reason}")


def to_data_result(result: LinkUp | LinkFailed) -> DataUp | DataFailed:
    """A data link result in the manager's terms."""
    if isinstance(result, LinkUp):
        return DataUp(result.interface, result.local_ip)
    return result.to_data_failed()


def interface_counters(sysfs_net: Path, interface: str) -> tuple[int, int]:
    """The kernel's received and sent byte counters of ``interface``; (0, 0) when unreadable."""
    statistics = sysfs_net / interface / "statistics"
    try:
        return int((statistics / "rx_bytes").read_text()), int((statistics / "tx_bytes").read_text())
    except (OSError, ValueError):
        return 0, 0


PathProbe = Callable[[LinkUp], Awaitable[bool]]
"""A data-path health check of an established link (see :mod:`dvrlink.modem.netprobe`)."""


# ---------------------------------------------------------------------------------- config

DEFAULT_RUN_DIR = Path("/run/dvrlink/ppp")


@dataclass(frozen=True, slots=True)
class PppConfig:
    """Settings of the PPP data link."""

    pppd_command: tuple[str, ...] = ("/usr/sbin/pppd",)
    """The pppd program (and arguments before ``file <options>``)."""
    chat_command: tuple[str, ...] = ("/usr/sbin/chat",)
    """The chat program the connect script runs."""
    run_dir: Path = DEFAULT_RUN_DIR
    """Where the options, scripts and the status FIFO go; created with mode 0700."""
    linkname: str = "dvrlink"
    """pppd's ``linkname`` and ``ipparam``."""
    cid: int = 1
    """The PDP context the chat script sets and dials."""
    baudrate: int = 115200
    """Port speed; USB modems ignore it, UART modems (SIM800) need the one they run at."""
    defaultroute: bool = True
    """Route the default route through the link."""
    usepeerdns: bool = True
    """Ask the network for DNS servers (reported in :class:`LinkUp`)."""
    lcp_echo_interval_s: int = 10
    """Seconds between LCP echo requests; 0 turns echoes off."""
    lcp_echo_failure: int = 4
    """Unanswered echoes before pppd ends the link (exit status 15)."""
    lcp_echo_adaptive: bool = True
    """Send echoes only when nothing came from the peer since the last one (pppd's
    ``lcp-echo-adaptive``): no echo bytes on a busy metered link."""
    chat_timeout_s: int = 10
    """chat's timeout for each AT reply before the dial."""
    dial_timeout_s: int = 60
    """chat's timeout for ``CONNECT`` after ``ATD``."""
    up_timeout_s: float = 90.0
    """Seconds from start to ip-up before the attempt is given up."""
    stop_timeout_s: float = 5.0
    """Seconds pppd gets after SIGTERM before SIGKILL."""
    hook_timeout_s: int = 5
    """Seconds the ip-up/ip-down hook waits for the daemon to read its status line."""
    hang_up: bool = False
    """When pppd ends the link, hang the modem up over the port (``+++`` with a second's guard time
    either side, then ``ATH``) with a ``disconnect`` script: for PPP on the AT port of a UART
    modem whose DTR line may not be wired (the SIM800), so the port comes back in command mode."""
    extra_options: tuple[str, ...] = ()
    """More pppd options, one per line (e.g. ``novj``, ``mtu 1400``)."""
    environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Extra environment variables for pppd."""

    def __post_init__(self) -> None:
        if not self.pppd_command or not self.chat_command:
            raise ValueError("ppp pppd_command and chat_command must name a program")
        if not (self.linkname and self.linkname.replace("-", "").replace("_", "").isalnum()):
            raise ValueError(f"ppp linkname {self.linkname!r} must be letters, digits, - or _")
        for option in self.extra_options:
            if "\n" in option or option.split(maxsplit=1)[:1] in (["persist"], ["demand"], ["maxfail"]):
                raise ValueError(
                    f"ppp extra option {option!r} is not allowed: one option per entry, and no "
                    "persist/demand/maxfail (the daemon owns retries)"
                )
        if self.up_timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ValueError("ppp up_timeout_s and stop_timeout_s must be positive seconds")


# ------------------------------------------------------------------------- files (pure)

ABORT_STRINGS: tuple[str, ...] = ("NO CARRIER", "NO DIALTONE", "BUSY", "NO ANSWER", "+CME ERROR", "ERROR")
"""The chat script's ABORT strings, in order: chat exits with 4 + the index of the one it saw.
``+CME ERROR`` comes before ``ERROR``, which it ends with."""


@dataclass(frozen=True, slots=True)
class PppFiles:
    """The paths of the files one PPP link uses."""

    run_dir: Path

    @property
    def options(self) -> Path:
        return self.run_dir / "options"

    @property
    def chat(self) -> Path:
        return self.run_dir / "chat"

    @property
    def connect(self) -> Path:
        return self.run_dir / "connect"

    @property
    def hangup_chat(self) -> Path:
        return self.run_dir / "hangup-chat"

    @property
    def disconnect(self) -> Path:
        return self.run_dir / "disconnect"

    @property
    def connect_status(self) -> Path:
        return self.run_dir / "connect-status"

    @property
    def ip_up(self) -> Path:
        return self.run_dir / "ip-up"

    @property
    def ip_down(self) -> Path:
        return self.run_dir / "ip-down"

    @property
    def events(self) -> Path:
        return self.run_dir / "events"


def _option_value(value: str, what: str) -> str:
    """A double-quoted pppd option word; pppd's option parser understands ``\\\\`` and ``\\"``."""
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{what} holds a line break or NUL: fix it in the APN settings")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_options(config: PppConfig, device: str, apn: ApnSettings, files: PppFiles) -> str:
    """The pppd options file. It holds the APN's password: write it with mode 0600.

    Raises:
        ValueError: the device, user name or password holds a line break.
    """
    lines = [
        f"# pppd options written by dvrlinkd for link {config.linkname}; the daemon owns retries",
        _option_value(device, "modem device"),
        str(config.baudrate),
        "nodetach",
        f"linkname {config.linkname}",
        f"ipparam {config.linkname}",
        "noauth",
        "noipdefault",
        "ipcp-accept-local",
        "ipcp-accept-remote",
        f"connect {_option_value(str(files.connect), 'connect script path')}",
        f"ip-up-script {_option_value(str(files.ip_up), 'ip-up path')}",
        f"ip-down-script {_option_value(str(files.ip_down), 'ip-down path')}",
    ]
    if config.hang_up:
        lines.append(f"disconnect {_option_value(str(files.disconnect), 'disconnect script path')}")
    if config.usepeerdns:
        lines.append("usepeerdns")
    lines.append("defaultroute" if config.defaultroute else "nodefaultroute")
    if config.lcp_echo_interval_s > 0:
        lines += [
            f"lcp-echo-interval {config.lcp_echo_interval_s}",
            f"lcp-echo-failure {config.lcp_echo_failure}",
        ]
        if config.lcp_echo_adaptive:
            lines.append("lcp-echo-adaptive")
    if apn.username or apn.password:
        lines.append(f"user {_option_value(apn.username, 'APN user name')}")
        lines.append(f"password {_option_value(apn.password, 'APN password')}")
    if apn.auth == "pap":
        lines += ["refuse-chap", "refuse-mschap", "refuse-mschap-v2", "refuse-eap"]
    elif apn.auth == "chap":
        lines += ["refuse-pap", "refuse-eap"]
    lines += list(config.extra_options)
    return "\n".join(lines) + "\n"


def _chat_word(value: str) -> str:
    if "'" in value or "\n" in value or "\r" in value:
        raise ValueError(f"{value!r} holds a quote or line break and cannot go into the chat script")
    return f"'{value}'"


def build_chat(config: PppConfig, apn: ApnSettings, dial: str = "ATD*99#", cid: int | None = None) -> str:
    """The chat script: ``AT``, set the PDP context ``cid`` (default ``config.cid``) to the APN
    (the manager has usually done so already; setting it again is harmless), dial.

    Raises:
        ValueError: the APN or dial string holds a quote or line break.
    """
    if any(ch in apn.apn for ch in "\"'\r\n"):
        raise ValueError(f"APN {apn.apn!r} holds a quote or line break: fix the APN setting")
    lines = [f"ABORT {_chat_word(text)}" for text in ABORT_STRINGS]
    context = f'AT+CGDCONT={config.cid if cid is None else cid},"IP","{apn.apn}"'
    lines += [
        f"TIMEOUT {config.chat_timeout_s}",
        "'' AT",
        f"OK {_chat_word(context)}",
        f"OK {_chat_word(dial)}",
        f"TIMEOUT {config.dial_timeout_s}",
        "CONNECT ''",
    ]
    return "\n".join(lines) + "\n"


def build_connect(config: PppConfig, files: PppFiles) -> str:
    """The connect script pppd runs: chat, with its exit status kept for :func:`outcome_for_exit`."""
    chat = " ".join(shlex.quote(word) for word in config.chat_command)
    return (
        "#!/bin/sh\n"
        "# Written by dvrlinkd: pppd runs this with the modem's data port on stdin and stdout.\n"
        f"{chat} -v -s -S -f {shlex.quote(str(files.chat))}\n"
        "status=$?\n"
        f'echo "$status" > {shlex.quote(str(files.connect_status))}\n'
        'exit "$status"\n'
    )


HANGUP_CHAT = "TIMEOUT 3\n'' '\\d+++\\d\\c'\nOK ATH\nOK\n"
"""The chat script of the ``disconnect`` script (``hang_up``): the escape sequence with its guard
times (``\\d``: a second; ``\\c``: no carriage return), then ``ATH``."""


def build_disconnect(config: PppConfig, files: PppFiles) -> str:
    """The disconnect script pppd runs after the link ends (not after the modem hung up itself)."""
    chat = " ".join(shlex.quote(word) for word in config.chat_command)
    return (
        "#!/bin/sh\n"
        "# Written by dvrlinkd: pppd runs this with the modem's port on stdin and stdout.\n"
        f"exec {chat} -v -s -S -f {shlex.quote(str(files.hangup_chat))}\n"
    )


def build_hook(files: PppFiles, kind: str, timeout_s: int = 5) -> str:
    """The ip-up (``kind`` "up") or ip-down ("down") script: one status line into the FIFO.

    pppd runs it as ``<script> interface tty speed local-IP remote-IP ipparam`` with DNS1/DNS2 set
    under ``usepeerdns``. Opening a FIFO blocks until it has a reader, so where ``timeout`` exists
    (coreutils, BusyBox) the write gives up after ``timeout_s`` instead of hanging when the daemon is
    gone.
    """
    fifo = shlex.quote(str(files.events))
    return (
        "#!/bin/sh\n"
        f"# Written by dvrlinkd: tells the daemon that the link is {kind}.\n"
        f"[ -p {fifo} ] || exit 0\n"
        f"line=$(printf '{kind}\\tiface=%s\\ttty=%s\\tlocal=%s\\tremote=%s\\tdns1=%s\\tdns2=%s\\tipparam=%s' "
        '"$1" "$2" "$4" "$5" "${DNS1:-}" "${DNS2:-}" "$6")\n'
        "if command -v timeout >/dev/null 2>&1; then\n"
        f'    exec timeout {timeout_s} sh -c \'printf "%s\\\\n" "$1" > "$2"\' hook "$line" {fifo}\n'
        "fi\n"
        f"printf '%s\\n' \"$line\" > {fifo}\n"
    )


def parse_status_line(line: str) -> tuple[str, LinkUp] | None:
    """A hook's FIFO line → ("up" or "down", the addresses), or None for anything else."""
    kind, *fields = line.rstrip("\n").split("\t")
    if kind not in ("up", "down"):
        return None
    values = dict(item.split("=", 1) for item in fields if "=" in item)
    if not values.get("iface"):
        return None
    dns = tuple(value for value in (values.get("dns1", ""), values.get("dns2", "")) if value)
    return kind, LinkUp(values["iface"], values.get("local", ""), values.get("remote", ""), dns)


# ------------------------------------------------------------------------ exit statuses (pure)

PPPD_EXIT: Mapping[int, tuple[FailureAction, DataFailure, str]] = MappingProxyType(
    {
        0: (FailureAction.RETRY, DataFailure.OTHER, "pppd ended the link normally"),
        1: (FailureAction.CONFIG, DataFailure.CONFIG, "pppd hit a fatal error (see its log)"),
        2: (
            FailureAction.CONFIG,
            DataFailure.CONFIG,
            "pppd rejected an option (options error): check [modem] pppd's arguments and the pppd "
            "version, pppd's log says which option",
        ),
        3: (
            FailureAction.CONFIG,
            DataFailure.CONFIG,
            "pppd is not setuid root and the daemon is not root: install pppd setuid root "
            "(chmod u+s on it) and allow it in the unit (docs/operating.md, Permissions)",
        ),
        4: (
            FailureAction.CONFIG,
            DataFailure.CONFIG,
            "the kernel has no PPP support (no /dev/ppp): enable CONFIG_PPP and CONFIG_PPP_ASYNC in "
            "the kernel, or load ppp_generic and ppp_async",
        ),
        5: (FailureAction.STOPPED, DataFailure.OTHER, "pppd was stopped by SIGINT, SIGTERM or SIGHUP"),
        6: (
            FailureAction.RECOVER,
            DataFailure.NO_DEVICE,
            "the serial port is locked by another process: stop it, or the ladder reopens",
        ),
        7: (
            FailureAction.RECOVER,
            DataFailure.NO_DEVICE,
            "pppd could not open the modem's data port: check the modem is attached",
        ),
        8: (FailureAction.RETRY, DataFailure.OTHER, "the connect script failed"),
        9: (FailureAction.CONFIG, DataFailure.CONFIG, "the pty command failed: check the pty option"),
        10: (
            FailureAction.NEXT_APN,
            DataFailure.IPCP,
            "PPP negotiation failed (LCP or IPCP): the network refused this APN",
        ),
        11: (
            FailureAction.NEXT_APN,
            DataFailure.AUTH,
            "the peer failed to authenticate to us: noauth is missing from the options",
        ),
        12: (FailureAction.RETRY, DataFailure.OTHER, "the link was idle too long"),
        13: (FailureAction.RETRY, DataFailure.OTHER, "the connect time limit was reached"),
        14: (FailureAction.RETRY, DataFailure.OTHER, "callback negotiated (not used)"),
        15: (FailureAction.RETRY, DataFailure.NO_CARRIER, "the peer stopped answering LCP echo requests"),
        16: (FailureAction.RETRY, DataFailure.NO_CARRIER, "the modem hung up (NO CARRIER)"),
        17: (
            FailureAction.RECOVER,
            DataFailure.OTHER,
            "loopback detected: the modem echoes our frames, it is in command mode",
        ),
        18: (FailureAction.RECOVER, DataFailure.OTHER, "the init script failed"),
        19: (
            FailureAction.NEXT_APN,
            DataFailure.AUTH,
            "we failed to authenticate to the network: check the APN user name and password",
        ),
    }
)
"""pppd(8) EXIT STATUS → what to do, the manager's class of failure, and what it means."""

_CHAT_ABORTS: Mapping[str, tuple[FailureAction, DataFailure]] = MappingProxyType(
    {
        # NO CARRIER to ATD is how most modems say the context did not activate, but also how they
        # say there is no coverage: the manager retries the APN, then moves on.
        "NO CARRIER": (FailureAction.RETRY, DataFailure.NO_CARRIER),
        "NO DIALTONE": (FailureAction.RETRY, DataFailure.NO_CARRIER),
        "BUSY": (FailureAction.RETRY, DataFailure.NO_CARRIER),
        "NO ANSWER": (FailureAction.RETRY, DataFailure.NO_CARRIER),
        "+CME ERROR": (FailureAction.NEXT_APN, DataFailure.REJECTED),
        "ERROR": (FailureAction.NEXT_APN, DataFailure.REJECTED),
    }
)


def outcome_for_chat(status: int | None, device: str) -> LinkFailed:
    """A connect-script failure (pppd exit 8) by chat's own exit status, None when unknown."""
    if status is not None and 4 <= status < 4 + len(ABORT_STRINGS):
        seen = ABORT_STRINGS[status - 4]
        action, failure = _CHAT_ABORTS[seen]
        hint = (
            "the network refused the APN"
            if action is FailureAction.NEXT_APN
            else "no call (coverage, or the APN did not activate)"
        )
        return LinkFailed(action, f"dial on {device} answered {seen}: {hint}", 8, failure)
    if status == 3:
        return LinkFailed(
            FailureAction.RECOVER,
            f"no reply from the modem on {device} during the dial (chat timed out): check that this is its "
            "modem port and that it is in command mode",
            8,
            DataFailure.TIMEOUT,
        )
    if status in (1, 2):
        return LinkFailed(
            FailureAction.CONFIG,
            f"chat failed on {device} with status {status} (bad script or I/O error): check the chat program",
            8,
            DataFailure.CONFIG,
        )
    return LinkFailed(FailureAction.RETRY, f"the connect script on {device} failed (status {status})", 8)


def outcome_for_exit(code: int, device: str, chat_status: int | None = None) -> LinkFailed:
    """How pppd's exit status ``code`` (negative: killed by that signal) maps to an action.

    ``chat_status`` is what the connect script recorded; it refines exit status 8.
    """
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return LinkFailed(FailureAction.RETRY, f"pppd on {device} was killed by {name}", code)
    if code == 8:
        return outcome_for_chat(chat_status, device)
    action, failure, meaning = PPPD_EXIT.get(
        code, (FailureAction.RETRY, DataFailure.OTHER, "unknown pppd exit status")
    )
    return LinkFailed(action, f"pppd on {device} exited with {code}: {meaning}", code, failure)


def write_files(
    config: PppConfig, device: str, apn: ApnSettings, dial: str = "ATD*99#", cid: int | None = None
) -> PppFiles:
    """Write the options (0600), chat script, connect and hook scripts (0700) and make the FIFO.

    Raises:
        OSError: the run directory cannot be created or written.
        ValueError: the APN, credentials or device hold characters that cannot be written safely.
    """
    files = PppFiles(config.run_dir)
    options = build_options(config, device, apn, files)
    chat = build_chat(config, apn, dial, cid)
    config.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(files.options, options.encode(), mode=0o600)
    atomic_write(files.chat, chat.encode(), mode=0o600)
    atomic_write(files.connect, build_connect(config, files).encode(), mode=0o700)
    if config.hang_up:
        atomic_write(files.hangup_chat, HANGUP_CHAT.encode(), mode=0o600)
        atomic_write(files.disconnect, build_disconnect(config, files).encode(), mode=0o700)
    atomic_write(files.ip_up, build_hook(files, "up", config.hook_timeout_s).encode(), mode=0o700)
    atomic_write(files.ip_down, build_hook(files, "down", config.hook_timeout_s).encode(), mode=0o700)
    files.connect_status.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISFIFO(files.events.lstat().st_mode):
            files.events.unlink()
    if not files.events.exists():
        os.mkfifo(files.events, 0o600)
    return files


# ------------------------------------------------------------------------------ supervisor


class PppLink:
    """Runs pppd for one modem data port (see module docstring); a ``DataLink`` of the manager.

    ``path_probe`` judges the data path of an established link (``probe()``); without one, a
    running pppd with an address counts as healthy. ``sysfs_net`` is where ``counters()`` reads the
    interface's byte counters.
    """

    def __init__(
        self,
        config: PppConfig,
        device: str,
        *,
        path_probe: PathProbe | None = None,
        sysfs_net: Path = Path("/sys/class/net"),
    ) -> None:
        self._config = config
        self._device = device
        self._path_probe = path_probe
        self._sysfs_net = sysfs_net
        self._proc: asyncio.subprocess.Process | None = None
        self._fifo_fd = -1
        self._fifo_buffer = b""
        self._status: asyncio.Queue[tuple[str, LinkUp]] = asyncio.Queue()
        self._up: LinkUp | None = None
        self._ended: asyncio.Future[LinkFailed] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def device(self) -> str:
        """The modem port pppd runs on."""
        return self._device

    @property
    def pid(self) -> int | None:
        """pppd's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def alive(self) -> bool:
        """True while pppd runs and the link has an address (not a data-path check)."""
        return self._up is not None and self.pid is not None

    @property
    def last_up(self) -> LinkUp | None:
        """The addresses of the link while it is up (DNS servers included), else None."""
        return self._up if self.alive else None

    async def up(self, request: DataRequest) -> DataUp | DataFailed:
        """The manager's ``DataLink.up``: :meth:`start` with the request's APN, dial and context.

        Raises:
            RuntimeError: pppd is still running; call ``down()`` first.
            OSError: the run directory cannot be written.
            ValueError: the APN or credentials cannot be written safely.
        """
        return to_data_result(await self.start(request.apn, request.dial, request.cid))

    async def down(self) -> None:
        """The manager's ``DataLink.down``: :meth:`stop`."""
        await self.stop()

    async def probe(self) -> bool:
        """The manager's ``DataLink.probe``: False at once when pppd has ended or has no address,
        else the data-path probe's verdict."""
        up = self.last_up
        if up is None:
            return False
        if self._path_probe is None:
            return True
        return await self._path_probe(up)

    def counters(self) -> tuple[int, int]:
        """Bytes received and sent on the PPP interface since it came up; (0, 0) when down or when
        the kernel's counters cannot be read."""
        up = self.last_up
        return (0, 0) if up is None else interface_counters(self._sysfs_net, up.interface)

    async def start(
        self, apn: ApnSettings, dial: str = "ATD*99#", cid: int | None = None
    ) -> LinkUp | LinkFailed:
        """Dial ``dial`` with ``apn`` on context ``cid`` and wait for IPCP to finish.

        Returns the addresses, or how it failed (never raises for a network or pppd failure).

        Raises:
            RuntimeError: pppd is still running; call ``stop()`` first.
            OSError: the run directory cannot be written.
            ValueError: the APN or credentials cannot be written safely.
        """
        if self.pid is not None:
            raise RuntimeError(f"PPP link on {self._device} is already running: call down() first")
        if self._proc is not None:  # the last pppd ended by itself
            await self._cleanup()
        files = write_files(self._config, self._device, apn, dial, cid)
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._up = None
        self._status = asyncio.Queue()
        # O_RDWR keeps a writer open, so the FIFO never reads as end-of-file between hook runs.
        self._fifo_fd = os.open(files.events, os.O_RDWR | os.O_NONBLOCK)
        loop.add_reader(self._fifo_fd, self._fifo_readable)
        log.info("starting pppd on %s for APN %r", self._device, apn.apn)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._config.pppd_command,
                "file",
                str(files.options),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self._config.environment},
            )
        except OSError as exc:
            self._close_fifo()
            return LinkFailed(
                FailureAction.CONFIG,
                f"cannot run {self._config.pppd_command[0]}: {exc}: install pppd or fix [modem] pppd",
                failure=DataFailure.CONFIG,
            )
        self._ended = loop.create_future()
        self._tasks = [loop.create_task(self._log_output()), loop.create_task(self._watch_exit(files))]
        status_wait = loop.create_task(self._wait_up())
        waiters: set[asyncio.Future[Any]] = {status_wait, self._ended}
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=self._config.up_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            status_wait.cancel()
        if status_wait in done and not status_wait.cancelled() and status_wait.exception() is None:
            self._up = status_wait.result()
            log.info(
                "PPP up on %s: %s local %s remote %s",
                self._device,
                self._up.interface,
                self._up.local_ip,
                self._up.remote_ip,
            )
            return self._up
        if self._ended.done():
            failed = self._ended.result()
            await self._cleanup()
            return failed
        await self.stop()
        return LinkFailed(
            FailureAction.RETRY,
            f"PPP on {self._device} got no address within {self._config.up_timeout_s:g} s: pppd stopped",
            failure=DataFailure.TIMEOUT,
        )

    async def wait_down(self) -> LinkFailed:
        """After ``up``: wait until the link ends, and say how.

        Raises:
            RuntimeError: the link was never started.
        """
        if self._ended is None:
            raise RuntimeError(f"PPP link on {self._device} was never started")
        return await asyncio.shield(self._ended)

    async def stop(self) -> LinkFailed | None:
        """Stop pppd (SIGTERM, then SIGKILL after ``stop_timeout_s``); returns how it ended, or None
        when it was not running. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return None
        self._stopping = True
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self._config.stop_timeout_s)
            except TimeoutError:
                log.warning(
                    "pppd on %s ignored SIGTERM for %g s: killing it",
                    self._device,
                    self._config.stop_timeout_s,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        ended = await self.wait_down()
        await self._cleanup()
        return ended

    # -- internals -----------------------------------------------------------------------------

    async def _wait_up(self) -> LinkUp:
        while True:
            kind, info = await self._status.get()
            if kind == "up":
                return info

    def _fifo_readable(self) -> None:
        try:
            data = os.read(self._fifo_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        self._fifo_buffer += data
        *lines, self._fifo_buffer = self._fifo_buffer.split(b"\n")
        for raw in lines:
            parsed = parse_status_line(raw.decode("utf-8", "replace"))
            if parsed is None:
                log.debug("PPP status FIFO: ignored %r", raw[:80])
            else:
                self._status.put_nowait(parsed)

    async def _log_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            # pppd masks passwords in its own output; this is its log, line by line
            log.debug("pppd[%s]: %s", self._proc.pid, raw.decode("utf-8", "replace").rstrip())

    async def _watch_exit(self, files: PppFiles) -> None:
        assert self._proc is not None and self._ended is not None
        code = await self._proc.wait()
        chat_status = None
        with contextlib.suppress(OSError, ValueError):
            chat_status = int(files.connect_status.read_text().strip())
        if self._stopping and code in (5, -signal.SIGTERM, -signal.SIGKILL):
            failed = LinkFailed(FailureAction.STOPPED, f"pppd on {self._device} stopped by the daemon", code)
        else:
            failed = outcome_for_exit(code, self._device, chat_status)
        log.log(
            logging.INFO if failed.action is FailureAction.STOPPED else logging.WARNING, "%s", failed.reason
        )
        self._up = None
        if not self._ended.done():
            self._ended.set_result(failed)

    async def _cleanup(self) -> None:
        for task in self._tasks:
            if not task.done():
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, 1.0)
        self._tasks = []
        self._close_fifo()
        self._proc = None
        self._up = None

    def _close_fifo(self) -> None:
        if self._fifo_fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fifo_fd)
            os.close(self._fifo_fd)
            self._fifo_fd = -1
            self._fifo_buffer = b""


if TYPE_CHECKING:  # PppLink is a DataLink of the manager; mypy checks it here
    _: DataLink = PppLink(PppConfig(), "/dev/null")
