"""The README's "Running it by hand" section, run as it is written.

The commands come from README.md itself: every ``sh`` block of that section, in order, each line
(with its here-document) one command. Only the machine paths move into a temporary directory
(``/var/lib/dvrlink…``, ``/etc/dvrlink``, ``/run/dvrlink``); ports, addresses and every other
word are the README's. The commands run in a network namespace this test makes, so the broker's
default ports (3478, 3479, 8443, 443) are free and nothing leaves the machine. A line that ends
with ``&`` starts a long-running program; the test waits until it is ready (broker: broker.json;
dvrlinkd: status online; a forward: its port accepts) before the next line, as a person would.

What the test provides, as the person would have it: the programs on PATH, a network interface
with an address besides loopback, a web page on the recorder's port 80 (the forward's target),
and an empty home directory for the viewer.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SECTION = "## Running it by hand"
BIN = Path(sys.executable).parent
PAGE = "<h1>Recorder DL-0001-0002</h1>\n"
# Machine paths the README names, moved under the test's root (longest first).
MACHINE_PATHS = re.compile(r"(?<![\w./-])/(var/lib/dvrlink-broker|var/lib/dvrlink|etc/dvrlink|run/dvrlink)")
LAN_ADDRESS = "198.18.0.10/24"  # benchmarking range (RFC 2544), on a veth pair inside the namespace
READY_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 120.0

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for its own network namespace"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip netns)"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="the README uses curl"),
]


@dataclass(frozen=True)
class Step:
    """One command of the README: its text, whether it ends with ``&``, and where it was."""

    text: str
    background: bool
    line: int


def readme_steps(text: str) -> list[Step]:
    """The commands of the by-hand section, in order."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    offset = text[:start].count("\n")
    lines = section.splitlines()
    steps: list[Step] = []
    index = 0
    in_block = False
    while index < len(lines):
        line = lines[index]
        number = offset + index + 1
        index += 1
        if line.startswith("```"):
            in_block = line.strip() == "```sh" if not in_block else False
            continue
        if not in_block or not line.strip() or line.lstrip().startswith("#"):
            continue
        command = line
        while command.endswith("\\") and index < len(lines):
            command = command[:-1] + lines[index]
            index += 1
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", command)
        if heredoc:
            body: list[str] = []
            while index < len(lines) and lines[index] != heredoc.group(1):
                body.append(lines[index])
                index += 1
            index += 1  # the terminator
            command = "\n".join([command, *body, heredoc.group(1)])
        first = command.split("\n", 1)[0]
        bare = re.sub(r"\s#.*$", "", first).rstrip()
        background = bare.endswith("&") and not bare.endswith("&&")
        if background:
            command = bare[:-1].rstrip() + command[len(first) :]
        steps.append(Step(command, background, number))
    return steps


def test_the_section_has_the_whole_flow() -> None:
    """The parse itself: the flow a person needs is there, or the README changed its shape."""
    steps = readme_steps(README.read_text())
    words = [step.text.split()[0:2] for step in steps]
    for needed in (
        ["dvrlink-broker", "serve"],
        ["dvrlinkd", "run"],
        ["dvrlinkd", "status"],
        ["dvrlink", "pair"],
        ["dvrlink", "forward"],
        ["curl", "-sS"],
    ):
        assert needed in words, f"the by-hand section has no `{' '.join(needed)}` step: {words}"
    assert [s.text.split()[1] for s in steps if s.background] == ["serve", "run", "forward"]


class Namespace:
    """A network namespace with loopback up, and the processes started in it."""

    def __init__(self, root: Path) -> None:
        self.name = f"dvrlink-readme-{os.getpid()}"
        self.root = root
        self.env = {
            "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(root / "home"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        self.background: list[tuple[Step, subprocess.Popen[bytes], Path]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=30)
        try:
            self._set_up()
        except BaseException:
            subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=30)
            raise

    def _set_up(self) -> None:
        # loopback, and a LAN address with the default route, as a machine has (ICE leaves loopback
        # out of its host candidates, and the broker's relay announces the default route's address)
        for command in (
            ["link", "set", "lo", "up"],
            ["link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],
            ["link", "set", "lan1", "up"],
            ["addr", "add", LAN_ADDRESS, "dev", "lan0"],
            ["link", "set", "lan0", "up"],
            ["route", "add", "default", "dev", "lan0"],
        ):
            subprocess.run(["ip", "-n", self.name, *command], check=True, timeout=30)

    def argv(self, script: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, "bash", "-c", script]

    def run(self, script: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(script),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )

    def start(self, step: Step) -> Path:
        log = self.root / f"background-{len(self.background)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.argv(f"exec {step.text}"),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=self.env,
            )
        self.background.append((step, process, log))
        return log

    def logs(self) -> str:
        return "\n".join(
            f"--- `{step.text}` (README line {step.line}), exit {process.poll()}:\n{log.read_text()[-4000:]}"
            for step, process, log in self.background
        )

    def close(self) -> None:
        for _, process, _ in reversed(self.background):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, _ in reversed(self.background):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=30)


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    (tmp_path / "home").mkdir()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(PAGE)
    ns = Namespace(tmp_path)
    try:
        # the recorder's web page on port 80, which the README's [services] forward names
        ns.start(Step(f"{sys.executable} -m http.server 80 --bind 127.0.0.1 --directory {www}", True, 0))
        yield ns
    finally:
        ns.close()


def wait_ready_for(what: str, check: Callable[[], bool], ns: Namespace) -> None:
    """Wait until ``check()`` (bounded); fail at once if a background step has ended."""

    def ready() -> bool:
        for step, process, _ in ns.background:
            if process.poll() is not None:
                pytest.fail(f"`{step.text}` ended while waiting for {what}\n{ns.logs()}", pytrace=False)
        return check()

    wait_until(what, ready, timeout=READY_TIMEOUT_S, poll=0.2, seen=ns.logs)


def port_open(ns: Namespace, port: int) -> bool:
    return ns.run(f"exec 3<>/dev/tcp/127.0.0.1/{port}", timeout=30).returncode == 0


def wait_ready(step: Step, ns: Namespace) -> None:
    words = step.text.split()
    if words[:2] == ["dvrlink-broker", "serve"]:
        state = Path(words[words.index("--state-dir") + 1])
        wait_ready_for("broker.json in the broker's state directory", (state / "broker.json").exists, ns)
        wait_ready_for("the broker's API port 8443", lambda: port_open(ns, 8443), ns)
    elif words[:2] == ["dvrlinkd", "run"]:
        status = " ".join(["dvrlinkd", "status", *words[2:]])

        def online() -> bool:
            result = ns.run(status, timeout=30)
            return re.search(r"^state:\s+online", result.stdout, re.MULTILINE) is not None

        wait_ready_for(f"`{status}` to say online", online, ns)
    elif words[:2] == ["dvrlink", "forward"]:
        local = int(words[3].split(":")[0])
        wait_ready_for(f"the forward's local port {local}", lambda: port_open(ns, local), ns)


def test_readme_by_hand_section_runs_as_written(namespace: Namespace) -> None:
    steps = readme_steps(README.read_text())
    outputs: dict[str, str] = {}
    for step in steps:
        script = MACHINE_PATHS.sub(lambda m: f"{namespace.root}/{m.group(1)}", step.text)
        if step.background:
            started = Step(script, True, step.line)
            namespace.start(started)
            wait_ready(started, namespace)
            continue
        result = namespace.run(script)
        assert result.returncode == 0, (
            f"README line {step.line}: `{step.text}` exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{namespace.logs()}"
        )
        outputs[" ".join(step.text.split()[:2])] = result.stdout

    key = outputs["dvrlink-broker show-key"].strip()
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", key), f"show-key printed {key!r}, not a base64 X25519 key"
    serve_log = next(
        log for step, _, log in namespace.background if step.text.startswith("dvrlink-broker serve")
    ).read_text()
    assert key in serve_log, f"the broker did not print its key at start:\n{serve_log}"
    assert "alice" in outputs["dvrlink-broker user"], outputs["dvrlink-broker user"]
    assert "pairing code:" in outputs["dvrlinkd pairing-code"], outputs["dvrlinkd pairing-code"]
    assert "DL-0001-0002" in outputs["dvrlink devices"], outputs["dvrlink devices"]
    assert outputs["curl -sS"] == PAGE, f"through the forward came {outputs['curl -sS']!r}"
