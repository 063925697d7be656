"""dvrlinkd in the QEMU guest: boot to registered, idle RSS/CPU, memory headroom, CPU per streamed Mbit/s.

``python -m bench.hil_guest --arch arm64|armhf [--mem MB] [--idle-minutes N] [--stream-mbytes N]
[--openssl FILE]`` (root: it builds or finds the rig's cached image and boots it under TCG).

It boots the image with the rig's board (``rigs/qemu-ARCH.toml``, the image's own init and
config) against ``dvrlink-broker`` on the host, as ``tests/hil`` does, and prints:

1. QEMU start to "registered" at the host's broker (the broker's first-registration log line).
2. ``dvrlinkd``'s VmRSS and its CPU (utime + stime from ``/proc/PID/stat``) over an idle window:
   ``--idle-seconds`` (60), or ``--idle-minutes`` when given; then the guest's MemFree and
   MemAvailable. Issue 12's target for the 128 MB armhf board after 10 min idle: MemFree ≥ 32 MB
   and MemAvailable ≥ 64 MB (judged when the guest has 128 MB).
3. A viewer on the host pairs and fetches a file of ``--stream-mbytes`` MB from BusyBox httpd in
   the guest through ``dvrlink forward --direct-only``; dvrlinkd's CPU seconds over the transfer
   per Mbit carried, and the guest's whole CPU use meanwhile.
4. Beside it, in the same guest: ``openssl speed -elapsed -evp chacha20-poly1305 -bytes 1024``
   (the guest's openssl, else ``--openssl FILE``, an openssl binary for the guest's architecture
   fetched by the guest from the host over HTTP; else it says the image has none), and the same
   AEAD through the guest's Python ``cryptography`` (what dvrlinkd's sessions use) on 1 KB.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import http.server
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.common import BenchError, run_main, verdict
from hil.board import Board, guest_config, start_qemu_board
from hil.loopback import Viewer, add_user, start_forward
from hil.qemu.build import build
from hil.qemu.host import HostBroker
from hil.qemu.rigconfig import image_config_path
from hil.qemu.targets import target
from hil.rig import load_rig

REPO = Path(__file__).resolve().parents[1]
WEB_ROOT = "/tmp/www"
MEMFREE_TARGET_KB = 32 * 1024
MEMAVAILABLE_TARGET_KB = 64 * 1024
NICS = {"virtio": "virtio-net-pci", "e1000": "e1000"}
NIC_HELP = (
    "the guest's network card: virtio (the rig's; no checksum offload on QEMU's user network, so no "
    "UDP GSO) or e1000 (checksum offload, as on recorder MACs that have it)"
)
TOP_RSS = (
    "for d in /proc/[0-9]*; do r=$(sed -n 's/^VmRSS:[[:space:]]*//p' $d/status 2>/dev/null); "
    "[ -n \"$r\" ] && echo \"${r% kB} $(tr '\\0' ' ' < $d/cmdline | cut -c1-40)\"; "
    "done | sort -rn | head -6"
)
"""The guest's six largest processes: VmRSS in kB and the start of the command line."""
PY_AEAD = (
    "import os, time\n"
    "from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305\n"
    "a = ChaCha20Poly1305(os.urandom(32)); n = os.urandom(12); m = os.urandom(1024)\n"
    "count = 0; start = time.perf_counter()\n"
    "while time.perf_counter() - start < 3.0:\n"
    "    for _ in range(100): a.encrypt(n, m, None)\n"
    "    count += 100\n"
    "print(f'{count * 1024 / (time.perf_counter() - start) / 1e3:.1f}k')\n"
)
"""ChaCha20-Poly1305 on 1 KB messages through cryptography for 3 s: kB/s (1000 bytes)."""


@dataclasses.dataclass
class Figures:
    """What one run saw; printed at the end as one block."""

    arch: str
    mem_mb: int
    lines: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    stream_ms_per_mbit: float | None = None
    """dvrlinkd's CPU ms per Mbit carried over the direct stream (bench.data_plane reads it)."""
    openssl_kbytes_s: float | None = None
    """``openssl speed`` ChaCha20-Poly1305 at 1 KB in the guest, in 1000 bytes/s."""

    def add(self, what: str, value: str) -> None:
        self.lines.append((what, value))
        print(f"  {what}: {value}", flush=True)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


RESTART = " ".join(
    (
        "f=/run/dvrlink/status.json; old=$(grep -o '\"started_at\": [0-9.]*' $f);",
        "if command -v systemctl >/dev/null; then systemctl restart dvrlinkd;",
        "else /etc/init.d/S95dvrlinkd restart >/dev/null 2>&1; fi; i=0;",
        "while [ $i -lt 300 ]; do",
        'if grep -q \'"state": "online"\' $f 2>/dev/null',
        '&& [ "$(grep -o \'"started_at": [0-9.]*\' $f)" != "$old" ]; then break; fi;',
        "sleep 1; i=$((i+1)); done;",
        "p=$(grep -o '\"pid\": [0-9]*' $f | grep -o '[0-9]*$');",
        "r=$(grep -o '\"registered_at\": [0-9.]*' $f | grep -o '[0-9.]*$');",
        "a=$(grep -o '\"started_at\": [0-9.]*' $f | grep -o '[0-9.]*$');",
        "b=$(python3 -c 'import time; print(time.time() - float(open(\"/proc/uptime\").read().split()[0]))')",
        ";",
        "echo \"restarted $r $b $(cut -d' ' -f22 /proc/$p/stat) $i $a\"",
    )
)
"""Restart dvrlinkd with the image's init and wait (up to 300 s, looking at status.json once a
second, so that the waiting takes next to no CPU from the one vCPU) until the new process is
online; then print its ``registered_at`` (unix time, written by dvrlinkd itself), the boot's unix
time (from a python3 started only after the measurement) and the process's start time (clock
ticks since boot, /proc/PID/stat field 22)."""


def warm_restart(board: Board, hz: int) -> str:
    """Seconds from the new dvrlinkd process's start to its registration, after a restart with
    the image's init (the files it reads are in the page cache: a warm start).

    Raises:
        BenchError: the guest's answer has no figures, or the daemon did not come back online.
    """
    text = board.run(RESTART, timeout=400)
    found = re.search(r"restarted ([\d.]+) ([\d.]+) (\d+) (\d+) ([\d.]+)", text)
    if found is None:
        raise BenchError(f"no figures from the warm restart; the guest said: {text[-400:]!r}")
    registered_at, booted_at = float(found.group(1)), float(found.group(2))
    started_ticks, polls = int(found.group(3)), int(found.group(4))
    if polls >= 300:
        raise BenchError("dvrlinkd was not online again within 300 s of its restart")
    process_start = booted_at + started_ticks / hz
    seconds = registered_at - process_start
    running = float(found.group(5))  # status.json's started_at: dvrlinkd's run began, imports done
    return (
        f"{seconds:.1f} s (target ≤ 5 s: {verdict(seconds <= 5.0)}): to the daemon's run "
        f"(interpreter, imports, config) {running - process_start:.1f} s, then to registered "
        f"{registered_at - running:.1f} s"
    )


IMPORT_TIME = (
    "for i in 1 2 3; do python3 -X importtime -c 'import dvrlink.daemon.cli' 2>&1 | tail -1; done; "
    "for i in 1 2 3; do s=$(cut -d' ' -f1 /proc/uptime); python3 -c pass; "
    "e=$(cut -d' ' -f1 /proc/uptime); echo \"interpreter $s $e\"; done"
)
"""The daemon's imports, three times (importtime's last line is the top-level module with its
cumulative microseconds), and a bare interpreter start three times (from /proc/uptime)."""


def import_time(board: Board) -> str:
    """Seconds the guest's python3 takes to import what ``dvrlinkd`` imports at start (the best of
    three warm runs), and to start a bare interpreter.

    Raises:
        BenchError: the guest printed no figures.
    """
    text = board.run(IMPORT_TIME, timeout=600)
    imports = [
        int(m) / 1e6 for m in re.findall(r"import time:\s+\d+ \|\s+(\d+) \| dvrlink\.daemon\.cli", text)
    ]
    bare = [float(e) - float(s) for s, e in re.findall(r"interpreter ([\d.]+) ([\d.]+)", text)]
    if not imports or not bare:
        raise BenchError(f"no import figures from the guest: {text[-400:]!r}")
    return f"{min(imports):.2f} s (a bare python3 starts in {min(bare):.2f} s)"


def daemon_pid(board: Board) -> int:
    """dvrlinkd's PID in the guest: systemd's MainPID, else the process running /usr/bin/dvrlinkd."""
    script = (
        "if command -v systemctl >/dev/null; then systemctl show -p MainPID --value dvrlinkd; else "
        "for d in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $d/cmdline 2>/dev/null); case \"$c\" in "
        "*status*|*pairing-code*|*check-config*) ;; *python3*/usr/bin/dvrlinkd*) echo ${d#/proc/};; esac; "
        "done | sort -n | head -1; fi"
    )
    text = board.run(script)
    found = re.search(r"^(\d+)\s*$", text, re.M)
    if found is None or found.group(1) == "0":
        raise BenchError(f"no dvrlinkd process in the guest; the shell said: {text!r}")
    return int(found.group(1))


def cpu_sample(board: Board, pid: int) -> tuple[int, float, int, int]:
    """(dvrlinkd's utime+stime in ticks, guest uptime s, guest busy ticks, guest total ticks)."""
    text = board.run(f"cat /proc/{pid}/stat; cat /proc/uptime; head -1 /proc/stat")
    lines = [line for line in text.splitlines() if line.strip()]
    stat = next((line for line in lines if line.startswith(f"{pid} (")), None)
    cpu = next((line for line in lines if line.startswith("cpu ")), None)
    uptime = next((line for line in lines if re.match(r"^\d+\.\d+ \d+\.\d+$", line)), None)
    if stat is None or cpu is None or uptime is None:
        raise BenchError(f"could not read dvrlinkd's (pid {pid}) CPU in the guest: {text!r}")
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    counters = [int(v) for v in cpu.split()[1:]]
    idle = counters[3] + (counters[4] if len(counters) > 4 else 0)
    return ticks, float(uptime.split()[0]), sum(counters) - idle, sum(counters)


def meminfo(board: Board, pid: int | None = None) -> dict[str, int]:
    """The guest's /proc/meminfo in kB, and dvrlinkd's VmRSS as ``VmRSS``."""
    command = "cat /proc/meminfo" + (f"; grep VmRSS /proc/{pid}/status" if pid else "")
    text = board.run(command)
    values = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}
    if "MemFree" not in values:
        raise BenchError(f"no MemFree in the guest's /proc/meminfo: {text!r}")
    return values


def clock_ticks(board: Board) -> int:
    text = board.run("getconf CLK_TCK 2>/dev/null || echo 100")
    found = re.search(r"^(\d+)$", text, re.M)
    return int(found.group(1)) if found else 100


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_file(path: Path) -> Iterator[int]:
    """Serve ``path``'s folder over HTTP on the host's 127.0.0.1 (the guest's 10.0.2.2); the port."""
    handler = functools.partial(_QuietHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def openssl_speed(board: Board, openssl: Path | None, host_address: str) -> tuple[float | None, str]:
    """``openssl speed`` ChaCha20-Poly1305 at 1 KB in the guest: (kB/s, text), or (None, why not)."""
    run = board.run
    binary = run("command -v openssl || echo none").strip().splitlines()[-1]
    if binary == "none":
        if openssl is None:
            return (
                None,
                "none: the image has no openssl binary (pass --openssl FILE for the guest's architecture)",
            )
        with serve_file(openssl) as port:
            got = run(
                f"busybox wget -q -O /tmp/openssl http://{host_address}:{port}/{openssl.name} "
                "&& chmod 755 /tmp/openssl && echo fetched",
                timeout=300,
            )
        if "fetched" not in got:
            return None, f"none: the guest could not fetch {openssl.name} from the host: {got!r}"
        binary = "/tmp/openssl"
    out = run(f"{binary} speed -elapsed -seconds 3 -evp chacha20-poly1305 -bytes 1024 2>&1", timeout=300)
    found = re.search(r"^chacha20[-_]poly1305\s+([\d.]+)k", out, re.M | re.I)
    version = run(f"{binary} version 2>&1").strip().split(" (")[0]
    if found is None:
        return None, f"no figure in openssl speed's output: {out[-400:]!r}"
    return float(found.group(1)), f"{found.group(1)}k ({version})"


def per_mbit(kbytes_s: float) -> str:
    """A kB/s (1000 bytes) rate as Mbit/s and as CPU ms per Mbit (one core busy)."""
    mbit_s = kbytes_s * 8 / 1000
    return f"{mbit_s:.1f} Mbit/s = {1000 / mbit_s:.2f} ms per Mbit"


def boot(
    args: argparse.Namespace, run_dir: Path, extra: Callable[[Board, str], None] | None = None
) -> Figures:
    """Boot, measure, stop; returns the figures. ``extra(board, host_address)``, if given, runs
    in the booted guest after the AEAD figures (bench.data_plane runs bench.udp_batching there)."""
    rig = load_rig(REPO / f"rigs/qemu-{args.arch}.toml")
    if args.mem:
        rig = dataclasses.replace(rig, board=dataclasses.replace(rig.board, mem_mb=args.mem))
    board_target = target(args.arch)
    mem = rig.board.mem_mb or board_target.default_mem_mb
    figures = Figures(args.arch, mem)
    say(f"{args.arch}: the image (cached unless the tree changed)")
    image = build(board_target, out=sys.stderr)
    for sub in ("broker", "board", "viewer"):
        (run_dir / sub).mkdir()
    broker = HostBroker.start(run_dir / "broker")
    board = None
    try:
        config = guest_config(
            image_config_path().read_text(),
            rig,
            rig.network.host_address,
            broker.info.udp_port,
            broker.info.public_key,
        )
        say(f"{args.arch}: booting under TCG with {mem} MB ({rig.board.init} init, {NICS[args.nic]})")
        board = start_qemu_board(rig, board_target, image, config, run_dir / "board", nic=NICS[args.nic])
        pattern = rf"serial {rig.serial} bound to key .* on first registration from "
        try:
            broker.process.wait_for(pattern, rig.board.boot_timeout_s)
        except TimeoutError as exc:
            where = board.guest.exit_report() if board.guest is not None else ""
            raise BenchError(f"{rig.name}: the guest did not register: {exc}{where}") from None
        registered_s = time.monotonic() - board.powered_at
        figures.add("QEMU start to registered", f"{registered_s:.1f} s")
        board.ready(600)
        hz = clock_ticks(board)
        pid = daemon_pid(board)
        mem0 = meminfo(board, pid)
        figures.add(
            "just registered: dvrlinkd VmRSS / guest MemFree / MemAvailable",
            f"{mem0.get('VmRSS', 0) / 1024:.1f} / {mem0['MemFree'] / 1024:.1f} / "
            f"{mem0.get('MemAvailable', 0) / 1024:.1f} MB",
        )
        idle_s = args.idle_minutes * 60 if args.idle_minutes else args.idle_seconds
        say(f"{args.arch}: idle for {idle_s:.0f} s")
        t0 = cpu_sample(board, pid)
        deadline = time.monotonic() + idle_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(60.0, left))  # a measuring window, not a wait for an event
            if args.idle_minutes and left > 60:
                now = meminfo(board)
                say(
                    f"  MemFree {now['MemFree'] / 1024:.1f} MB, "
                    f"MemAvailable {now.get('MemAvailable', 0) / 1024:.1f} MB"
                )
        t1 = cpu_sample(board, pid)
        if daemon_pid(board) != pid:
            figures.add(
                "note", "dvrlinkd restarted during the idle window: the CPU figure mixes two processes"
            )
        cpu_s = (t1[0] - t0[0]) / hz
        window = t1[1] - t0[1]
        mem1 = meminfo(board, pid)
        figures.add(
            f"idle {window:.0f} s: dvrlinkd CPU / VmRSS",
            f"{100 * cpu_s / window:.3f} % of a core ({cpu_s:.2f} s) / {mem1.get('VmRSS', 0) / 1024:.1f} MB",
        )
        free_kb, avail_kb = mem1["MemFree"], mem1.get("MemAvailable", 0)
        judged = mem == 128 and args.idle_minutes >= 10
        passed = free_kb >= MEMFREE_TARGET_KB and avail_kb >= MEMAVAILABLE_TARGET_KB
        total = mem1.get("MemTotal", 0) / 1024
        figures.add(
            f"after {window / 60:.1f} min idle: MemFree / MemAvailable (MemTotal {total:.1f} MB)",
            f"{free_kb / 1024:.1f} / {avail_kb / 1024:.1f} MB"
            + (f" (target ≥ 32 / ≥ 64 MB: {verdict(passed)})" if judged else ""),
        )
        parts = (
            "Cached",
            "Buffers",
            "AnonPages",
            "Shmem",
            "SReclaimable",
            "SUnreclaim",
            "KernelStack",
            "PageTables",
        )
        figures.add(
            "where the memory is (/proc/meminfo)",
            ", ".join(f"{name} {mem1.get(name, 0) / 1024:.1f}" for name in parts) + " MB",
        )
        biggest = board.run(TOP_RSS)
        figures.add("largest processes (VmRSS kB, command)", "; ".join(biggest.splitlines()))
        stream_ms = stream(args, board, broker, pid, hz, figures, run_dir) if args.stream_mbytes else None
        rate, text = openssl_speed(board, args.openssl, rig.network.host_address)
        figures.stream_ms_per_mbit, figures.openssl_kbytes_s = stream_ms, rate
        if rate is not None:
            text += f": {per_mbit(rate)}"
            if stream_ms is not None:
                text += f"; dvrlinkd's CPU per streamed Mbit is {stream_ms / (125_000 / rate):.0f} times that"
        figures.add("openssl speed -elapsed -evp chacha20-poly1305, 1 KB", text)
        program = base64.b64encode(PY_AEAD.encode()).decode()
        aead = (
            board.run(f"python3 -c \"import base64; exec(base64.b64decode('{program}'))\"", timeout=300)
            .strip()
            .splitlines()[-1:]
        )
        found = re.search(r"([\d.]+)k", " ".join(aead))
        figures.add(
            "Python cryptography ChaCha20Poly1305.encrypt, 1 KB",
            f"{found.group(1)}k: {per_mbit(float(found.group(1)))}" if found else f"no figure: {aead}",
        )
        if extra is not None:
            extra(board, rig.network.host_address)
        figures.add("warm restart: dvrlinkd process start to registered", warm_restart(board, hz))
        figures.add("import dvrlink.daemon.cli, warm, guest's python3 (best of 3)", import_time(board))
    finally:
        if board is not None:
            board.close()
        broker.stop()
    return figures


def stream(
    args: argparse.Namespace,
    board: Board,
    broker: HostBroker,
    pid: int,
    hz: int,
    figures: Figures,
    run_dir: Path,
) -> float:
    """A viewer on the host fetches ``--stream-mbytes`` MB from httpd in the guest through dvrlinkd;
    returns dvrlinkd's CPU ms per Mbit carried."""
    run = board.run
    size = args.stream_mbytes * 1024 * 1024
    made = run(
        f"mkdir -p {WEB_ROOT} && dd if=/dev/zero of={WEB_ROOT}/blob bs=1048576 count={args.stream_mbytes} "
        f"2>/dev/null && busybox httpd -p 127.0.0.1:80 -h {WEB_ROOT} && echo serving",
        timeout=300,
    )
    if "serving" not in made:
        raise BenchError(f"BusyBox httpd in the guest: {made!r}")
    label = run("dvrlinkd pairing-code")
    uri = next((line.split(": ", 1)[1] for line in label.splitlines() if "dvrlink://" in line), None)
    if uri is None:
        raise BenchError(f"no pairing URI in dvrlinkd pairing-code:\n{label}")
    add_user(broker.state_dir, "bench", "pass phrase")
    viewer = Viewer(run_dir / "viewer")
    viewer.run(
        "login", "--broker", broker.url, "--user", "bench", "--password-stdin",
        "--cacert", str(broker.info.cert), stdin="pass phrase\n",
    )  # fmt: skip
    viewer.run("pair", uri.strip())
    forward = start_forward(viewer, board.serial, 80, "--direct-only", timeout=180)
    try:
        url = f"http://127.0.0.1:{forward.local_port}/blob"
        s0 = cpu_sample(board, pid)
        started = time.monotonic()
        received = 0
        with urllib.request.urlopen(url, timeout=600) as reply:
            while chunk := reply.read(65536):
                received += len(chunk)
        elapsed = time.monotonic() - started
        s1 = cpu_sample(board, pid)
    finally:
        forward.stop()
    run(f"rm -f {WEB_ROOT}/blob")
    if received != size:
        raise BenchError(f"fetched {received} bytes of {size} through the forward")
    mbit = received * 8 / 1e6
    cpu_s = (s1[0] - s0[0]) / hz
    window = s1[1] - s0[1]
    busy = (s1[2] - s0[2]) / max(1, s1[3] - s0[3])
    figures.add(
        f"stream {args.stream_mbytes} MB guest → host (direct)",
        f"{mbit / elapsed:.2f} Mbit/s over {elapsed:.1f} s; dvrlinkd {cpu_s:.2f} CPU s = "
        f"{cpu_s / mbit * 1000:.1f} ms per Mbit ({100 * cpu_s / window:.0f} % of a core); "
        f"guest busy {100 * busy:.0f} %",
    )
    return cpu_s / mbit * 1000


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.hil_guest``: see the module's docstring."""
    parser = argparse.ArgumentParser(
        description="dvrlinkd in the QEMU guest: boot, idle, memory, streaming CPU"
    )
    parser.add_argument("--arch", default="arm64", choices=("arm64", "armhf"))
    parser.add_argument("--mem", type=int, default=0, help="guest RAM in MB (default: the rig's)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle window (default 60 s)")
    parser.add_argument("--idle-minutes", type=float, default=0.0, help="a longer idle window, in minutes")
    parser.add_argument("--stream-mbytes", type=int, default=16, help="MB fetched through dvrlinkd (0: skip)")
    parser.add_argument("--openssl", type=Path, default=None, help="an openssl binary for the guest's arch")
    parser.add_argument("--nic", choices=tuple(NICS), default="virtio", help=NIC_HELP)
    args = parser.parse_args(argv)

    def body() -> None:
        if os.geteuid() != 0:
            raise BenchError("the QEMU rig needs root (image build, boot): run it with sudo")
        with tempfile.TemporaryDirectory(prefix="dvrlink-hil-guest-") as tmp:
            started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(f"hil_guest: {' '.join(sys.argv[1:]) or '(defaults)'}; {started}", flush=True)
            figures = boot(args, Path(tmp))
        print(f"\nhil_guest {figures.arch}, {figures.mem_mb} MB guest, {started}:")
        for what, value in figures.lines:
            print(f"| {what} | {value} |")

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
