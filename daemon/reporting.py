"""When the device tells its broker about itself: the report policy. Sans-I/O; time passed in.

The daemon keeps one ``Reporter`` and feeds it what it learns (``update``: modem signal, radio
technology, operator, data used, state; its keepalive interval, the NAT lifetime it measured,
the presence transport). ``due`` says whether a report should go out now. Reports ride on
keepalives (``PresenceClient.report``), so a report costs a few dozen bytes, not a datagram;
still, on a metered SIM they are kept rare:

- the first report, and any change of a categorical field (state, radio technology, operator,
  keepalive, NAT lifetime, transport, NAT type, direct paths), go out at the next keepalive, but
  not more often than every ``min_interval_s``; a change of modem state is urgent (sent at once)
  so an operator sees a recorder go off the cellular network while it still can say so;
- signal goes out when it moved by ``signal_step_db`` or more, data used when it grew by
  ``data_step_bytes`` or more, with the same spacing;
- otherwise a refresh every ``refresh_s``, so the broker's copy never grows too old.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dvrlink.protocol.presence_report import DeviceReport

_CATEGORICAL = (
    "rat",
    "modem_state",
    "operator",
    "keepalive_s",
    "nat_lifetime_s",
    "presence_transport",
    "nat_type",
    "sms_wake_number",
    "direct_paths",
)


@dataclass(frozen=True, slots=True)
class ReportPolicy:
    """How rarely reports go out (see the module docstring)."""

    min_interval_s: float = 60.0
    refresh_s: float = 3600.0
    signal_step_db: int = 6
    data_step_bytes: int = 1_000_000


@dataclass(frozen=True, slots=True)
class DueReport:
    """A report to hand to ``PresenceClient.report``; ``urgent``: with ``send_now=True``."""

    report: DeviceReport
    urgent: bool


class Reporter:
    """Merges what the daemon learns and decides when to report it (see the module docstring)."""

    def __init__(self, policy: ReportPolicy | None = None) -> None:
        self._policy = policy or ReportPolicy()
        self._current = DeviceReport()
        self._sent: DeviceReport | None = None
        self._sent_at: float | None = None

    @property
    def current(self) -> DeviceReport:
        """Everything known now."""
        return self._current

    def update(self, **fields: Any) -> None:
        """Merge new values (``DeviceReport`` field names; None leaves a field as it was).

        Raises:
            TypeError: an unknown field name.
        """
        changes = {name: value for name, value in fields.items() if value is not None}
        self._current = dataclasses.replace(self._current, **changes)

    def due(self, now: float) -> DueReport | None:
        """The report to send now, or None; call ``sent`` once it is handed over."""
        current, sent, policy = self._current, self._sent, self._policy
        if current == DeviceReport():
            return None
        if sent is None or self._sent_at is None:
            return DueReport(current, urgent=False)
        if current == sent:
            return DueReport(current, False) if now - self._sent_at >= policy.refresh_s else None
        urgent = current.modem_state != sent.modem_state
        if not urgent and now - self._sent_at < policy.min_interval_s:
            return None
        if urgent or any(getattr(current, name) != getattr(sent, name) for name in _CATEGORICAL):
            return DueReport(current, urgent)
        if _moved(current.signal_dbm, sent.signal_dbm, policy.signal_step_db):
            return DueReport(current, False)
        if _moved(current.data_used, sent.data_used, policy.data_step_bytes):
            return DueReport(current, False)
        if now - self._sent_at >= policy.refresh_s:
            return DueReport(current, False)
        return None

    def sent(self, report: DeviceReport, now: float) -> None:
        """``report`` was handed to the presence client at ``now``."""
        self._sent, self._sent_at = report, now


def _moved(new: int | None, old: int | None, step: int) -> bool:
    if new is None or old is None:
        return new != old
    return abs(new - old) >= step
