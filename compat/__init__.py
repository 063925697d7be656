"""Other libraries' private names, one module per library, each name with a guard test.

dvrlink uses a few names that aioquic, aioice and asyncio do not publish, because they have no
public equivalent yet. They live here and nowhere else, so that an upgrade that moves one breaks
one module and its guard tests (``tests/test_compat_*.py``), not a session in the field:

- ``aioquic_compat``: sans-I/O (aioquic's ``QuicConnection`` does no I/O), so ``dvrlink.protocol``
  may import it;
- ``aioice_compat`` and ``asyncio_compat``: I/O; the session layer imports them, and the broker
  ``asyncio_compat`` (its presence link reads datagrams in batches).

Every accessor fails loudly: a name that is gone raises ``InternalsMoved``, which names the
library, its installed version and what to do, rather than falling back to a default that would
quietly switch a feature off. Each module's docstring lists the public API that could replace
each name upstream.

This package imports none of those libraries itself, so importing it costs nothing.
"""

from __future__ import annotations


class InternalsMoved(RuntimeError):
    """A private name of another library that dvrlink relies on is not where it was.

    Raised by the ``*_compat`` accessors; the message names the library and version, the name and
    what it is used for. The fix is to adapt the compat module to the new version (its guard tests
    show every name that moved) or to install a version inside the range ``pyproject.toml`` pins.
    """


def moved(
    library: str, name: str, used_for: str, version: str | None = None, remedy: str | None = None
) -> InternalsMoved:
    """Build the ``InternalsMoved`` error for ``name`` of ``library``. The installed version is
    looked up now, so the message says which release moved it; ``version`` overrides that (for
    asyncio, the Python version), and ``remedy`` the advice to install the pinned versions."""
    if version is None:
        from importlib import metadata  # noqa: PLC0415 (only on the error path)

        try:
            version = metadata.version(library)
        except metadata.PackageNotFoundError:
            version = "(version unknown)"
    return InternalsMoved(
        f"{library} {version} has no {name}, which dvrlink uses for {used_for}: this {library} "
        f"release moved it; adapt dvrlink.compat.{library}_compat to it (its guard tests list "
        f"every name that moved) or {remedy or f'install the {library} versions pyproject.toml pins'}"
    )
