"""The laptop's end of a recorder's serial console (machine mode, ``protocol/console_wire.py``).

``ConsoleClient`` opens any port pyserial opens: a USB-UART adapter (``/dev/ttyUSB0``), a PTY, or
a URL such as ``socket://HOST:PORT`` or ``rfc2217://HOST:PORT`` (a QEMU guest's serial port, a
serial server), so the same client runs against a board on the bench and an emulated one.

Every wait is bounded by ``timeout_s``. Lines that are not replies (the prompt, boot messages on
a shared console, noise) are skipped; bytes that are not text are counted, since a wrong baud
rate shows up as exactly that. Failures are ``ViewerError``s that say what to check.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import serial

from dvrlink.protocol import console_wire as wire
from dvrlink.protocol.pairing import PairingUri
from dvrlink.viewer.errors import ViewerError

DEFAULT_BAUD = 115200
DEFAULT_TIMEOUT_S = 5.0
MAX_LINE = 64 * 1024
"""A longer line without a line end is noise, not a reply: it is dropped."""


class NoAnswer(ViewerError):
    """The recorder sent no reply to a request within the timeout."""


class ConsoleClient:
    """One open console port; use as a context manager.

    ``clock`` is a monotonic clock (seconds) for the timeouts.
    """

    def __init__(
        self,
        port: str,
        baud: int = DEFAULT_BAUD,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.baud = baud
        self.timeout_s = timeout_s
        self._clock = clock
        self._serial: serial.SerialBase | None = None
        self._buffer = bytearray()
        self._id_prefix = os.urandom(3).hex()
        """Request ids are ``PREFIX-N``: a reply left over from an earlier run cannot match."""
        self._next_id = 0
        self.noise_bytes = 0
        """Bytes seen that are not text (a wrong baud rate, a bad cable)."""
        self.serial_number = ""
        """The recorder's serial, from ``hello``."""

    def __enter__(self) -> ConsoleClient:
        self.open()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Open the port.

        Raises:
            ViewerError: it cannot be opened; the message says what to check.
        """
        try:
            self._serial = serial.serial_for_url(
                self.port, baudrate=self.baud, timeout=0.05, write_timeout=self.timeout_s
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ViewerError(
                f"cannot open the serial port {self.port} ({exc}): check that the USB-UART cable is "
                "plugged in, the device path (ls /dev/ttyUSB* /dev/ttyACM*), and that you may use it "
                "(group dialout)"
            ) from None
        with contextlib.suppress(serial.SerialException, OSError):
            self._serial.reset_input_buffer()  # what came before this session is not an answer

    def close(self) -> None:
        """Close the port (idempotent)."""
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    # --- commands -------------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """Greet the recorder: checks that it answers in machine mode and speaks our version.

        Raises:
            ViewerError: no reply (wrong baud rate, cable), or another protocol version.
        """
        self._write(b"\x15")  # Ctrl-U: drop whatever half line an earlier session left behind
        try:
            result = self.request("hello")
        except NoAnswer:
            seen = f"saw {self.noise_bytes} bytes that are not text; " if self.noise_bytes else ""
            raise ViewerError(
                f"no answer in machine mode at {self.baud} baud: check the baud rate and cable "
                f"({seen}the recorder's speed is its [console] baud; port {self.port})"
            ) from None
        self.serial_number = str(result.get("serial", ""))
        return result

    def unlock(self, pin: str) -> None:
        """Give the installer PIN.

        Raises:
            ViewerError: a wrong PIN, or too many wrong PINs (the recorder's message).
        """
        self.request("unlock", pin=pin)

    def status(self) -> dict[str, Any]:
        """The recorder's status."""
        return self.request("status")

    def pairing_target(self) -> PairingUri:
        """The serial, pairing code and key fingerprint, read over the wire.

        Raises:
            ViewerError: the recorder has no code yet, or sent a malformed one.
        """
        result = self.request("pairing-code")
        try:
            return PairingUri(
                serial=str(result["serial"]), code=str(result["code"]), fingerprint=str(result["fingerprint"])
            )
        except (KeyError, ValueError) as exc:
            raise ViewerError(
                f"the recorder on {self.port} sent a pairing code this dvrlink cannot read ({exc}); "
                "update dvrlink, or pair with the code on the label"
            ) from None

    def set(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Save and apply settings (``console_wire.SETTING_KEYS``).

        Raises:
            ViewerError: the recorder refused a value (nothing changed), or the write was not
                confirmed (no reply, the port failed): then the recorder holds either the old
                settings or the new ones, never half.
        """
        try:
            return self.request("set", settings=settings)
        except NoAnswer as exc:
            raise ViewerError(
                f"the write was not confirmed: {exc.message}; the recorder holds either its old "
                f"settings or the new ones, never half: run `dvrlink provision --port {self.port}` "
                "to see which"
            ) from None
        except _PortFailed as exc:
            raise ViewerError(
                f"the write was not confirmed: {exc.message}; the recorder holds either its old "
                f"settings or the new ones, never half: reconnect and run `dvrlink provision --port "
                f"{self.port}` to see which"
            ) from None

    def request(self, command: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its result.

        Raises:
            NoAnswer: no reply within ``timeout_s``.
            ViewerError: the port failed, the reply is from another protocol version, or the
                recorder refused (its message).
        """
        self._next_id += 1
        request_id = f"{self._id_prefix}-{self._next_id}"
        self._write(wire.encode_request(request_id, command, **args))
        deadline = self._clock() + self.timeout_s
        for line in self._lines(deadline):
            reply = wire.parse_reply(line)
            if reply is not None and reply.request_id in (request_id, None):
                return self._result(command, reply)
        raise NoAnswer(f"no reply from the recorder on {self.port} within {self.timeout_s:g} s")

    def _result(self, command: str, reply: wire.Reply) -> dict[str, Any]:
        if (
            reply.error_code in (wire.UNSUPPORTED_VERSION, wire.NO_VERSION)
            or reply.version != wire.PROTOCOL_VERSION
        ):
            theirs = ", ".join(str(v) for v in reply.supported) or str(reply.version)
            raise ViewerError(
                f"the recorder on {self.port} speaks console protocol version {theirs}; this dvrlink "
                f"speaks {wire.PROTOCOL_VERSION}: update dvrlink (or the recorder's firmware)"
            )
        if not reply.ok:
            hint = ""
            if reply.error_code == wire.LOCKED:
                hint = ": run again with --pin (the installer PIN)"
            raise ViewerError(f"the recorder refused {command}: {reply.error_message}{hint}")
        return reply.result

    # --- bytes ----------------------------------------------------------------------------------

    def _port(self) -> serial.SerialBase:
        if self._serial is None:
            raise ViewerError(f"the serial port {self.port} is not open")
        return self._serial

    def _write(self, data: bytes) -> None:
        try:
            self._port().write(data)
            self._port().flush()
        except (serial.SerialException, OSError) as exc:
            raise _PortFailed(f"writing to {self.port} failed ({exc}): the cable may be pulled") from None

    def _lines(self, deadline: float) -> Iterator[str]:
        """Yield complete lines (text) until ``deadline``."""
        port = self._port()
        while self._clock() < deadline:
            try:
                chunk = port.read(4096)
            except (serial.SerialException, OSError) as exc:
                raise _PortFailed(f"reading {self.port} failed ({exc}): the cable may be pulled") from None
            if not chunk:
                continue
            self.noise_bytes += sum(
                1 for b in chunk if b >= 0x80 or (b < 0x20 and b not in (0x09, 0x0A, 0x0D))
            )
            self._buffer += chunk
            while (end := self._buffer.find(b"\n")) >= 0:
                raw = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                yield self._text(raw)
            if len(self._buffer) > MAX_LINE:
                self._buffer.clear()

    @staticmethod
    def _text(raw: bytes) -> str:
        return raw.decode("ascii", errors="replace")


class _PortFailed(ViewerError):
    """Reading or writing the port failed (unplugged adapter)."""
