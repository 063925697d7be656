"""The session rig of ``support.session`` works: two cores on its fake link establish a session,
and every datagram that crossed starts with an RFC 9443 first byte.
"""

from __future__ import annotations

from support.session import established_link, is_quic_first_byte


def test_harness_establishes_a_session() -> None:
    link = established_link()
    assert link.wire
    assert all(is_quic_first_byte(data[0]) for _, data, _ in link.wire)
