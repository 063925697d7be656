"""The path-choice order (``protocol.path_choice``): lan, then IPv6 direct, then IPv4 direct,
then the relay, each step shown; and the session layer's ranks agree with it."""

from __future__ import annotations

import pytest

from dvrlink.protocol.path_choice import (
    PATH_ORDER,
    PathKind,
    Source,
    best,
    order,
    pair_kind,
    plan_sources,
    rank,
)
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session import connectivity


def test_the_order_is_lan_ipv6_ipv4_relay() -> None:
    assert [kind.value for kind in PATH_ORDER] == ["lan", "direct6", "direct", "relay"]
    assert [rank(kind) for kind in PATH_ORDER] == [4, 3, 2, 1]


@pytest.mark.parametrize(
    ("ready", "chosen"),
    [
        ({PathKind.RELAY}, PathKind.RELAY),
        ({PathKind.RELAY, PathKind.DIRECT_V4}, PathKind.DIRECT_V4),
        ({PathKind.RELAY, PathKind.DIRECT_V4, PathKind.DIRECT_V6}, PathKind.DIRECT_V6),
        ({PathKind.RELAY, PathKind.DIRECT_V4, PathKind.DIRECT_V6, PathKind.LAN}, PathKind.LAN),
        ({PathKind.LAN, PathKind.RELAY}, PathKind.LAN),
        (set(), None),
    ],
)
def test_each_step_of_the_order(ready: set[PathKind], chosen: PathKind | None) -> None:
    assert best(ready) is chosen


@pytest.mark.parametrize(
    ("local", "remote", "host", "private", "kind"),
    [
        ("host", "host", "192.168.1.2", True, PathKind.LAN),
        ("host", "host", "fe80::1", True, PathKind.LAN),
        ("host", "host", "2001:db8::2", False, PathKind.DIRECT_V6),
        ("srflx", "host", "2001:db8::2", False, PathKind.DIRECT_V6),
        ("host", "host", "198.51.100.130", False, PathKind.DIRECT_V4),
        ("srflx", "srflx", "198.51.100.2", False, PathKind.DIRECT_V4),
        ("srflx", "host", "192.168.1.2", True, PathKind.DIRECT_V4),  # a NAT between: not the LAN
        ("relay", "host", "192.0.2.10", False, PathKind.RELAY),
    ],
)
def test_pair_kind(local: str, remote: str, host: str, private: bool, kind: PathKind) -> None:
    assert pair_kind(local, remote, host, remote_private=private) is kind


def test_sources_lan_first_then_the_broker() -> None:
    assert plan_sources(PathPolicy.ALL, lan=True) == (Source.LAN_DISCOVERY, Source.BROKER)
    assert plan_sources(PathPolicy.DIRECT_ONLY, lan=True) == (Source.LAN_DISCOVERY, Source.BROKER)
    assert plan_sources(PathPolicy.RELAY_ONLY, lan=True) == (Source.BROKER,)
    assert plan_sources(PathPolicy.ALL, lan=False) == (Source.BROKER,)
    assert order(PathPolicy.ALL, lan=True) == PATH_ORDER
    assert order(PathPolicy.DIRECT_ONLY, lan=False) == (PathKind.LAN, PathKind.DIRECT_V6, PathKind.DIRECT_V4)
    assert order(PathPolicy.RELAY_ONLY, lan=True) == (PathKind.RELAY,)


def test_the_session_layer_ranks_its_labels_in_the_same_order() -> None:
    by_label = {kind.value: kind for kind in PathKind}
    labels = sorted(connectivity.PATH_RANK, key=lambda path: -connectivity.PATH_RANK[path])
    assert [label for label, _ in labels] == [
        kind.value for kind in PATH_ORDER if (kind.value, 0) in connectivity.PATH_RANK
    ]
    assert all(label in by_label for label, _ in connectivity.PATH_RANK)
