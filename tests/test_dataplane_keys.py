"""The data plane's key schedule against independent vectors, the nonce, and key updates.

The HKDF vectors were computed twice outside this code: by hand with Python's hmac/hashlib
(RFC 5869: PRK = HMAC(salt, IKM); T(1) = HMAC(PRK, info || 0x01)), and with
``openssl kdf -keylen 32 -kdfopt digest:SHA256 ... HKDF`` (and ``mode:EXPAND_ONLY``), which agreed.
Inputs: viewer_random = bytes(range(32)), device_random = bytes(range(32, 64)).
"""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from support.dataplane_link import Link, Simulation, key_material, pair

from dvrlink.protocol.dataplane import KeysUpdated, StreamData, StreamOpened
from dvrlink.protocol.dataplane_keys import (
    DEVICE_TO_VIEWER,
    VIEWER_TO_DEVICE,
    KeyChain,
    PacketKey,
    direction_key_iv,
    initial_secret,
    next_secret,
    nonce,
)
from dvrlink.protocol.dataplane_wire import HEADER

VIEWER_RANDOM = bytes(range(32))
DEVICE_RANDOM = bytes(range(32, 64))
SECRET_0 = "07f88105bd050176b77de4cd18c27472fd7d0d073b2935127ee32c665e709cd0"
KEY_V2D_0 = "be2bebc3b94175a78eaf3bcbb0e31ded41bcc9e113539b42e2a19db624b0c88b"
IV_V2D_0 = "de05a0dc7d6ac6593d91c092"
SECRET_1 = "de4ae2dcc80179e5b7e1f1814a6d7ec103405f0e424700ebd5f9be6576bfa746"
KEY_D2V_1 = "6d6f1587356990f427ec5470c16d80209eb4300607c6c3b3dfeb67159b0d1ec9"
IV_D2V_1 = "7dfd26980efc2e8e34b160f0"


def test_hkdf_schedule_matches_independent_vectors() -> None:
    secret_0 = initial_secret(VIEWER_RANDOM, DEVICE_RANDOM)
    assert secret_0.hex() == SECRET_0
    key, iv = direction_key_iv(secret_0, VIEWER_TO_DEVICE, 0)
    assert (key.hex(), iv.hex()) == (KEY_V2D_0, IV_V2D_0)
    secret_1 = next_secret(secret_0)
    assert secret_1.hex() == SECRET_1
    assert KeyChain(secret_0).secret(1).hex() == SECRET_1
    key, iv = direction_key_iv(secret_1, DEVICE_TO_VIEWER, 1)
    assert (key.hex(), iv.hex()) == (KEY_D2V_1, IV_D2V_1)


def test_nonce_is_iv_xor_packet_number() -> None:
    # the last six bytes of the IV xor 01 02 03 04 05 06, worked out by hand
    assert nonce(bytes.fromhex(IV_V2D_0), 0x010203040506).hex() == "de05a0dc7d6ac75b3e95c594"
    packet_key = PacketKey(bytes.fromhex(SECRET_0), VIEWER_TO_DEVICE, 0)
    header = HEADER.pack(0x20, b"abcd", 0x0102, 0x03040506)
    sealed = packet_key.seal(0x010203040506, header, b"frames")
    expected = ChaCha20Poly1305(bytes.fromhex(KEY_V2D_0)).encrypt(
        bytes.fromhex("de05a0dc7d6ac75b3e95c594"), b"frames", header
    )
    assert sealed == expected
    assert packet_key.open(0x010203040506, header, sealed) == b"frames"
    assert packet_key.open(0x010203040507, header, sealed) is None, "another packet number must not open it"


def packet_number(datagram: bytes) -> int:
    _, _, high, low = HEADER.unpack_from(datagram)
    return (high << 32) | low


def test_key_update_both_ends_move_and_late_packets_open_only_within_the_grace() -> None:
    rng = random.Random(7)
    held: dict[int, bytes] = {}

    def hold(datagram: bytes) -> bool:
        if packet_number(datagram) in (5, 6) and packet_number(datagram) not in held:
            held[packet_number(datagram)] = datagram
            return True
        return False

    viewer, device = pair(key_material(rng), key_update_packets=40)
    sim = Simulation(viewer, device, Link(rng, drop=hold), Link(rng))
    stream = viewer.open_stream()
    payload = rng.randbytes(400_000)
    viewer.send(stream, payload, end_stream=True)
    received = bytearray()
    device_events: list[object] = []
    late: dict[str, int] = {}

    def deliver_late(s: Simulation) -> None:
        if "early" not in late and device.stats.receive_generation == 1 and 5 in held:
            before = device.stats.packets_received
            device.receive_datagram(held.pop(5), s.now)
            late["early"] = device.stats.packets_received - before

    sim.on_step = deliver_late
    reply = rng.randbytes(200_000)
    replied = bytearray()
    done = {"device": False, "viewer": False}

    def finished() -> bool:
        for event in device.events():
            device_events.append(event)
            if isinstance(event, StreamOpened):
                device.send(event.stream_id, reply, end_stream=True)
            if isinstance(event, StreamData):
                received.extend(event.data)
                device.consumed(event.stream_id, len(event.data), sim.now)
                done["device"] = done["device"] or event.ended
        for event in viewer.events():
            if isinstance(event, StreamData):
                replied.extend(event.data)
                viewer.consumed(event.stream_id, len(event.data), sim.now)
                done["viewer"] = done["viewer"] or event.ended
        return all(done.values())

    sim.run_until(finished)
    assert bytes(received) == payload, f"received {len(received)} of {len(payload)} bytes"
    assert bytes(replied) == reply, f"received {len(replied)} of {len(reply)} bytes of the reply"
    assert viewer.stats.send_generation >= 2, (
        f"viewer sent with generations up to {viewer.stats.send_generation}"
    )
    assert device.stats.send_generation >= 2, (
        f"device sent with generations up to {device.stats.send_generation}"
    )
    assert device.stats.receive_generation == viewer.stats.send_generation
    updates = [e.generation for e in device_events if isinstance(e, KeysUpdated) and e.direction == "receive"]
    assert updates == list(range(1, viewer.stats.send_generation + 1)), updates
    assert late.get("early") == 1, (
        f"a generation-0 packet delivered just after the update was not accepted: {late}"
    )
    before = device.stats.packets_received
    dropped_before = device.stats.dropped["key_phase"] + device.stats.dropped["auth"]
    device.receive_datagram(held.pop(6), sim.now + 60)
    assert device.stats.packets_received == before, "a generation-0 packet opened long after its grace period"
    assert device.stats.dropped["key_phase"] + device.stats.dropped["auth"] == dropped_before + 1, (
        device.stats.dropped
    )


def test_keys_also_update_by_time() -> None:
    rng = random.Random(8)
    viewer, device = pair(key_material(rng), key_update_s=1.0)
    viewer.set_rate_cap(50_000.0)
    sim = Simulation(viewer, device, Link(rng), Link(rng))
    stream = viewer.open_stream()
    viewer.send(stream, rng.randbytes(300_000), end_stream=True)
    ended = [False]

    def done() -> bool:
        for event in device.events():
            if isinstance(event, StreamData):
                device.consumed(event.stream_id, len(event.data), sim.now)
                ended[0] = ended[0] or event.ended
        return ended[0]

    sim.run_until(done, max_steps=100_000)
    assert sim.now > 5.0, f"the transfer took only {sim.now:.1f} s: too short to see timed updates"
    assert viewer.stats.send_generation >= int(sim.now) - 1, (
        f"generation {viewer.stats.send_generation} after {sim.now:.1f} s with key_update_s=1"
    )
    assert device.stats.receive_generation == viewer.stats.send_generation
