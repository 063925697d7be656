"""Atomic writes for state files: a crash or power cut leaves the old file or the new one, never half."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``.

    The data goes to a temporary file in the same directory, is flushed to disk, then renamed
    over ``path``; the directory is synced so the rename survives a power cut.

    Raises:
        OSError: the directory does not exist or is not writable; the message names the path.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(
            exc.errno, f"cannot write {path}: {exc.strerror}; check that the directory exists and is writable"
        ) from exc
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
