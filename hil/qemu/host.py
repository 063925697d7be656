"""Processes the rig runs on the host next to the guest (the broker, later a viewer)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path


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
