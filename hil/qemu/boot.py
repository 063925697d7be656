"""``python -m hil.qemu boot``: the built image under TCG, and ``Guest`` for tests.

The guest gets Debian's kernel and the image's initrd, the root disk as a virtio disk opened with
``snapshot=on`` (writes go to a temporary file, so every boot starts from the built image), a
virtio NIC on QEMU's user network (the host is 10.0.2.2 from the guest), an i6300esb watchdog, a
virtio RNG, and the board console (the PL011 UART, ttyAMA0) on stdio or a unix socket.

Why TCG: an x86-64 host's KVM cannot run an ARM guest, and where KVM is present guests hung on
it in a trial, so the rig always emulates (``-accel tcg``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hil.qemu.build import Image
from hil.qemu.targets import Target

FW_CFG_CONFIG = "opt/dvrlink/dvrlinkd.toml"
"""fw_cfg entry the rig's dvrlink-hil-config.service copies to /etc/dvrlink/dvrlinkd.toml."""
CONFIG_DISK_SERIAL = "dvrlink-config"
"""Serial of the read-only virtio disk that hands a config in where the kernel has no fw_cfg
driver (Debian's armmp): a tar archive holding ``dvrlinkd.toml``."""
PROMPT = "root@dvrlink"


CONFIG_DISK = "config-disk.tar"
"""The config disk's file in the run directory."""


def write_config_disk(target: Target, options: BootOptions, run_dir: Path) -> None:
    """Write the config disk into ``run_dir`` if ``target`` takes its config that way."""
    if options.config is not None and target.config_disk:
        config_disk(options.config, run_dir / CONFIG_DISK)


def config_disk(config: Path, disk: Path) -> Path:
    """Write ``disk``: a tar archive holding ``config`` as ``dvrlinkd.toml``; returns ``disk``."""
    with tarfile.open(disk, "w", format=tarfile.USTAR_FORMAT) as archive:
        info = archive.gettarinfo(str(config), arcname="dvrlinkd.toml")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = 0o640
        with config.open("rb") as f:
            archive.addfile(info, f)
    return disk


class BootError(Exception):
    """QEMU could not start, or the guest did not do what was waited for; says what was seen."""


@dataclass(frozen=True, slots=True)
class BootOptions:
    """How to boot: RAM in MiB, a config to inject, where the console goes (None: stdio)."""

    mem_mb: int
    config: Path | None = None
    console_socket: Path | None = None
    smp: int = 1
    extra_cmdline: str = ""
    extra_args: tuple[str, ...] = ()
    """More QEMU arguments, appended as given (a modem's serial port, a second NIC, a console)."""
    nic: str = "virtio-net-pci"
    """The network card on QEMU's user network. virtio-net there offers no checksum offload
    (the user network has no virtio-net header), so the guest's kernel refuses UDP GSO with
    EIO and sends datagram by datagram; ``e1000`` offers it, as the recorders' MACs with
    checksum offload do (docs/benchmarks.md, section 15)."""


def qemu_command(target: Target, image: Image, options: BootOptions, run_dir: Path) -> list[str]:
    """The QEMU command line for ``image``; ``run_dir`` holds the monitor socket and logs."""
    if options.console_socket is not None:
        console = [
            "-chardev",
            f"socket,id=console,path={options.console_socket},server=on,wait=off,"
            f"logfile={run_dir / 'console.log'}",
            "-serial",
            "chardev:console",
        ]
    else:
        console = ["-serial", "mon:stdio"]
    cmdline = (
        f"console={target.console} root=/dev/vda rw rootwait panic=10 "
        f"systemd.show_status=1 {target.kernel_args} {options.extra_cmdline}"
    ).strip()
    argv = [
        target.qemu_system,
        "-M",
        target.machine,
        "-cpu",
        target.cpu,
        "-accel",
        "tcg",
        "-smp",
        str(options.smp),
        "-m",
        str(options.mem_mb),
        "-nographic",
        "-nodefaults",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        cmdline,
        "-drive",
        f"file={image.rootfs},format=raw,if=none,id=root,snapshot=on",
        "-device",
        "virtio-blk-pci,drive=root",
        "-netdev",
        "user,id=net0",
        "-device",
        f"{options.nic},netdev=net0,romfile=",  # no option ROM: the kernel boots without firmware
        "-device",
        "virtio-rng-pci",
        "-device",
        "i6300esb",
        "-action",
        "watchdog=reset",
        "-monitor",
        f"unix:{run_dir / 'monitor.sock'},server=on,wait=off",
        *console,
    ]
    if options.config is not None and target.config_disk:
        disk = run_dir / CONFIG_DISK  # written by write_config_disk before QEMU starts
        argv += [
            "-drive",
            f"file={disk},format=raw,if=none,id=config,readonly=on",
            "-device",
            f"virtio-blk-pci,drive=config,serial={CONFIG_DISK_SERIAL}",
        ]
    elif options.config is not None:
        argv += ["-fw_cfg", f"name={FW_CFG_CONFIG},file={options.config}"]
    return [*argv, *options.extra_args]


def _check_tools(target: Target) -> None:
    if shutil.which(target.qemu_system) is None:
        raise BootError(
            f"{target.qemu_system} is not installed: apt-get install qemu-system-arm (or `make hil`)"
        )


def run_interactive(target: Target, image: Image, options: BootOptions) -> int:
    """Boot with the console on this terminal (or the given socket) until QEMU exits."""
    _check_tools(target)
    with tempfile.TemporaryDirectory(prefix="dvrlink-qemu-") as run_dir:
        argv = qemu_command(target, image, options, Path(run_dir))
        write_config_disk(target, options, Path(run_dir))
        if options.console_socket is not None:
            print(f"console on {options.console_socket} (e.g. socat - UNIX-CONNECT:{options.console_socket})")
        return subprocess.run(argv, check=False).returncode


_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\^_])")
"""CSI sequences (colours, bracketed paste), OSC strings (hyperlinks, titles), two-byte escapes."""
_PARTIAL_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*|\][^\x07\x1b]*\x1b?)?$")


def _plain(text: str, *, final: bool) -> tuple[str, str]:
    """Console text without terminal escapes and CRs, and an unfinished escape to carry over."""
    carry = ""
    if not final and (partial := _PARTIAL_ESCAPE.search(text)) and len(text) - partial.start() < 4096:
        text, carry = text[: partial.start()], text[partial.start() :]
    return _ESCAPE.sub("", text).replace("\r", ""), carry


class Console:
    """The guest's serial console over QEMU's unix socket: everything read is kept and logged."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path = path
        self.log = log
        self._buffer = ""
        self._cond = threading.Condition()
        self._closed = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def connect(self, timeout: float) -> None:
        """Connect to QEMU's console socket, retrying until it exists.

        Raises:
            BootError: the socket did not accept within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise BootError(
                        f"QEMU's console socket {self.path} did not accept within {timeout} s: {exc}"
                    ) from exc
                time.sleep(0.05)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, name="qemu-console", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._sock is not None
        carry = ""
        with self.log.open("a", errors="replace") as log:
            while True:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    data = b""
                raw = data.decode(errors="replace")
                if raw:
                    log.write(raw.replace("\r", ""))
                    log.flush()
                text, carry = _plain(carry + raw, final=not data)
                with self._cond:
                    if not data:
                        self._closed = True
                    self._buffer += text
                    self._cond.notify_all()
                if not data:
                    return

    @property
    def text(self) -> str:
        """Everything the console printed so far (terminal escapes and CRs removed)."""
        with self._cond:
            return self._buffer

    def mark(self) -> int:
        """A position in the output; ``wait_for`` can search from it."""
        with self._cond:
            return len(self._buffer)

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the output from ``start`` on.

        Raises:
            BootError: not within ``timeout`` s, or the console closed; quotes the last lines.
        """
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if found := regex.search(self._buffer, start):
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    tail = "\n".join(self._buffer.splitlines()[-25:])
                    why = "the console closed" if self._closed else f"not within {timeout} s"
                    raise BootError(f"no console output matching {pattern!r}: {why}; last lines:\n{tail}")
                self._cond.wait(min(left, 1.0))

    def write(self, text: str) -> None:
        """Type ``text`` on the console."""
        assert self._sock is not None
        self._sock.sendall(text.encode())

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Run a shell command on the console's root shell and return its output.

        The output is framed by markers the command echoes, so kernel lines before it do not count.

        Raises:
            BootError: no end marker within ``timeout`` s.
        """
        tag = f"{os.getpid()}{time.monotonic_ns() % 10**9}"
        start = self.mark()
        self.write(f"echo @@B{tag}; {command}; echo @@E{tag}:$?\n")
        # Not anchored at line start: the marker may follow the prompt. The echoed command line
        # holds "@@B<tag>;" and "@@E<tag>:$?", which these patterns do not match. Each marker must
        # end its line: ``$`` alone also matches at the end of the buffer, where a partly arrived
        # echo of the command line ("... echo @@B<tag>") or exit status ("@@E<tag>:1" of 127) can be.
        begin = self.wait_for(rf"@@B{tag}\n", timeout, start)
        end = self.wait_for(rf"^@@E{tag}:(\d+)\n", timeout, begin.end())
        with self._cond:
            return self._buffer[begin.end() : end.start()].strip("\n")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Guest:
    """A booted guest for tests: QEMU in the background, its console, its monitor."""

    def __init__(self, target: Target, image: Image, options: BootOptions, run_dir: Path) -> None:
        self.target = target
        self.image = image
        self.run_dir = run_dir
        self.options = dataclasses.replace(options, console_socket=run_dir / "console.sock")
        self.console = Console(run_dir / "console.sock", run_dir / "console.text")
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        """Start QEMU and connect the console.

        Raises:
            BootError: QEMU is missing or exited at once (its stderr is quoted).
        """
        _check_tools(self.target)
        argv = qemu_command(self.target, self.image, self.options, self.run_dir)
        write_config_disk(self.target, self.options, self.run_dir)
        (self.run_dir / "qemu.argv").write_text("\n".join(argv) + "\n")
        self.started = time.monotonic()
        stderr = (self.run_dir / "qemu.stderr").open("wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        stderr.close()
        try:
            self.console.connect(timeout=30)
        except BootError:
            self.stop()
            raise BootError(
                f"QEMU did not start: {(self.run_dir / 'qemu.stderr').read_text(errors='replace').strip()}"
            ) from None

    def login(self, timeout: float) -> None:
        """Wait for the console's root shell (the rig's autologin) and quiet the kernel on it.

        Raises:
            BootError: no shell prompt within ``timeout`` s, or QEMU exited (its stderr is quoted).
        """
        try:
            self.console.wait_for(rf"{PROMPT}:\S*# ", timeout)
        except BootError as exc:
            raise BootError(f"{exc}{self.exit_report()}") from None
        self.console.run(
            "dmesg -n 1; stty -echo; bind 'set enable-bracketed-paste off';"
            " export SYSTEMD_COLORS=0 SYSTEMD_URLIFY=0 SYSTEMD_PAGER=cat",
            timeout=60,
        )

    def exit_report(self) -> str:
        """If QEMU has exited: its exit code and stderr, for error messages; else empty."""
        if self.proc is None or self.proc.poll() is None:
            return ""
        stderr = (self.run_dir / "qemu.stderr").read_text(errors="replace").strip()
        return f"\nQEMU exited with {self.proc.returncode}: {stderr}"

    def monitor(self, command: str, timeout: float = 10.0) -> str:
        """One QEMU human-monitor command; returns what the monitor printed."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.run_dir / "monitor.sock"))
            out = b""
            while b"(qemu)" not in out:
                out += sock.recv(4096)
            sock.sendall(command.encode() + b"\n")
            reply = b""
            with contextlib.suppress(TimeoutError, OSError):
                while reply.count(b"(qemu)") < 1:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            return reply.decode(errors="replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        """Quit QEMU (monitor ``quit``, then SIGKILL) and close the console; returns its exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    self.monitor("quit", timeout=5)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout)
            code = self.proc.returncode
        self.console.close()
        return code


@contextlib.contextmanager
def booted(target: Target, image: Image, options: BootOptions, run_dir: Path) -> Iterator[Guest]:
    """A started guest (console connected), stopped on exit."""
    guest = Guest(target, image, options, run_dir)
    guest.start()
    try:
        yield guest
    finally:
        guest.stop()
