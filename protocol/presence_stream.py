"""Presence messages over a byte stream (TCP/TLS), for networks that block UDP. Sans-I/O.

Each presence message (exactly the datagram the UDP transport would carry) is sent as a
**2-byte big-endian length** followed by the message. A length of 0 or above ``MAX_FRAME``
(the largest presence datagram, 1200 bytes), or a message whose first byte is not a presence
type (0x04-0x0F), is a protocol error: the deframer stops and the connection must be closed.
The cores on either side do not change: the link feeds them the deframed messages as if they
were datagrams. See docs/protocol.md, "Presence over TCP".
"""

from __future__ import annotations

from collections import deque

from dvrlink.protocol.presence_wire import MAX_DATAGRAM, is_presence

MAX_FRAME = MAX_DATAGRAM
"""Largest message in one frame, bytes."""
LENGTH_SIZE = 2


def encode_frame(message: bytes) -> bytes:
    """``message`` with its length prefix, ready to write to the stream.

    Raises:
        ValueError: ``message`` is empty or longer than ``MAX_FRAME`` bytes (a local bug: the
            cores never make such messages).
    """
    if not 0 < len(message) <= MAX_FRAME:
        raise ValueError(f"a presence frame holds 1-{MAX_FRAME} bytes, not {len(message)}")
    return len(message).to_bytes(LENGTH_SIZE, "big") + message


class StreamDeframer:
    """Splits a received byte stream into presence messages.

    Feed whatever the socket gave with :meth:`receive_data` (any split, down to single bytes);
    take whole messages with :meth:`next_message`. Bad bytes from the peer never raise: they set
    :attr:`error` (what was wrong, for the log), after which nothing more is returned and the
    caller closes the connection. An incomplete frame never holds more than one frame's bytes.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._messages: deque[bytes] = deque()
        self.error: str | None = None
        """Why the stream is unusable, or None while it is fine."""

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the stream (ignored once :attr:`error` is set)."""
        if self.error is not None:
            return
        self._buffer += data
        while self.error is None and len(self._buffer) >= LENGTH_SIZE:
            length = int.from_bytes(self._buffer[:LENGTH_SIZE], "big")
            if not 0 < length <= MAX_FRAME:
                self._fail(f"frame length {length} is outside 1-{MAX_FRAME}")
                return
            if len(self._buffer) > LENGTH_SIZE and not is_presence(self._buffer[LENGTH_SIZE]):
                self._fail(f"first byte {self._buffer[LENGTH_SIZE]:#04x} is not a presence message type")
                return
            end = LENGTH_SIZE + length
            if len(self._buffer) < end:
                return
            self._messages.append(bytes(self._buffer[LENGTH_SIZE:end]))
            del self._buffer[:end]

    def next_message(self) -> bytes | None:
        """The next whole message, or None (also after an error)."""
        if self.error is not None or not self._messages:
            return None
        return self._messages.popleft()

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)

    def _fail(self, why: str) -> None:
        self.error = why
        self._buffer.clear()
        self._messages.clear()
