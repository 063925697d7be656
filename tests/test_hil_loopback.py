"""hil.loopback's LineReader: lines of a child's pipe, each wait bounded."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hil.loopback import LineReader


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """Writes three lines in one write, then, after its stdin gives a line, a fourth without a newline."""
    script = (
        "import sys; sys.stdout.write('a\\nb\\nc\\n'); sys.stdout.flush(); "
        "sys.stdin.readline(); sys.stdout.write('d'); sys.stdout.flush()"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    yield proc
    proc.kill()
    proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def test_lines_read_together_are_each_offered_in_order(child: subprocess.Popen[bytes]) -> None:
    reader = LineReader(child.stdout)
    assert reader.until("a", lambda line: line == "a", 30) == "a"
    # "b" and "c" came in the same read as "a": they wait in the reader, not in a pipe buffer.
    assert reader.until("c", lambda line: line == "c", 30) == "c"
    assert reader.lines == ["a", "b", "c"]


def test_a_wait_ends_at_its_bound_and_names_what_it_saw(child: subprocess.Popen[bytes]) -> None:
    reader = LineReader(child.stdout)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"line x: not within 1 s; the last lines were:\na\nb\nc"):
        reader.until("line x", lambda line: line == "x", 1)
    assert 0.9 < time.monotonic() - started < 30
    assert not reader.ended


def test_the_last_line_without_a_newline_counts_and_the_end_is_reported(
    child: subprocess.Popen[bytes],
) -> None:
    reader = LineReader(child.stdout)
    assert child.stdin is not None
    child.stdin.write(b"go\n")
    child.stdin.flush()
    assert reader.until("d", lambda line: line == "d", 30) == "d"
    with pytest.raises(TimeoutError, match="the output ended"):
        reader.until("more", lambda line: True, 30)
    assert reader.ended and reader.lines == ["a", "b", "c", "d"]
