"""A real PostgreSQL server for the tests (``hil/postgres_server.py``), one per test session.

Use the ``postgres_server`` fixture (import it into the test module) and ``postgres_url`` for a
fresh, empty database per test, so tests stay independent. Without PostgreSQL's server binaries
the tests that need it are skipped with a note that ``make system-packages`` installs them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.postgres_server import PostgresServer, find_bindir, free_port

__all__ = ["PostgresServer", "find_bindir", "free_port", "postgres_server", "postgres_url"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session; skips if the server binaries are missing."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed; `make system-packages` "
            "installs them (Debian package postgresql)"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb cannot be run as another user")
    server = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="dvrlink-pg-")))
    try:
        server.init()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on a running server, dropped after the test (the
    server is started again first if the test left it stopped)."""
    if not postgres_server.running:
        postgres_server.start()
    url = postgres_server.new_database()
    yield url
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.drop_database(url)
