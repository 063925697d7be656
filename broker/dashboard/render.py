"""The dashboard's HTML, written by hand with every value escaped: ``esc`` (``html.escape`` with
quotes) for text and attributes, ``url_part`` for path segments. Nothing is inline: the pages
load ``dashboard.css`` and ``dashboard.js`` from the broker, so the Content-Security-Policy can
forbid inline script and style altogether.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Iterable

from dvrlink.broker.api_devices import NAME_MAX
from dvrlink.broker.dashboard.view import DevicePage, DeviceRow, EventLine, FleetPage

BASE = "/dashboard"


def esc(text: object) -> str:
    """``text`` as HTML text or a quoted attribute value."""
    return html.escape(str(text), quote=True)


def url_part(text: str) -> str:
    """``text`` as one path segment (no ``/``), escaped for an attribute."""
    return esc(urllib.parse.quote(text, safe=""))


def _page(title: str, body: str, username: str | None = None, csrf: str = "", operator: bool = False) -> str:
    header = ""
    if username is not None:
        fleet = f'<li><a href="{BASE}/fleet">Fleet</a></li>' if operator else ""
        header = (
            '<header class="top"><span class="brand">dvrlink</span>'
            f'<nav aria-label="Pages"><ul><li><a href="{BASE}/devices">Devices</a></li>{fleet}</ul></nav>'
            f'<form class="logout" method="post" action="{BASE}/logout">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<span class="who">{esc(username)}{" (operator)" if operator else ""}</span> '
            '<button type="submit">Log out</button></form></header>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · dvrlink</title>"
        f'<link rel="stylesheet" href="{BASE}/static/dashboard.css">'
        f'<script src="{BASE}/static/dashboard.js" defer></script>'
        f'</head><body>{header}<main id="main">{body}</main></body></html>\n'
    )


def login_page(csrf: str, message: str = "", username: str = "") -> str:
    """The login form; ``message`` (an error) is shown above it."""
    alert = f'<p class="error" role="alert">{esc(message)}</p>' if message else ""
    body = (
        "<h1>Log in to dvrlink</h1>"
        f"{alert}"
        f'<form class="login" method="post" action="{BASE}/login">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        '<p><label for="username">Username</label>'
        f'<input id="username" name="username" autocomplete="username" required maxlength="64" '
        f'value="{esc(username)}"></p>'
        '<p><label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password" required></p>'
        '<p><button type="submit">Log in</button></p></form>'
        '<p class="hint">Use your dvrlink viewer account (the one <code>dvrlink login</code> uses).</p>'
    )
    return _page("Log in", body)


def _live_note() -> str:
    return '<p class="live" id="live" aria-live="polite">Live updates: connecting…</p>'


def _notice(notice: str | None) -> str:
    if not notice:
        return ""
    return f'<p class="notice" role="status">Only this node\'s knowledge is shown: {esc(notice)}.</p>'


def _state_cell(row: DeviceRow) -> str:
    return f'<td data-field="state" class="state {row.state}">{row.state}</td>'


def devices_page(
    rows: Iterable[DeviceRow], username: str, csrf: str, operator: bool, notice: str | None = None
) -> str:
    """The device list; ``notice`` says why other nodes' knowledge is missing (a cluster whose
    Redis cannot be reached)."""
    heads = (
        "Serial",
        "Name",
        "State",
        "Last seen",
        "NAT",
        "Sessions",
        "Data used (cycle)",
        "Signal",
        "Network",
    )
    head = "".join(f'<th scope="col">{h}</th>' for h in heads)
    lines = []
    for row in rows:
        lines.append(
            f'<tr data-serial="{esc(row.serial)}">'
            f'<th scope="row"><a href="{BASE}/devices/{url_part(row.serial)}">{esc(row.serial)}</a></th>'
            f'<td class="name">{esc(row.name)}</td>'
            f"{_state_cell(row)}"
            f'<td data-field="last_seen">{esc(row.last_seen)}</td>'
            f'<td data-field="nat">{esc(row.nat)}</td>'
            f"<td>{esc(row.sessions)}</td><td>{esc(row.data_used)}</td>"
            f"<td>{esc(row.signal)}</td><td>{esc(row.technology)}</td></tr>"
        )
    scope = "every device of the fleet" if operator else "the devices you paired"
    table = (
        f'<table class="devices"><caption>{esc(scope)}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table>"
        if lines
        else '<p class="empty">No devices yet. Pair one with <code>dvrlink pair</code>.</p>'
    )
    body = f"<h1>Devices</h1>{_live_note()}{_notice(notice)}{table}"
    return _page("Devices", body, username, csrf, operator)


def _events(title: str, lines: tuple[EventLine, ...], empty: str) -> str:
    if not lines:
        return f'<section><h2>{esc(title)}</h2><p class="empty">{esc(empty)}</p></section>'
    items = "".join(f"<li><time>{esc(e.at)}</time> {esc(e.what)}</li>" for e in lines)
    return f'<section><h2>{esc(title)}</h2><ol class="events">{items}</ol></section>'


def device_page(
    page: DevicePage,
    username: str,
    csrf: str,
    operator: bool,
    clustered: bool = False,
    notice: str | None = None,
) -> str:
    """A device's page; ``clustered``: say which broker node holds it."""
    row = page.row
    facts: tuple[tuple[str, str], ...] = (
        ("Name", row.name or "no name"),
        ("Last seen", row.last_seen),
        ("NAT", row.nat),
        ("Sessions", row.sessions),
        ("Data used this billing cycle", row.data_used),
        ("Signal", row.signal),
        ("Network technology", row.technology),
        ("Pairing", page.pairing),
    )
    if page.supervisor_resets:
        facts += (("SupervisorReset alarms in the last 24 h", str(page.supervisor_resets)),)
    details = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
    state = (
        f'<p class="status" data-serial="{esc(row.serial)}">State: '
        f'<span data-field="state" class="state {row.state}">{row.state}</span>, last seen '
        f'<span data-field="last_seen">{esc(row.last_seen)}</span>'
        + (
            f'; broker node: <span data-field="node">{esc(row.node or "none (offline)")}</span>'
            if clustered
            else ""
        )
        + "</p>"
    )
    rename = ""
    if page.can_rename:
        rename = (
            f'<form class="rename" method="post" action="{BASE}/devices/{url_part(row.serial)}/name">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            '<label for="device-name">Name</label> '
            f'<input id="device-name" name="name" maxlength="{NAME_MAX}" value="{esc(page.current_name)}"> '
            '<button type="submit">Save name</button></form>'
        )
    report = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in page.report)
    report_section = (
        f"<section><h2>Last report</h2><dl>{report}</dl></section>"
        if report
        else '<section><h2>Last report</h2><p class="empty">The device has not reported yet.</p></section>'
    )
    body = (
        f"<h1>Device {esc(row.serial)}</h1>{_live_note()}{_notice(notice)}{state}"
        f'<dl class="facts">{details}</dl>{rename}'
        + _events("Recent alarms", page.alarms, "No alarms stored.")
        + _events(
            "Connectivity history",
            page.connectivity,
            "No change seen since the broker started.",
        )
        + report_section
    )
    return _page(f"Device {row.serial}", body, username, csrf, operator)


def fleet_page(page: FleetPage, username: str, csrf: str) -> str:
    """The operators' counters."""
    counters = (
        ("Devices bound", str(page.devices)),
        ("Online now", str(page.online)),
        ("Registrations per minute (last minute)", page.registrations_per_minute),
        ("Sessions signalled and open", str(page.sessions)),
        ("Relay share of sessions", page.relay_share),
        (
            "Sessions by path",
            ", ".join(f"{count} {path}" for path, count in page.paths) or "no sessions",
        ),
        ("Dashboard followers", str(page.followers)),
    )
    live_field = {"Online now": ' data-field="online_count"'}
    items = "".join(f"<dt>{esc(k)}</dt><dd{live_field.get(k, '')}>{esc(v)}</dd>" for k, v in counters)
    top = max([count for _label, count in page.keepalive_buckets] + [1])
    bars = "".join(
        f'<tr><th scope="row">{esc(label)}</th><td>{count}</td>'
        f'<td><meter min="0" max="{top}" value="{count}" aria-label="{esc(label)}">{count}</meter></td></tr>'
        for label, count in page.keepalive_buckets
    )
    problem = f'<p class="notice" role="status">{esc(page.problem)}.</p>' if page.problem else ""
    body = (
        f'<h1>Fleet</h1>{_live_note()}{problem}<p class="scope">Counters of {esc(page.scope)}.</p>'
        f'<dl class="counters">{items}</dl>'
        '<p class="hint">A session\'s path is the one its viewer reported (lan, direct or relay); a '
        "session signalled relay-only counts as relay before its viewer reports; the others count as "
        "unknown until then.</p>"
        '<table class="buckets"><caption>Keepalive interval of the online devices</caption>'
        '<thead><tr><th scope="col">Interval</th><th scope="col">Devices</th>'
        f'<th scope="col">Share</th></tr></thead><tbody>{bars}</tbody></table>'
    )
    return _page("Fleet", body, username, csrf, operator=True)


def error_page(status: int, message: str, username: str | None = None, csrf: str = "") -> str:
    """An error answer as a page."""
    body = f'<h1>{status}</h1><p>{esc(message)}</p><p><a href="{BASE}/devices">Back to the devices</a></p>'
    return _page(f"Error {status}", body, username, csrf)
