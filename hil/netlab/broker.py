"""The real ``dvrlink-broker serve`` inside the lab's broker namespace, with RFC 5780 STUN on.

The broker binds presence/STUN to its primary address (``udp_host``; RFC 5780 needs a specific
address) and gets the second one as ``stun_alternate_host``; STUN answers on its two IPv6
addresses too (``stun_host6``, ``stun_alternate_host6``: the lab is dual-stack on the internet
side), and the first of them takes presence over IPv6. Its HTTPS API listens on 443, which is
what a UDP-blocked side may still reach.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.loopback import broker_command, wait_for
from hil.netlab.lab import Lab

STUN_PORT = 3478
STUN_ALTERNATE_PORT = 3480
TURN_PORT = 3479
HTTPS_PORT = 443


@dataclass
class LabBroker:
    """A broker process in the lab."""

    proc: subprocess.Popen[bytes]
    state_dir: Path
    config: Path
    log: Path
    info: dict[str, Any]
    primary: tuple[str, int]
    alternate: tuple[str, int]

    @property
    def https_url(self) -> str:
        """Base URL of the viewer API."""
        return f"https://{self.primary[0]}:{self.info['https_port']}"

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


def _toml(values: dict[str, object]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(json.dumps(str(v)) for v in value)}]")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"


def start_lab_broker(lab: Lab, state_dir: Path, timeout: float = 30.0, **extra: object) -> LabBroker:
    """Start ``dvrlink-broker serve`` in ``lab.broker_ns`` and wait until it wrote broker.json.

    ``extra`` adds or overrides configuration keys; a key given as None is left out (e.g.
    ``stun_alternate_host=None`` with ``udp_host="::"``, which RFC 5780 cannot share). The
    process is stopped with the lab.

    Raises:
        TimeoutError: it did not become ready; the message has its last log lines.
        RuntimeError: it exited early; the message has its log.
    """
    primary, alternate = lab.broker_addrs
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "broker.toml"
    values: dict[str, object] = {
        "state_dir": str(state_dir),
        "udp_host": primary,
        "udp_port": STUN_PORT,
        "https_host": primary,
        "https_port": HTTPS_PORT,
        "server_names": [primary],
        "turn_udp_port": TURN_PORT,
        "turn_tcp_port": TURN_PORT,
        "stun_alternate_host": alternate,
        "stun_alternate_port": STUN_ALTERNATE_PORT,
        # STUN over IPv6 too (RFC 5780 on the two IPv6 addresses), handed out as stun6.
        "stun_host6": lab.broker_addrs6[0],
        "stun_alternate_host6": lab.broker_addrs6[1],
        # Presence over TCP/TLS also wants 443, which the HTTPS API holds on the primary address.
        "presence_tcp_host": alternate,
        "presence_tcp_port": HTTPS_PORT,
        **extra,
    }
    config.write_text(_toml({key: value for key, value in values.items() if value is not None}))
    log = state_dir / "broker.log"
    (state_dir / "broker.json").unlink(missing_ok=True)
    with log.open("ab") as out:
        proc = lab.popen(
            lab.broker_ns,
            broker_command("serve", "--config", str(config)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def ready() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise RuntimeError(
                f"dvrlink-broker exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            info: dict[str, Any] = json.loads((state_dir / "broker.json").read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == proc.pid else None

    try:
        info = wait_for("dvrlink-broker ready in the lab", ready, timeout)
    except TimeoutError as exc:
        proc.kill()
        raise TimeoutError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None
    return LabBroker(
        proc, state_dir, config, log, info, (primary, STUN_PORT), (alternate, STUN_ALTERNATE_PORT)
    )
