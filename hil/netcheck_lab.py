"""``dvrlinkd netcheck`` and ``dvrlink netcheck SERIAL`` in the NAT lab, and the outputs in
``docs/netcheck.md`` (needs root).

    python -m hil.netcheck_lab                         # print the three doc cells' outputs
    python -m hil.netcheck_lab --docs docs/netcheck.md # and put them into the doc

Each cell runs on the connectivity matrix's rig (``hil/matrix/rig.py``): the real
``dvrlink-broker`` in the lab's broker namespace (RFC 5780 alternate address, TURN over TCP on
443, presence over TCP/TLS on 443), a real ``dvrlinkd`` behind the device NAT (it classifies its
NAT at once, ``learn_after_s = 0``, and reports it with its direct paths), and the viewer behind
the viewer NAT, logged in and paired. Then ``dvrlinkd netcheck`` runs in the device's namespace
(with ``[broker] stun_host6`` added, :func:`netcheck_config`) and ``dvrlink netcheck SERIAL`` in
the viewer's, each as text and as ``--json``.

The doc's outputs sit between ``<!-- netcheck-lab:begin -->`` and ``<!-- netcheck-lab:end -->``
markers; the rest of the doc is left as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.matrix.cells import Cell
from hil.matrix.rig import BIN, SERIAL, MatrixError, MatrixRig, matrix_rig
from hil.netlab import NatType

DOC_CELLS: tuple[Cell, ...] = (
    Cell(NatType.PUBLIC, NatType.PORT_RESTRICTED_CONE),
    Cell(NatType.PORT_RESTRICTED_CONE, NatType.PORT_RESTRICTED_CONE),
    Cell(NatType.SYMMETRIC, NatType.PORT_RESTRICTED_CONE),
    Cell(NatType.UDP_BLOCKED, NatType.PORT_RESTRICTED_CONE),
    Cell(NatType.SYMMETRIC, NatType.SYMMETRIC, ipv6=True),
)
"""The cells in the doc: a device with no NAT, behind a port-restricted cone (whose gateway runs
``miniupnpd`` when it is installed), behind a symmetric NAT, and behind a NAT that lets only TCP
to port 443 out, the viewer behind a port-restricted cone (a home router) in each; and both
behind symmetric NATs with a global IPv6 address each (the lab's IPv6 carrier)."""
UPNP_CELL = DOC_CELLS[1]
MINIUPNPD_CONF = """ext_ifname=wan0
listening_ip=lan0
http_port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
uuid=3c6c4c2e-6a2f-4d3b-9a53-0f0d1b8c1a11
allow 1024-65535 192.168.1.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""
"""Debian's miniupnpd on the device NAT: NAT-PMP, PCP and UPnP-IGD towards the LAN."""
BEGIN = "<!-- netcheck-lab:begin -->"
END = "<!-- netcheck-lab:end -->"
PRESENCE_TOML = "learn_after_s = 0\nreport_min_interval_s = 1"
"""The daemon classifies its NAT as soon as it registers and reports it within a second."""
WAIT_S = 30.0


@dataclass
class CellNetcheck:
    """Both ends' netcheck in one cell."""

    cell: Cell
    device_json: dict[str, Any]
    viewer_json: dict[str, Any]
    device_text: str = ""
    viewer_text: str = ""


def _wait(what: str, condition: Any, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise MatrixError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


def netcheck_config(rig: MatrixRig) -> Path:
    """The daemon's config with ``[broker] stun_host6`` (the lab broker's IPv6 STUN address, which
    the matrix rig's config leaves out), next to it so that its relative folders stay the same."""
    source = rig.device_home / "dvrlinkd.toml"
    text = source.read_text()
    if "\n[broker]\n" not in "\n" + text:
        raise MatrixError(f"{source} has no [broker] table")
    target = rig.device_home / "dvrlinkd-netcheck.toml"
    line = f'stun_host6 = "{rig.lab.broker_addrs6[0]}"'
    target.write_text(("\n" + text).replace("\n[broker]\n", f"\n[broker]\n{line}\n", 1).lstrip("\n"))
    return target


def _device_netcheck(rig: MatrixRig, *args: str) -> str:
    proc = rig.lab.run(
        rig.lab.device_ns,
        [str(BIN / "dvrlinkd"), "netcheck", "--config", str(netcheck_config(rig)), *args],
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise MatrixError(f"dvrlinkd netcheck failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return str(proc.stdout)


def start_miniupnpd(rig: MatrixRig, folder: Path) -> subprocess.Popen[bytes]:
    """Debian's ``miniupnpd`` on the device NAT (config and log in ``folder``), once it listens
    for NAT-PMP. The lab's WAN addresses are documentation ranges, which it will not map to: it
    answers a NAT-PMP address request with a failure result. Stop it with ``terminate``.

    Raises:
        MatrixError: it exited or did not listen within ``WAIT_S``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "miniupnpd.conf"
    config.write_text(MINIUPNPD_CONF)
    log = folder / "miniupnpd.log"
    with log.open("wb") as out:
        proc = rig.lab.popen(
            rig.lab.nat_ns("device"),
            ["miniupnpd", "-d", "-f", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(
            f"miniupnpd listening for NAT-PMP (log {log})",
            lambda: proc.poll() is not None or "Listening for NAT-PMP" in log.read_text(errors="replace"),
        )
    except MatrixError:
        proc.kill()
        proc.wait(10)
        raise
    if proc.poll() is not None:
        raise MatrixError(f"miniupnpd exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
    return proc


def run_cell(
    rig: MatrixRig, cell: Cell, *, text: bool = False, timeout_s: float = 2.0, prepared: bool = False
) -> CellNetcheck:
    """Set up ``cell`` (unless ``prepared``: the caller did, and added to it), start the daemon,
    wait until the broker has its NAT type, and run both netchecks (``--json``; with ``text`` also
    as text; each NAT test waits ``timeout_s``). The daemon is stopped at the end.

    Raises:
        MatrixError: the daemon did not register or report, or a netcheck failed.
    """
    if not prepared:
        rig.prepare(cell)
    folder = rig.work / "netcheck" / cell.key.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "dvrlinkd.log"
    daemon = rig.start_daemon(log, presence_toml=PRESENCE_TOML)
    try:
        _wait(
            f"dvrlinkd online in {cell.key} (log {log})",
            lambda: rig.daemon_state() == "online" or daemon.poll() is not None,
        )
        if daemon.poll() is not None:
            raise MatrixError(f"dvrlinkd exited ({daemon.returncode}): {log.read_text()[-2000:]}")
        rig.pair()
        expected = cell.device.profile.nat_type

        def reported() -> bool:
            out = rig.viewer("status", SERIAL, "--json")
            nat_type = re.search(rf'"nat_type": "{re.escape(expected or "")}"', out)
            return bool(nat_type) and '"direct_paths"' in out  # item 11 follows the NAT type

        _wait(
            f"the broker to hold the device's nat_type {expected!r} and direct_paths in {cell.key}", reported
        )
        wait = ("--timeout", f"{timeout_s:g}")
        result = CellNetcheck(
            cell,
            json.loads(_device_netcheck(rig, "--json", *wait)),
            json.loads(rig.viewer("netcheck", SERIAL, "--json", *wait)),
        )
        if text:
            result.device_text = _device_netcheck(rig, *wait).rstrip()
            result.viewer_text = rig.viewer("netcheck", SERIAL, *wait).rstrip()
        return result
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(10)


def markdown(results: Sequence[CellNetcheck]) -> str:
    """The doc's generated part: per cell, both ends' text output and the viewer's JSON."""
    out = [
        BEGIN,
        "",
        "Generated by `python -m hil.netcheck_lab --docs docs/netcheck.md` (as root); do not edit "
        "between the markers. Lab addresses: broker 203.0.113.10 (STUN, TURN), .11 (RFC 5780 "
        "alternate, presence over TCP/TLS on 443), .12 (HTTPS API), 2001:db8:203::10 and ::11 "
        "(STUN over IPv6, RFC 5780); device and viewer NATs on 198.51.100.0/24. The lab is one "
        "host's namespaces, so the round trips are a few milliseconds at most; the daemon has run "
        "for seconds only, so it has not learned its NAT's lifetime yet (that takes minutes: "
        "`learn_keepalive` in `docs/operating.md`).",
        "",
    ]
    for result in results:
        cell = result.cell
        out += [
            f"### Device: {cell.device_name}, viewer: {cell.viewer_name}",
            "",
        ]
        if cell.ipv6:
            out += [
                "Both sides also have a global IPv6 address behind the lab carrier's stateful firewall "
                "(`+v6`); the broker answers STUN on its IPv6 addresses too (`stun_host6`, "
                "`stun_alternate_host6`), and the device's netcheck names it with `[broker] stun_host6`.",
                "",
            ]
        if result.device_json.get("port_mapping", {}).get("upnp_server"):
            out += [
                "The device's gateway runs Debian's `miniupnpd` (NAT-PMP, PCP, UPnP-IGD); the lab's "
                "WAN addresses are documentation ranges, so it refuses to name an external address.",
                "",
            ]
        out += [
            "`dvrlinkd netcheck` on the device:",
            "",
            "```",
            result.device_text,
            "```",
            "",
            f"`dvrlink netcheck {SERIAL}` on the viewer:",
            "",
            "```",
            result.viewer_text,
            "```",
            "",
            "<details><summary>the viewer's <code>--json</code></summary>",
            "",
            "```json",
            json.dumps(result.viewer_json, indent=1),
            "```",
            "",
            "</details>",
            "",
        ]
    out.append(END)
    return "\n".join(out)


def write_docs(path: Path, results: Sequence[CellNetcheck]) -> None:
    """Replace the generated part of ``path`` (between the markers) with ``results``.

    Raises:
        OSError: the file cannot be read or written.
        ValueError: it has no markers.
    """
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {BEGIN} ... {END} markers: add them where the outputs go")
    new = text[:start] + markdown(results) + text[end + len(END) :]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hil.netcheck_lab``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m hil.netcheck_lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, help="the doc to put the outputs into (docs/netcheck.md)")
    parser.add_argument("--work", type=Path, default=Path("netcheck-lab"), help="folder for logs and state")
    args = parser.parse_args(argv)
    try:
        with matrix_rig(args.work) as rig:
            results = []
            for cell in DOC_CELLS:
                print(f"netcheck lab: {cell.device.value} × {cell.viewer.value} ...", file=sys.stderr)
                if cell != UPNP_CELL or shutil.which("miniupnpd") is None:
                    results.append(run_cell(rig, cell, text=True))
                    continue
                rig.prepare(cell)
                gateway = start_miniupnpd(rig, args.work / "miniupnpd")
                try:
                    results.append(run_cell(rig, cell, text=True, prepared=True))
                finally:
                    gateway.terminate()
                    gateway.wait(WAIT_S)
    except MatrixError as exc:
        print(f"netcheck lab: {exc}", file=sys.stderr)
        return 1
    if args.docs is not None:
        write_docs(args.docs, results)
        print(f"netcheck lab: wrote {args.docs}", file=sys.stderr)
    else:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
