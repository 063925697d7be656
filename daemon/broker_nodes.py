"""Which node of a broker fleet the device registers with, and when it moves on. Sans-I/O.

A fleet is several ``dvrlink-broker`` nodes that share one static key (the one the device pins
as ``[broker] public_key``) and one registry, so a device may register with any of them and keeps
its binding: same serial, same device key, nothing to pair again. ``[broker] hosts`` lists them;
a name with several addresses stands for one node per address (``expand``).

:class:`NodeList` holds the list and the node in use. Registration goes to that one node. The
daemon tells it what the presence core saw, with the time passed in:

- ``answered``: the node answered (any authentic reply). The node that answered last is what a
  restart begins with (``NodeMemory``, a small state file written atomically).
- ``move_on``: the node fell silent (keepalives unanswered), did not answer a registration, or
  refused it. The next node in the list is used (wrapping). A node that refused, or answered
  with replies that do not open with the fleet key (a node outside the fleet), is skipped on
  later rounds for ``refused_hold_s``, unless every node is held.

Which transport carries presence (UDP, or TCP where UDP is blocked) is decided elsewhere
(``presence_transport.TransportPolicy``); the same list applies to both.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dvrlink.store.files import atomic_write

NODE_FILE = "broker_node.json"
"""In ``[device] state_dir``: the node that answered last."""
REFUSED_HOLD_S = 600.0
"""Seconds a node that refused (or is outside the fleet) is passed over while others remain."""


@dataclass(frozen=True, slots=True)
class BrokerNode:
    """One broker node: where its presence service listens."""

    host: str
    """Host name or IP literal, as configured."""
    port: int
    """UDP port of its presence service."""
    address: str = ""
    """One resolved IP address of ``host`` (a name with several addresses is several nodes);
    empty: not resolved here, the link resolves ``host`` itself."""

    @property
    def connect_host(self) -> str:
        """What the link connects to: ``address`` if resolved, else ``host``."""
        return self.address or self.host

    @property
    def label(self) -> str:
        """``host:port`` for logs and status (IPv6 literals in brackets), with the resolved
        address when it differs from the host: ``node1.example:3478 (192.0.2.10)``."""
        text = f"{bracket(self.host)}:{self.port}"
        if self.address and self.address != self.host:
            text += f" ({self.address})"
        return text


def bracket(host: str) -> str:
    """``host`` ready to be followed by ``:port``: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host else host


def parse_node(entry: str, default_port: int) -> BrokerNode:
    """One ``[broker] hosts`` entry: ``name``, ``name:port``, an IP literal, ``[v6]:port``.

    Raises:
        ValueError: not such an entry; the message says what to write instead.
    """
    example = 'write "node1.example.net", "node1.example.net:3478", "192.0.2.10:3478" or "[2001:db8::1]:3478"'
    text = entry.strip()
    if not text or any(ch.isspace() for ch in text) or "/" in text:
        raise ValueError(f"{entry!r} is not a host or host:port (no scheme, path or spaces); {example}")
    port = default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(
                f"{entry!r}: an IPv6 address in brackets must be followed by :port or nothing; {example}"
            )
        if rest:
            port = _port(rest[1:], entry, example)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{entry!r}: {host!r} in brackets is not an IPv6 address; {example}") from None
    elif text.count(":") > 1:
        host = text  # a bare IPv6 literal, with the default port
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"{entry!r} is not a host:port; put an IPv6 address in brackets: {example}"
            ) from None
    else:
        host, sep, port_text = text.partition(":")
        if sep:
            port = _port(port_text, entry, example)
        if not host or "[" in host or "]" in host:
            raise ValueError(f"{entry!r} has no host name; {example}")
    return BrokerNode(host, port)


def _port(text: str, entry: str, example: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{entry!r}: port {text!r} is not a number from 1 to 65535; {example}")
    return int(text)


def is_ip_literal(host: str) -> bool:
    """True if ``host`` is an IP address, not a name to resolve."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def expand(node: BrokerNode, addresses: Iterable[str]) -> list[BrokerNode]:
    """``node`` as one node per resolved address (in the order given, duplicates dropped). With
    fewer than two addresses it stays the node itself, unresolved: its link resolves the name
    each time it opens a socket, so it follows the name to a new address."""
    seen: list[str] = []
    for address in addresses:
        if address not in seen:
            seen.append(address)
    if len(seen) < 2 or is_ip_literal(node.host):
        return [node]
    return [replace(node, address=address) for address in seen]


@dataclass(slots=True)
class _NodeState:
    """What the list knows of one node (for choosing the next one and for status)."""

    last_answer: float | None = None
    problem: str = ""
    held_until: float | None = None


class NodeList:
    """The broker nodes and the one in use (see module docstring). Times are the caller's clock;
    nothing here reads a clock or does I/O."""

    def __init__(
        self,
        nodes: Sequence[BrokerNode],
        *,
        start: BrokerNode | None = None,
        refused_hold_s: float = REFUSED_HOLD_S,
    ) -> None:
        """``start``: the node to begin with (the one that answered last, from ``NodeMemory``);
        ignored when not in ``nodes``.

        Raises:
            ValueError: ``nodes`` is empty.
        """
        if not nodes:
            raise ValueError("a broker node list needs at least one node")
        self._nodes = list(nodes)
        self._state = {node: _NodeState() for node in self._nodes}
        self._index = _find(self._nodes, start) if start is not None else 0
        self._hold = refused_hold_s
        self._last_answered: BrokerNode | None = start if start in self._state else None
        self.moves = 0
        """Moves to another node so far."""

    @property
    def nodes(self) -> tuple[BrokerNode, ...]:
        """All nodes, in list order."""
        return tuple(self._nodes)

    @property
    def current(self) -> BrokerNode:
        """The node registration goes to now."""
        return self._nodes[self._index]

    def answered(self, now: float) -> bool:
        """The node in use answered. Returns True when it is not the node that answered last
        before (the caller remembers it: ``NodeMemory.save``)."""
        node = self.current
        state = self._state[node]
        state.last_answer, state.problem, state.held_until = now, "", None
        changed = node != self._last_answered
        self._last_answered = node
        return changed

    def move_on(self, problem: str, now: float, *, refused: bool = False) -> BrokerNode:
        """The node in use failed (``problem`` says how, for status): use the next one, wrapping.
        ``refused``: it refused the registration or is outside the fleet, so later rounds pass it
        over for ``refused_hold_s``. Nodes held now are skipped unless all are; then the one
        whose hold ends first is used. Returns the node now in use (the same one when the list
        has one node)."""
        left = self.current
        state = self._state[left]
        state.problem = problem
        if refused:
            state.held_until = now + self._hold
        count = len(self._nodes)
        candidates = [(self._index + step) % count for step in range(1, count + 1)]
        free = [i for i in candidates if not self._held(self._nodes[i], now)]
        if free:
            chosen = free[0]
        else:
            chosen = min(candidates, key=lambda i: self._state[self._nodes[i]].held_until or 0.0)
        if chosen != self._index:
            self.moves += 1
        self._index = chosen
        return self.current

    def replace_nodes(self, nodes: Sequence[BrokerNode]) -> None:
        """Use ``nodes`` from now on (names resolved again). The node in use stays if it is still
        listed (else the first with its host and port, else the first); what is known of each
        node that stays is kept.

        Raises:
            ValueError: ``nodes`` is empty.
        """
        if not nodes:
            raise ValueError("a broker node list needs at least one node")
        current = self.current
        self._nodes = list(nodes)
        self._state = {node: self._state.get(node, _NodeState()) for node in self._nodes}
        self._index = _find(self._nodes, current)

    def status(self, now: float) -> list[dict[str, object]]:
        """Each node for ``dvrlinkd status``: ``node`` (its label), ``in_use``, ``last_answer``
        (the caller's clock), ``problem`` (how it last failed) and ``held_s`` (seconds it is
        still passed over; 0 when not)."""
        out: list[dict[str, object]] = []
        for i, node in enumerate(self._nodes):
            state = self._state[node]
            held = max(0.0, (state.held_until or now) - now)
            out.append(
                {
                    "node": node.label,
                    "in_use": i == self._index,
                    "last_answer": state.last_answer,
                    "problem": state.problem,
                    "held_s": round(held, 1),
                }
            )
        return out

    def _held(self, node: BrokerNode, now: float) -> bool:
        until = self._state[node].held_until
        return until is not None and now < until


def _find(nodes: Sequence[BrokerNode], wanted: BrokerNode) -> int:
    """Index of ``wanted``, else of the first node with its host and port, else 0."""
    if wanted in nodes:
        return nodes.index(wanted)
    for i, node in enumerate(nodes):
        if (node.host, node.port) == (wanted.host, wanted.port):
            return i
    return 0


class NodeMemory:
    """The node that answered last, in ``state_dir/broker_node.json`` (written atomically), so a
    restart begins there rather than at the top of the list."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / NODE_FILE

    def load(self) -> BrokerNode | None:
        """The remembered node, or None (no file yet, or one that is not ours: it is ignored and
        replaced at the next answer; the start-up check has moved a corrupt one aside)."""
        try:
            return decode_node(self.path.read_bytes())
        except (OSError, ValueError):
            return None

    def save(self, node: BrokerNode) -> None:
        """Remember ``node``.

        Raises:
            OSError: the state directory is not writable (the message names the file).
        """
        data = {"host": node.host, "port": node.port, "address": node.address}
        atomic_write(self.path, (json.dumps(data) + "\n").encode("utf-8"))


def decode_node(data: bytes) -> BrokerNode:
    """The node in a ``broker_node.json``.

    Raises:
        ValueError: not such a file (says what was expected).
    """
    shape = 'not {"host": "...", "port": 1-65535, "address": "..."}'
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(shape)
    host, port, address = obj.get("host"), obj.get("port"), obj.get("address", "")
    if not (isinstance(host, str) and host and isinstance(address, str)):
        raise ValueError(shape)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(shape)
    return BrokerNode(host, port, address)
