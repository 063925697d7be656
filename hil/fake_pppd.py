"""A stand-in for pppd (and chat) where pppd cannot run: this machine has no /dev/ppp.

It parses the options pppd would (command line and ``file <options>``), refuses unknown ones with
pppd's exit status 2, opens the modem device, runs the ``connect`` command on it the way pppd does
(``sh -c``, the device on stdin and stdout), then pretends to negotiate and runs the
``ip-up-script`` with pppd's arguments (``interface tty speed local-IP remote-IP ipparam``) and
environment (``IFNAME``, ``IPLOCAL``, ``IPREMOTE``, ``DEVICE``, ``LINKNAME``, ``PPPD_PID`` and, with
``usepeerdns``, ``DNS1``/``DNS2``). It exits with pppd's statuses: 5 on SIGTERM/SIGINT/SIGHUP (after
running ``ip-down-script``), 8 when the connect script fails, 16 when the modem hangs up (``NO
CARRIER`` or the port closing), 2 for a bad option, 3 when it would not be root, 4 when the kernel
has no PPP support (both as pppd checks them: after the options, before the device, with pppd's
messages). No PPP frames are exchanged.

Run as ``fake_pppd.py --as-chat [-v] [-s] [-S] -f SCRIPT`` it stands in for chat(8): it plays a chat
script (``ABORT``, ``TIMEOUT``, ``REPORT``, ``SAY``, expect/send pairs, the send escapes ``\\d``,
``\\p``, ``\\c``, ``\\r``, ``\\n``) on stdin/stdout and exits as chat does: 0, 3 on a timeout, 4 + n
when the n-th ABORT string (from 0) arrives. With a ``disconnect`` option it runs that script on the
device when the link ends, unless the modem hung up (as pppd); without one it writes ``+++``
instead of dropping DTR, which a PTY cannot carry.

Behaviour switches, from the environment:

    FAKE_PPPD_EXIT=N            exit with N right after parsing the options (before the device)
    FAKE_PPPD_NOT_ROOT=1        act as a pppd that is not setuid root, run by a user: exit 3
    FAKE_PPPD_DEV_PPP=PATH      the kernel's PPP device to look for (pppd's is /dev/ppp): exit 4
                                when it is missing (there is none on this machine)
    FAKE_PPPD_NEGOTIATION=...   after CONNECT: ok (default), ipcp-fail (10), auth-fail (19),
                                peer-auth-fail (11), echo-timeout (up, then 15 after FAKE_PPPD_ECHO_S)
    FAKE_PPPD_LOCAL / _REMOTE / _DNS1 / _DNS2 / _IFNAME   the addresses ip-up reports
    FAKE_PPPD_IGNORE_TERM=1     ignore SIGTERM (to test SIGKILL after a timeout)
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import stat
import subprocess
import sys
import time

NO_ARG = {
    "nodetach",
    "noauth",
    "auth",
    "noipdefault",
    "usepeerdns",
    "defaultroute",
    "nodefaultroute",
    "persist",
    "demand",
    "debug",
    "lock",
    "nolock",
    "novj",
    "noccp",
    "nobsdcomp",
    "nodeflate",
    "crtscts",
    "nocrtscts",
    "local",
    "modem",
    "ipcp-accept-local",
    "ipcp-accept-remote",
    "refuse-pap",
    "refuse-chap",
    "refuse-mschap",
    "refuse-mschap-v2",
    "refuse-eap",
    "noipv6",
    "+ipv6",
    "updetach",
    "replacedefaultroute",
    "lcp-echo-adaptive",
}
ONE_ARG = {
    "linkname",
    "ipparam",
    "connect",
    "disconnect",
    "ip-up-script",
    "ip-down-script",
    "user",
    "password",
    "lcp-echo-interval",
    "lcp-echo-failure",
    "maxfail",
    "file",
    "mtu",
    "mru",
    "holdoff",
    "idle",
    "logfd",
    "logfile",
    "remotename",
}


class OptionError(Exception):
    pass


def words(text: str) -> list[str]:
    """Split an options file as pppd does: whitespace, # comments, double quotes with \\ escapes."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
        elif ch == '"':
            i += 1
            word = []
            while i < len(text) and text[i] != '"':
                if text[i] == "\\" and i + 1 < len(text):
                    i += 1
                word.append(text[i])
                i += 1
            i += 1
            out.append("".join(word))
        else:
            start = i
            while i < len(text) and not text[i].isspace():
                i += 1
            out.append(text[start:i])
    return out


def parse(argv: list[str], options: dict[str, object]) -> None:
    """Parse pppd options into ``options`` (``flags`` set, values, ``device``, ``speed``)."""
    flags = options.setdefault("flags", set())
    assert isinstance(flags, set)
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in NO_ARG:
            flags.add(word)
        elif word in ONE_ARG:
            if i + 1 >= len(argv):
                raise OptionError(f"option '{word}' requires an argument")
            value = argv[i + 1]
            i += 1
            if word == "file":
                try:
                    with open(value) as handle:
                        parse(words(handle.read()), options)
                except OSError as exc:
                    raise OptionError(f"Can't open options file {value}: {exc.strerror}") from None
            else:
                options[word] = value
        elif word.isdigit():
            options["speed"] = word
        elif word.startswith("/dev/") or is_char_device(word):
            # pppd takes a word naming a character device (a by-id symlink, a PTY) as the device
            options["device"] = word
        else:
            raise OptionError(f"unrecognized option '{word}'")
        i += 1


def is_char_device(path: str) -> bool:
    try:
        return path.startswith("/") and stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def say(text: str) -> None:
    print(text, flush=True)


def run_hook(options: dict[str, object], which: str, ifname: str, local: str, remote: str) -> None:
    script = options.get(f"ip-{which}-script")
    if not isinstance(script, str) or not os.access(script, os.X_OK):
        return
    device = str(options.get("device", ""))
    env = dict(os.environ)
    env.update(
        IFNAME=ifname,
        IPLOCAL=local,
        IPREMOTE=remote,
        DEVICE=device,
        SPEED=str(options.get("speed", "115200")),
        LINKNAME=str(options.get("linkname", "")),
        PPPD_PID=str(os.getpid()),
    )
    flags = options["flags"]
    assert isinstance(flags, set)
    if "usepeerdns" in flags:
        env["DNS1"] = os.environ.get("FAKE_PPPD_DNS1", "10.11.12.13")
        env["DNS2"] = os.environ.get("FAKE_PPPD_DNS2", "10.11.12.14")
    else:
        env.pop("DNS1", None)
        env.pop("DNS2", None)
    args = [
        ifname,
        device,
        str(options.get("speed", "115200")),
        local,
        remote,
        str(options.get("ipparam", "")),
    ]
    # pppd starts the hook and goes on without waiting for it
    subprocess.Popen([script, *args], env=env)


def pppd_main(argv: list[str]) -> int:
    options: dict[str, object] = {}
    try:
        parse(argv, options)
    except OptionError as exc:
        say(f"pppd: {exc}")
        return 2
    if "FAKE_PPPD_EXIT" in os.environ:
        return int(os.environ["FAKE_PPPD_EXIT"])
    if os.environ.get("FAKE_PPPD_NOT_ROOT"):
        say("pppd: must be root to run pppd, since it is not setuid-root")
        return 3
    dev_ppp = os.environ.get("FAKE_PPPD_DEV_PPP")
    if dev_ppp and not os.path.exists(dev_ppp):
        say(
            "pppd: This system lacks kernel support for PPP.  This could be because the PPP kernel "
            "module could not be loaded, or because PPP was not included in the kernel configuration."
        )
        return 4
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGTERM and os.environ.get("FAKE_PPPD_IGNORE_TERM"):
            return
        stop["signal"] = signum

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    device = str(options.get("device", ""))
    try:
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
    except OSError as exc:
        say(f"Failed to open {device}: {exc.strerror}")
        return 7
    say(f"fake pppd {os.getpid()} on {device}")
    connect = options.get("connect")
    if isinstance(connect, str):
        status = subprocess.run(["/bin/sh", "-c", connect], stdin=fd, stdout=fd, check=False).returncode
        if status != 0:
            say("Connect script failed")
            return 8
    say("Serial connection established.")
    negotiation = os.environ.get("FAKE_PPPD_NEGOTIATION", "ok")
    failures = {"ipcp-fail": 10, "auth-fail": 19, "peer-auth-fail": 11}
    if negotiation in failures:
        say(f"fake pppd: negotiation fails ({negotiation})")
        return failures[negotiation]
    ifname = os.environ.get("FAKE_PPPD_IFNAME", "ppp0")
    local = os.environ.get("FAKE_PPPD_LOCAL", "10.64.64.64")
    remote = os.environ.get("FAKE_PPPD_REMOTE", "10.64.64.1")
    say(f"local  IP address {local}")
    say(f"remote IP address {remote}")
    run_hook(options, "up", ifname, local, remote)
    echo_deadline = (
        time.monotonic() + float(os.environ.get("FAKE_PPPD_ECHO_S", "0.2"))
        if negotiation == "echo-timeout"
        else None
    )
    buffer = b""
    code = 0
    while True:
        if stop["signal"]:
            say(f"Terminating on signal {stop['signal']}")
            code = 5
            break
        if echo_deadline is not None and time.monotonic() >= echo_deadline:
            say("No response to 4 echo-requests")
            code = 15
            break
        try:
            ready, _, _ = select.select([fd], [], [], 0.05)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            data = os.read(fd, 1024)
        except OSError:
            data = b""
        if not data:
            say("Modem hangup")
            code = 16
            break
        buffer = (buffer + data)[-64:]
        if b"NO CARRIER" in buffer:
            say("Modem hangup")
            code = 16
            break
    run_hook(options, "down", ifname, local, remote)
    disconnect = options.get("disconnect")
    if code != 16 and isinstance(disconnect, str):
        # as pppd: the disconnect script runs on the device unless the modem hung up itself
        status = subprocess.run(["/bin/sh", "-c", disconnect], stdin=fd, stdout=fd, check=False).returncode
        say("Disconnect script failed" if status else "Serial link disconnected.")
    elif code != 16:
        # A real pppd hangs up by dropping DTR, which a PTY cannot carry: the escape sequence puts
        # an emulated modem back into command mode instead.
        time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.write(fd, b"+++")
    say("Connection terminated.")
    os.close(fd)
    return code


# ---------------------------------------------------------------------------------------- chat


def send_chat(token: str) -> None:
    """Send a chat send-string with chat's escapes: \\d one second, \\p a tenth, \\c no CR at
    the end, \\r, \\n, \\\\ (the rest as written)."""
    out = b""
    cr = True
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "\\" and i + 1 < len(token):
            i += 1
            escape = token[i]
            if escape in "dp":
                os.write(1, out)
                out = b""
                time.sleep(1.0 if escape == "d" else 0.1)
            elif escape == "c" and i == len(token) - 1:
                cr = False
            else:
                out += {"r": b"\r", "n": b"\n", "\\": b"\\"}.get(escape, ("\\" + escape).encode())
        else:
            out += ch.encode()
        i += 1
    os.write(1, out + (b"\r" if cr else b""))


def chat_main(argv: list[str]) -> int:
    script = None
    verbose = to_stderr = False
    i = 0
    while i < len(argv):
        if argv[i] == "-f" and i + 1 < len(argv):
            script = argv[i + 1]
            i += 1
        elif argv[i] == "-v":
            verbose = True
        elif argv[i] == "-s":
            to_stderr = True
        i += 1
    if script is None:
        return 1

    def log(text: str) -> None:
        if verbose and to_stderr:
            sys.stderr.write(f"chat: {text}\n")
            sys.stderr.flush()

    try:
        with open(script) as handle:
            tokens = shlex.split(handle.read(), comments=True)
    except (OSError, ValueError):
        return 1
    aborts: list[bytes] = []
    timeout = 45.0
    pending = b""
    expecting = True
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("ABORT", "TIMEOUT", "REPORT", "SAY", "HANGUP", "ECHO") and i + 1 < len(tokens):
            argument = tokens[i + 1]
            if token == "ABORT":
                aborts.append(argument.encode())
            elif token == "TIMEOUT":
                timeout = float(argument)
            elif token == "SAY":
                log(argument)
            i += 2
            continue
        if expecting:
            if token:
                log(f"expect ({token})")
                deadline = time.monotonic() + timeout
                while token.encode() not in pending:
                    for n, abort in enumerate(aborts):
                        if abort in pending:
                            log(f"abort on ({abort.decode()})")
                            return 4 + n
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log("alarm")
                        return 3
                    ready, _, _ = select.select([0], [], [], left)
                    if ready:
                        data = os.read(0, 1024)
                        if not data:
                            return 2
                        pending += data
                # abort strings that arrived with or before the expected text win, as in chat
                for n, abort in enumerate(aborts):
                    if abort in pending[: pending.index(token.encode()) + len(token)]:
                        log(f"abort on ({abort.decode()})")
                        return 4 + n
                pending = pending[pending.index(token.encode()) + len(token) :]
        else:
            log(f"send ({token})")
            send_chat(token)
        expecting = not expecting
        i += 1
    return 0


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--as-chat"]:
        sys.exit(chat_main(argv[1:]))
    sys.exit(pppd_main(argv))


if __name__ == "__main__":
    main()
