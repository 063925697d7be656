"""The LAN discovery links on loopback: the daemon's ``LanLink`` on a real socket, the viewer's
``find_on_lan``/``LanSignalling`` on another, and the session server's side played by a
recorder of offers that answers as ``SessionServer`` does. Bad datagrams never stop the link."""

from __future__ import annotations

import socket

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.aio import run

from dvrlink.daemon.lan_responder import LanLink, LanLinkConfig, LanReplier, start_lan_link
from dvrlink.protocol.identity import ed25519_public_bytes
from dvrlink.protocol.lan_discovery import LanTiming
from dvrlink.protocol.presence_events import InviteReceived
from dvrlink.protocol.presence_wire import INVITE_OK
from dvrlink.protocol.signalling import AnswerStatus, PathPolicy, SessionAnswer, SessionOffer
from dvrlink.viewer.errors import ViewerError
from dvrlink.viewer.lan import find_on_lan

LOOPBACK = "127.0.0.1"
FAST = LanTiming(discovery_timeout_s=0.5, answer_timeout_s=2.0)


class Sessions:
    """Answers each LAN offer with ``verdict`` at once, as ``SessionServer.handle_lan`` would."""

    def __init__(self, verdict: AnswerStatus = AnswerStatus.ACCEPTED) -> None:
        self.verdict = verdict
        self.offers: list[SessionOffer] = []

    def handle_lan(self, invite: InviteReceived, now: float, replier: LanReplier) -> None:
        offer = SessionOffer.decode(invite.body)
        self.offers.append(offer)
        answer = SessionAnswer(self.verdict, "ufrag", "password1234567890abcd", ("cand",), "full up")
        replier.reply_invite(invite.invite_id, INVITE_OK, answer.encode(), now)


def garbage_to(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in (
            b"",
            b"DLAN",
            b"DLAN\x01\x01" + b"\x00" * 122,
            b"\xff" * 1500,
            b"DLAN\x01\x03" + b"\x01" * 200,
        ):
            sock.sendto(data, (LOOPBACK, port))


@pytest.mark.parametrize("verdict", [AnswerStatus.ACCEPTED, AnswerStatus.BUSY])
def test_offer_and_answer_over_real_sockets(verdict: AnswerStatus) -> None:
    device_key, viewer_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    viewer_public = ed25519_public_bytes(viewer_key)

    async def main() -> None:
        sessions = Sessions(verdict)
        link = LanLink(device_key, {viewer_public}.__contains__, sessions)
        await link.start(LanLinkConfig(host=LOOPBACK, port=0))
        assert link.address is not None
        port = link.address[1]
        try:
            garbage_to(port)
            found = await find_on_lan(
                ed25519_public_bytes(device_key), viewer_key, port=port, extra_targets=[LOOPBACK], timing=FAST
            )
            assert found is not None, "the device did not answer on loopback"
            try:
                grant = await found.create_session("DL-0001-0001", PathPolicy.ALL)
                assert grant.turn == () and grant.stun is None
                send = found.send_offer(
                    grant.session_id, "vu", "viewerpassword1234567890", ["c1"], viewer_public
                )
                if verdict is AnswerStatus.ACCEPTED:
                    answer = await send
                    assert (answer.ice_ufrag, answer.candidates) == ("ufrag", ("cand",))
                else:
                    with pytest.raises(ViewerError, match=r"refused the LAN session \(busy\): full up"):
                        await send
            finally:
                await found.close()
            assert [o.policy for o in sessions.offers] == [PathPolicy.DIRECT_ONLY]
            assert link.stats.malformed >= 4
        finally:
            link.close()

    run(main, 30)


def test_an_unpaired_viewer_finds_the_device_but_cannot_open_a_session() -> None:
    device_key, viewer_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()

    async def main() -> None:
        sessions = Sessions()
        link = LanLink(device_key, lambda _key: False, sessions)
        await link.start(LanLinkConfig(host=LOOPBACK, port=0))
        assert link.address is not None
        try:
            found = await find_on_lan(
                ed25519_public_bytes(device_key),
                viewer_key,
                port=link.address[1],
                extra_targets=[LOOPBACK],
                timing=FAST,
            )
            assert found is not None
            try:
                grant = await found.create_session("DL-0001-0001", PathPolicy.ALL)
                with pytest.raises(ViewerError, match="did not answer within 2 s"):
                    await found.send_offer(
                        grant.session_id,
                        "vu",
                        "viewerpassword1234567890",
                        [],
                        ed25519_public_bytes(viewer_key),
                    )
            finally:
                await found.close()
            assert sessions.offers == []
            assert link.stats.not_paired >= 1
        finally:
            link.close()

    run(main, 30)


def test_no_device_on_the_lan_means_none_within_the_discovery_timeout() -> None:
    async def main() -> None:
        found = await find_on_lan(
            ed25519_public_bytes(Ed25519PrivateKey.generate()),
            Ed25519PrivateKey.generate(),
            port=9,
            extra_targets=[LOOPBACK],
            timing=FAST,
        )
        assert found is None

    run(main, 30)


def test_a_busy_port_leaves_the_daemon_without_lan_discovery(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind((LOOPBACK, 0))
            port = holder.getsockname()[1]
            link = await start_lan_link(
                Ed25519PrivateKey.generate(),
                lambda _k: True,
                Sessions(),
                LanLinkConfig(host=LOOPBACK, port=port),
            )
            assert link is None

    run(main, 30)
    assert "set another [lan] port" in caplog.text
