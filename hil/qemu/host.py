"""Processes the rig runs on the host next to the guest (the broker, later a viewer)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dvrlink.broker.state import BrokerInfo, read_info

BIN = Path(sys.executable).parent
"""Where this environment's dvrlink programs are."""


class LoggedProcess:
    """A host process whose stderr lines are kept (and logged); ``wait_for`` waits for one."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._done = False
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._thread = threading.Thread(target=self._read, args=(log,), daemon=True)
        self._thread.start()

    def _read(self, log: Path) -> None:
        assert self.proc.stderr is not None
        with log.open("w") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first line (seen or to come) matching ``pattern``.

        Raises:
            TimeoutError: none within ``timeout`` s, or the process exited; quotes its last lines.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._done:
                    why = "it exited" if self._done else f"not within {timeout} s"
                    raise TimeoutError(f"no line matching {pattern!r} ({why}):\n" + "".join(self.lines[-30:]))
                self._cond.wait(min(left, 1.0))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (SIGKILL past ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout)
        self._thread.join(timeout)
        return code


@dataclass(frozen=True)
class HostBroker:
    """dvrlink-broker running on the host: its process (log lines), ports and key, state."""

    process: LoggedProcess
    info: BrokerInfo
    state_dir: Path

    @classmethod
    def start(
        cls,
        state_dir: Path,
        timeout: float = 60.0,
        *,
        netns: str | None = None,
        loopback_peers: bool = True,
    ) -> HostBroker:
        """Start ``dvrlink-broker serve`` on all addresses with free ports (inside network
        namespace ``netns`` when given); wait until it is ready.

        With ``loopback_peers`` its TURN relay may relay to loopback peers: QEMU's user network
        hands the guest's packets to the host's loopback, so a guest's relayed peer address is
        127.0.0.1.

        Raises:
            TimeoutError: it did not report ready within ``timeout`` s (it is stopped).
        """
        argv = ["ip", "netns", "exec", netns] if netns is not None else []
        argv += [str(BIN / "dvrlink-broker"), "serve", "--state-dir", str(state_dir)]
        if loopback_peers:
            argv.append("--turn-allow-loopback-peers")
        for option in ("--udp-port", "--https-port", "--turn-port", "--presence-tcp-port"):
            argv += [option, "0"]
        process = LoggedProcess(argv, state_dir / "broker.log")
        try:
            process.wait_for("dvrlink-broker ready", timeout)
        except TimeoutError:
            process.stop()
            raise
        return cls(process, read_info(state_dir), state_dir)

    @property
    def url(self) -> str:
        """The viewer API's base URL on the host."""
        return f"https://127.0.0.1:{self.info.https_port}"

    def stop(self) -> int:
        """SIGTERM and the exit code."""
        return self.process.stop()
