"""A real PostgreSQL server on loopback for the cluster tests, benchmarks and ``make demo-cluster``:
Debian's ``initdb`` and ``pg_ctl`` in a folder of its own, on a free port.

``new_database()`` gives a fresh, empty database (``CREATE DATABASE`` from an empty template is
fast). ``stop()`` and ``start()`` take the server away and bring it back on the same port with
the same data, for what a broker does meanwhile.

``initdb`` refuses to run as root: as root every server command runs as the ``postgres`` system
user (``runuser``), in a directory that user owns. The server is made for speed, not safety
(``fsync = off``): its data is thrown away with its folder.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg

SUPERUSER = "dvrlink_test"
TEMPLATE = "dvrlink_template"
SERVER_USER = "postgres"  # the system user the server runs as when the tests run as root
START_TIMEOUT_S = 30


def find_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest
    /usr/lib/postgresql/N/bin; None if there is none."""
    found = shutil.which("initdb")
    if found is not None and shutil.which("pg_ctl") is not None:
        return Path(found).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL server in ``root`` (made here; removed by ``destroy``)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self.running = False
        self._as_other_user = os.geteuid() == 0
        self._names = itertools.count(1)

    def _run(self, argv: Sequence[str], timeout: float = START_TIMEOUT_S) -> None:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_other_user:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "(no log)"
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed with status {done.returncode}: {done.stderr.strip()}\n"
                f"server log (last lines):\n{log}"
            )

    def init(self) -> None:
        """``initdb`` with trust authentication on loopback, then start the server."""
        if self._as_other_user:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        options = ["--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]
        self._run(["initdb", "-D", str(self.data), "-U", SUPERUSER, *options])
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 50\n"
            )
        self.start()
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")

    def start(self) -> None:
        """Start the server (same port, same data) and wait until it accepts connections."""
        self._run(
            ["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT_S), "start"]
        )
        self.running = True

    def stop(self) -> None:
        """Stop the server at once (``-m fast``: sessions are ended, as a crash or a shutdown does)."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        self.running = False

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The server is down inside the block and up again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @contextlib.contextmanager
    def admin(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """A short autocommit connection to the ``postgres`` database (closed after the block,
        so the leak check sees no socket left)."""
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            yield conn

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (its connections are ended first)."""
        name = url.rsplit("/", 1)[1]
        if self.running:
            with self.admin() as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def destroy(self) -> None:
        """Stop the server if it runs and remove its directory."""
        try:
            if self.running:
                self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])
                self.running = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
