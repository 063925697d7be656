"""The suite's leak check: a test fails if it leaves behind what it started.

After each test, and after each test module (its module-scoped fixtures), the check compares
what this process holds with what it held before:

- asyncio tasks still pending when a loop's main coroutine returned (every loop ``asyncio.run``
  makes during the suite: the loops come from the event loop policy installed here);
- threads still alive;
- child processes still running;
- sockets still open (the ``socket:[inode]`` entries of /proc/self/fd);
- network namespaces this process's tests made (/run/netns, what ``ip netns list`` lists; as root
  only). Other workers and other runs on the machine make namespaces too, so only ours count: the
  labs' (``hil.netlab``, named with a prefix from ``new_prefix``, which this file records) and the
  README test's (``dvrlink-readme-PID``).

What is still closing gets a short, bounded grace period. The failure names each leftover with what
identifies it (a task's coroutine, a thread's name, a child's command line, a socket's addresses).
Tests under tests/hil are not checked: their board and its processes live for the whole session.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Coroutine, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

GRACE_S = 3.0
"""Seconds a leftover may take to go away (a socket closing, a thread returning, a child exiting)."""
TASK_GRACE_S = 1.0
"""Seconds a loop keeps running after its main coroutine returned, for tasks still finishing
(cancelled during teardown, a close handshake)."""
NETNS_DIR = Path("/run/netns")
HIL = Path(__file__).resolve().parent / "hil"


# -- asyncio tasks -----------------------------------------------------------------------------


class LeakCheckingLoop(asyncio.SelectorEventLoop):
    """A loop that, when its first ``run_until_complete`` (``asyncio.run``'s main coroutine)
    returns, lets pending tasks finish for ``TASK_GRACE_S`` and records those that did not."""

    def __init__(self, leaks: list[str]) -> None:
        super().__init__()
        self._leaks = leaks
        self._main_done = False

    def run_until_complete(self, future: asyncio.Future[T] | Coroutine[Any, Any, T]) -> T:
        result = super().run_until_complete(future)
        if not self._main_done:
            self._main_done = True
            self._settle()
        return result

    def _settle(self) -> None:
        deadline = time.monotonic() + TASK_GRACE_S
        for _ in range(1000):  # bounded in count as well as in time
            if not self._pending() or time.monotonic() > deadline:
                break
            super().run_until_complete(asyncio.sleep(0 if _ < 10 else 0.01))
        self._leaks.extend(f"asyncio task {task!r}" for task in self._pending())

    def _pending(self) -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks(self) if not task.done()]


class LeakCheckingPolicy(asyncio.DefaultEventLoopPolicy):
    """Makes every new event loop a ``LeakCheckingLoop`` reporting into ``leaks``."""

    def __init__(self, leaks: list[str]) -> None:
        super().__init__()
        self.leaks = leaks

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return LeakCheckingLoop(self.leaks)


# -- what the process holds --------------------------------------------------------------------


@dataclass(frozen=True)
class Holdings:
    threads: frozenset[threading.Thread]
    children: frozenset[int]
    sockets: frozenset[str]


def netns_names() -> frozenset[str]:
    """The named network namespaces (``ip netns list`` reads the same folder)."""
    try:
        return frozenset(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return frozenset()


def child_pids() -> frozenset[int]:
    """This process's children that still run (zombies, exited but not yet reaped, excluded)."""
    me = os.getpid()
    pids = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[1] == str(me) and fields[0] != "Z":
            pids.add(int(entry.name))
    return frozenset(pids)


def socket_inodes() -> frozenset[str]:
    """The inodes of this process's open sockets, from /proc/self/fd."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return frozenset(inodes)


def holdings() -> Holdings:
    return Holdings(
        frozenset(t for t in threading.enumerate() if t.is_alive()), child_pids(), socket_inodes()
    )


def describe_child(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"child process {pid} (gone while being described)"
    return f"child process {pid}: {' '.join(a.decode(errors='replace') for a in argv if a)}"


def _hex_address(text: str) -> str:
    """``0100007F:1F90`` (/proc/net/tcp) as ``127.0.0.1:8080``; IPv6 left in hex."""
    host, _, port = text.partition(":")
    if len(host) == 8:
        host = ".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0))
    return f"{host}:{int(port, 16)}"


def socket_table() -> dict[str, str]:
    """inode -> "tcp 127.0.0.1:1234 -> 127.0.0.1:80" for this process's network namespace."""
    table: dict[str, str] = {}
    for kind in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        try:
            lines = Path(f"/proc/self/net/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9:
                table[cols[9]] = f"{kind} {_hex_address(cols[1])} -> {_hex_address(cols[2])}"
    try:
        lines = Path("/proc/self/net/unix").read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        cols = line.split()
        if len(cols) >= 7:
            table[cols[6]] = f"unix {cols[7] if len(cols) > 7 else '(unnamed)'}"
    return table


def leftovers(before: Holdings, after: Holdings) -> list[str]:
    found = [
        f"thread {t.name!r} (daemon={t.daemon}, target={getattr(t, '_target', None)!r})"
        for t in after.threads - before.threads
    ]
    found += [describe_child(pid) for pid in sorted(after.children - before.children)]
    new_sockets = after.sockets - before.sockets
    if new_sockets:
        table = socket_table()
        found += [
            f"socket {table.get(inode, f'inode {inode} (another namespace, or a socket pair)')}"
            for inode in sorted(new_sockets)
        ]
    return found


def wait_for_release(before: Holdings) -> list[str]:
    """What is still held after ``GRACE_S`` (empty at once when nothing is left)."""
    left = leftovers(before, holdings())
    if not left:
        return []
    gc.collect()  # a socket or transport that only a reference cycle still holds
    deadline = time.monotonic() + GRACE_S
    pause = 0.01
    while left and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
        left = leftovers(before, holdings())
    return left


# -- the checks --------------------------------------------------------------------------------

TASK_LEAKS = pytest.StashKey[list[str]]()
REPORTED = pytest.StashKey[set[str]]()
"""Leftovers a test's check reported already: its module's check does not name them again."""
NETNS = pytest.StashKey["NamespaceOwnership"]()


class NamespaceOwnership:
    """Tells this process's network namespaces from those of other workers and runs: it records
    the prefixes ``hil.netlab.new_prefix`` hands out here (every lab names its namespaces with
    one), and knows the README test's name."""

    def __init__(self) -> None:
        self.prefixes: list[str] = []
        """In the order they were handed out: a check counts those handed out during its span, so
        a module's lab that a test reconfigures (new namespaces, same prefix) is the module's."""
        self.names = {f"dvrlink-readme-{os.getpid()}"}

    def install(self) -> None:
        """Wrap ``new_prefix`` where the labs and the tests find it (before they import it)."""
        import hil.netlab
        from hil.netlab import lab

        original = lab.new_prefix

        def recorded() -> str:
            prefix = original()
            self.prefixes.append(prefix)
            return prefix

        lab.new_prefix = recorded
        hil.netlab.new_prefix = recorded

    def ours(self, since: int = 0) -> frozenset[str]:
        """This process's namespaces: the README test's, and the labs' whose prefix was handed
        out since the ``since``-th."""
        prefixes = tuple(self.prefixes[since:])
        return frozenset(name for name in netns_names() if name in self.names or name.startswith(prefixes))


def checks_netns() -> bool:
    return os.geteuid() == 0 and NETNS_DIR.parent.is_dir()


def pytest_configure(config: pytest.Config) -> None:
    leaks: list[str] = []
    config.stash[TASK_LEAKS] = leaks
    config.stash[REPORTED] = set()
    asyncio.set_event_loop_policy(LeakCheckingPolicy(leaks))
    if checks_netns():
        ownership = NamespaceOwnership()
        ownership.install()
        config.stash[NETNS] = ownership


def pytest_unconfigure(config: pytest.Config) -> None:
    asyncio.set_event_loop_policy(None)


def check_around(config: pytest.Config, where: str) -> Iterator[None]:
    """Note what the process holds, run the test (or module), then fail naming what is left."""
    leaks = config.stash[TASK_LEAKS]
    leaks.clear()
    ownership = config.stash.get(NETNS, None)
    mark = len(ownership.prefixes) if ownership is not None else 0
    netns = ownership.ours(mark) if ownership is not None else frozenset()
    before = holdings()
    yield
    left = [*leaks, *wait_for_release(before)]
    leaks.clear()
    if ownership is not None:
        left += [
            f"network namespace {name} (remove it with `ip netns delete {name}`)"
            for name in sorted(ownership.ours(mark) - netns)
        ]
    reported = config.stash[REPORTED]
    left = [item for item in left if item not in reported]
    reported.update(left)
    if left:
        pytest.fail(f"{where} left behind:\n  " + "\n  ".join(left), pytrace=False)


def checked(path: Path) -> bool:
    return HIL not in path.parents


@pytest.fixture(autouse=True, scope="module")
def no_leaks_from_the_module(request: pytest.FixtureRequest) -> Generator[None, None, None]:
    """The module's fixtures (module-scoped labs) release what they started."""
    if not checked(request.path):
        yield
        return
    yield from check_around(request.config, f"module {request.path.name} (its module-scoped fixtures)")


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Generator[None, None, None]:
    """The test (with its function-scoped fixtures) releases what it started."""
    if not checked(request.path):
        yield
        return
    yield from check_around(request.config, f"test {request.node.nodeid}")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Any]:
    """A real redis-server of this test's own (``hil/redis_server.py``), stopped after it; for the
    cluster tests."""
    from hil.redis_server import redis_server

    with redis_server(tmp_path / "redis") as server:
        yield server
