"""Types of the compiled bulk sealer (``protocol/_dataplane_seal.c``)."""

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
    /,
) -> list[bytes]: ...
