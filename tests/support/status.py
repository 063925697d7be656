"""Reading a running dvrlinkd's status file from a test that polls it."""

from __future__ import annotations

from pathlib import Path

from dvrlink.daemon.status import DaemonStatus, StatusUnavailable, read_status


def status_or_none(run_dir: Path) -> DaemonStatus | None:
    """The status ``dvrlinkd`` wrote in ``run_dir``, or None while there is none (it is starting,
    or the file is being replaced)."""
    try:
        return read_status(run_dir)
    except (StatusUnavailable, ValueError):
        return None
