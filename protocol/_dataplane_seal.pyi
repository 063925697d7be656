"""Types of the compiled bulk sealer and opener (``protocol/_dataplane_seal.c``)."""

def seal_stream_run(
    key: bytes,
    iv: bytes,
    first_byte: int,
    receive_tag: bytes,
    packet_number: int,
    frame_prefix: bytes,
    offset: int,
    data: bytes | bytearray | memoryview,
    max_payload: int,
    max_packets: int,
    short_last: bool = False,
    /,
) -> list[bytes]: ...

class Opener:
    """One direction's key in one OpenSSL context, opening packets one call each."""

    def __init__(self, key: bytes, iv: bytes) -> None: ...
    def open(
        self, packet_number: int, header: bytes | memoryview, ciphertext: bytes | memoryview, /
    ) -> bytes | None: ...
