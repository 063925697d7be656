"""The port side of the modem emulator: a thread that moves bytes and runs timers, plus the fault API.

Use it as a context manager in tests::

    with ModemEmulator("quectel-ec25", SimCard.for_network("26201")) as emu:
        fd = os.open(emu.path, os.O_RDWR | os.O_NOCTTY)
        ...

By default the emulator answers on a new pseudo-terminal (``path`` is its name). With ``port``
it answers on a serial device of this host instead (opened with pyserial at ``baud``: the
host's end of a USB-UART cable to a bench board's modem UART), and ``path`` is that port.

Every public method is thread-safe and returns at once; the waits (:meth:`wait_for_command`,
:meth:`wait_for_path_change`) take a timeout and raise TimeoutError when it passes.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import os
import selectors
import threading
import time
import tty
from collections.abc import Callable
from datetime import UTC, datetime

import serial

from hil.modememu.model import (
    STAT_DENIED,
    STAT_HOME,
    STAT_NOT_REGISTERED,
    STAT_ROAMING,
    STAT_SEARCHING,
    DataPath,
    ModemModel,
    NetworkDelays,
    SentSms,
    SimCard,
)
from hil.modememu.profiles import EmuProfile, get_profile
from hil.modememu.sms import IncomingSms

log = logging.getLogger(__name__)

MAX_PENDING_OUTPUT = 1 << 20
REGISTRATION_NAMES = {
    "home": STAT_HOME,
    "roaming": STAT_ROAMING,
    "denied": STAT_DENIED,
    "searching": STAT_SEARCHING,
    "none": STAT_NOT_REGISTERED,
}
DEFAULT_GARBAGE = b"\x00\xff\xfe~\x7f\x80\x1b[0m\xc3(garbage\r\n\x00"


class ModemEmulator:
    """An emulated modem behind a pseudo-terminal, with scriptable faults.

    ``profile`` is a name from :data:`~hil.modememu.profiles.PROFILE_NAMES` or a profile object;
    ``sim`` the inserted SIM (None: no SIM). ``boot_delay_s`` is how long a reset keeps the modem
    silent; ``split_gap_s`` the pause between bytes in split-write mode.
    """

    def __init__(
        self,
        profile: str | EmuProfile = "generic",
        sim: SimCard | None = None,
        *,
        no_sim: bool = False,
        boot_delay_s: float = 0.05,
        split_gap_s: float = 0.003,
        extra_ok: tuple[str, ...] = (),
        data_path: DataPath | None = None,
        port: str | None = None,
        baud: int = 115200,
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.port = port
        """A serial device (or pyserial URL) to answer on instead of a new PTY; None: a PTY."""
        self.baud = baud
        self._serial: serial.SerialBase | None = None
        self.split_gap_s = split_gap_s
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.model = ModemModel(
            self.profile,
            None if no_sim else (sim or SimCard()),
            self._enqueue,
            self._schedule,
            boot_delay_s=boot_delay_s,
            extra_ok=extra_ok,
            data_path=data_path,
        )
        self.model.on_command = self._command_seen
        self._out = bytearray()
        self._split = False
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._master = -1
        self._slave = -1
        self._path = ""
        self._generation = 0
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._running = False
        self._write_pending = False
        self.on_path_change: Callable[[str], None] | None = None
        """Called (from the emulator thread) with the new path after the port came back."""
        self._readers: dict[int, Callable[[], None]] = {}

    # --------------------------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Open the PTY (or ``port``) and start the thread; returns the path to open (``/dev/pts/N``).

        Raises:
            OSError: ``port`` cannot be opened (the message names it).
        """
        with self._lock:
            if self._running:
                return self._path
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            try:
                self._open_pty()
            except OSError:
                for fd in (self._wake_r, self._wake_w):
                    os.close(fd)
                self._wake_r = self._wake_w = -1
                raise
            self._running = True
        self._thread = threading.Thread(target=self._run, name=f"modememu-{self.profile.name}", daemon=True)
        self._thread.start()
        return self._path

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the PTY; a data call ends, as at power-off.

        Raises RuntimeError if the thread does not end."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            self.model.end_calls()
            self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"modem emulator thread did not stop within {timeout} s")
        with self._lock:
            self._close_pty()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._wake_r = self._wake_w = -1

    def __enter__(self) -> ModemEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def path(self) -> str:
        """The PTY path to open; empty while the port has vanished."""
        with self._lock:
            return self._path

    @property
    def commands(self) -> list[str]:
        """Command lines received so far (a copy)."""
        with self._lock:
            return list(self.model.commands)

    # ---------------------------------------------------------------------------------- waiting

    def wait_for_command(self, prefix: str, timeout: float = 5.0, *, after: int = 0) -> str:
        """The first command line at index ``after`` or later starting with ``prefix`` (case-insensitive).

        Raises TimeoutError naming the commands seen when none arrives within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        want = prefix.upper()
        with self._changed:
            while True:
                for line in self.model.commands[after:]:
                    if line.upper().startswith(want):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no command starting with {prefix!r} within {timeout} s; "
                        f"seen: {self.model.commands[after:][-10:]}"
                    )
                self._changed.wait(remaining)

    def wait_for_path_change(self, old: str, timeout: float = 5.0) -> str:
        """The new PTY path once the port came back under a path other than ``old``.

        Raises TimeoutError when it does not within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._path or self._path == old:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the emulated port did not come back within {timeout} s")
                self._changed.wait(remaining)
            return self._path

    # ----------------------------------------------------------------------------------- faults

    def hang(self, on: bool = True) -> None:
        """Stop answering (input is read and dropped, nothing is written) until ``hang(False)``."""
        with self._lock:
            self.model.faults.hung = on
            if on:
                self._out.clear()

    def inject_garbage(self, data: bytes = DEFAULT_GARBAGE) -> None:
        """Write ``data`` (line noise) to the host now."""
        with self._lock:
            self._enqueue(data)

    def split_writes(self, on: bool = True) -> None:
        """Write one byte at a time, ``split_gap_s`` apart."""
        with self._lock:
            self._split = on

    def set_echo(self, on: bool) -> None:
        """Turn command echo on or off behind the host's back."""
        with self._lock:
            self.model.settings.echo = on

    def urc_storm(self, count: int = 200, line: str | None = None) -> None:
        """Send ``count`` copies of ``line`` (default: the family's frequent URC) at once."""
        with self._lock:
            urc = line or self.profile.signal_urc
            for _ in range(count):
                self.model.send_urc(urc)

    def send_urc(self, line: str) -> None:
        with self._lock:
            self.model.send_urc(line)

    def late_reply(self, delay_s: float) -> None:
        """Hold back the whole reply to the next command for ``delay_s`` (later commands answer
        normally, so the late reply arrives after theirs)."""
        with self._lock:
            self.model.faults.late_reply_s = delay_s

    def reboot(self, *, mid_command: bool = False) -> None:
        """Reboot now (silence, then boot URCs such as ``RDY``), or at the next command instead of
        answering it when ``mid_command``."""
        with self._lock:
            if mid_command:
                self.model.faults.reboot_next = True
            else:
                self.model.reboot()

    def remove_sim(self) -> None:
        """Pull the SIM (vendor hot-swap URC, registration lost)."""
        with self._lock:
            self.model.remove_sim()

    def insert_sim(self, sim: SimCard | None = None) -> None:
        """Insert ``sim`` (default: a fresh default SIM); a SIM still inside is removed first."""
        with self._lock:
            self.model.insert_sim(sim or SimCard())

    def swap_sim(self, sim: SimCard) -> None:
        """Removal then insertion URCs, the new SIM's ICCID from then on."""
        with self._lock:
            self.model.remove_sim()
            self.model.insert_sim(sim)

    def set_registration(self, stat: int | str) -> None:
        """The network's answer: 1/home, 5/roaming, 3/denied, 2/searching, 0/none (URCs follow)."""
        value = REGISTRATION_NAMES[stat] if isinstance(stat, str) else stat
        with self._lock:
            self.model.network_stat = value
            self.model.update_registration()

    def set_signal(self, rssi: int, ber: int = 99) -> None:
        """``+CSQ`` values from now on (99,99: no signal)."""
        with self._lock:
            self.model.rssi, self.model.ber = rssi, ber

    def lose_signal(self) -> None:
        """``+CSQ: 99,99`` and registration back to searching."""
        self.set_signal(99, 99)
        self.set_registration(STAT_SEARCHING)

    def urcs_with_n(self, on: bool = True) -> None:
        """Registration URCs carry the leading ``<n>`` field, as some modems send them."""
        with self._lock:
            self.model.urc_with_n = on

    def power_on_in_flight_mode(self, fun: int = 4) -> None:
        """From now on, and after each reboot, the radio starts at ``+CFUN: <fun>`` (4: flight
        mode, 0: minimum) until ``AT+CFUN=1``."""
        with self._lock:
            self.model.power_on_cfun = fun
            self.model.cfun = fun
            self.model.update_registration()

    def fail_dials(self, count: int = 1) -> None:
        """The next ``count`` dials (PPP or ECM) fail with NO CARRIER/error; -1: all, 0: none."""
        with self._lock:
            self.model.faults.dial_failures = count

    def drop_carrier(self) -> None:
        """End the data call from the network side (PPP: ``NO CARRIER``; ECM: the call ends,
        with the family's URC if it has one)."""
        with self._lock:
            self.model.drop_carrier()

    def vanish(self, reappear_after: float | None = None, *, reboot: bool = True) -> None:
        """Close the PTY as a USB unplug does. With ``reappear_after``, a new PTY (new path)
        appears that much later, the modem in power-on state when ``reboot``. A data call ends
        (the USB device took its network function with it). On a serial ``port`` the emulator
        goes silent and comes back on the same port (the board's UART does not vanish)."""
        with self._lock:
            self.model.end_calls()
            self._close_pty()
            self._out.clear()
            self._changed.notify_all()
            if reappear_after is not None:

                def reappear() -> None:
                    self._open_pty()
                    if reboot:
                        self.model.reset_silently()
                    self._changed.notify_all()
                    if self.on_path_change is not None:
                        self.on_path_change(self._path)

                self._schedule(reappear_after, reappear)

    def power(self, on: bool) -> None:
        """Switch the modem's power, as the board's supervisor does with PWRKEY or the supply
        switch (``hil.qemu.supervisor.ModemPower`` says when). Off: a data call ends, nothing is
        answered and what the host sends is dropped; the port stays, as a UART does (on the QEMU
        rig, QEMU holds the PTY). On: silent for ``boot_delay_s``, then the power-on state and
        the boot URCs (``RDY`` ...), as after a real power cycle. A ``hang`` ends with the
        power, as a modem's hung firmware does."""
        with self._lock:
            if on:
                self.model.faults.hung = False
                self.model.reboot()
            else:
                self.model.end_calls()
                self.model.faults.hung = True
                self._out.clear()
            self._changed.notify_all()

    # ---------------------------------------------------------------------------- short messages

    def receive_sms(self, sender: str, body: str | bytes, *, timestamp: datetime | None = None) -> None:
        """The network delivers an SMS from ``sender`` (``+4917...``, or an alphanumeric name):
        ``body`` as text (GSM 7-bit, UCS-2 when it needs it) or bytes (8-bit data). How it shows
        follows ``+CNMI`` and ``+CMGF`` (see ``ModemModel.receive_sms``); the service centre's time
        stamp is ``timestamp``, default now.

        Raises ValueError (before anything is delivered) when the body does not fit one SMS or the
        sender is not an address.
        """
        message = IncomingSms(sender, body, timestamp or datetime.now(UTC))
        message.pdu()  # checks that it can be delivered
        with self._lock:
            self.model.receive_sms(message)

    def fill_sms_store(self, count: int | None = None, sender: str = "+4930123456") -> int:
        """Store ``count`` filler messages quietly (default: until the SIM store is full), as a SIM
        that nobody emptied; returns how many were stored."""
        stamp = datetime.now(UTC)
        with self._lock:
            store = self.model.sms_store
            wanted = store.capacity - store.used if count is None else count
            stored = 0
            for number in range(wanted):
                if store.add(IncomingSms(sender, f"filler {number + 1}", stamp)) is None:
                    break
                stored += 1
            return stored

    def set_network_delays(self, delays: NetworkDelays) -> None:
        """The network's attach, PDP activation and SMS delivery times from now on."""
        with self._lock:
            self.model.delays = delays

    def sent_sms(self) -> list[SentSms]:
        """The messages the host sent with ``AT+CMGS`` so far (a copy), oldest first."""
        with self._lock:
            return list(self.model.sms_sent)

    def sms_counts(self) -> tuple[int, int, int]:
        """(messages stored, store capacity, messages the network still holds for us)."""
        with self._lock:
            store = self.model.sms_store
            return store.used, store.capacity, len(self.model.sms_waiting)

    # ------------------------------------------------------------------- hooks for data paths

    @property
    def sim(self) -> SimCard | None:
        """The SIM inside now (None: none)."""
        with self._lock:
            return self.model.sim

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the emulator's thread with its lock held, ``delay_s`` from now (a data
        path's timers). Thread-safe; there is no cancelling: ``fn`` checks whether it is still due."""
        with self._lock:
            self._schedule(delay_s, fn)

    def add_reader(self, fd: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the emulator's thread, lock held, whenever ``fd`` is readable, until
        :meth:`remove_reader` (a data path's TUN device). ``fd`` should be non-blocking."""
        with self._lock:
            self._readers[fd] = fn
            self._wake()

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (call before closing it)."""
        with self._lock:
            self._readers.pop(fd, None)
            self._wake()

    # ---------------------------------------------------------------------------------- plumbing

    def _command_seen(self, line: str) -> None:
        self._changed.notify_all()

    def _open_pty(self) -> None:
        if self.port is not None:
            self._open_serial(self.port)
            return
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._path = os.ttyname(slave)
        self._generation += 1

    def _open_serial(self, port: str) -> None:
        try:
            opened = serial.serial_for_url(port, baudrate=self.baud, timeout=0, write_timeout=0)
        except (serial.SerialException, ValueError) as exc:
            raise OSError(
                f"the modem emulator cannot open {port}: {exc}; check the port and its cable"
            ) from None
        try:
            fd = opened.fileno()
        except Exception as exc:  # pyserial's URL handlers without a descriptor raise their own errors
            opened.close()
            raise OSError(
                f"the modem emulator cannot wait on {port} ({exc}): give a serial device or a socket:// URL"
            ) from None
        os.set_blocking(fd, False)
        self._serial = opened
        self._master, self._slave = fd, -1
        self._path = port
        self._generation += 1

    def _close_pty(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
            self._serial = None
            self._master = self._slave = -1
            self._path = ""
            return
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        self._path = ""

    def _enqueue(self, data: bytes) -> None:
        if self._master < 0 or self.model.faults.hung:
            return
        self._out += data
        if len(self._out) > MAX_PENDING_OUTPUT:
            del self._out[: len(self._out) - MAX_PENDING_OUTPUT]
        self._wake()

    def _schedule(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))
        self._wake()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        registered = -1
        generation = 0
        next_write = 0.0
        readers: dict[int, Callable[[], None]] = {}
        try:
            while True:
                with self._lock:
                    if not self._running:
                        return
                    if readers != self._readers:
                        self._sync_readers(sel, readers)
                    if generation != self._generation or (registered >= 0 and self._master < 0):
                        if registered >= 0:
                            sel.unregister(registered)
                            registered = -1
                        if self._master >= 0:
                            sel.register(self._master, selectors.EVENT_READ, "pty")
                            registered = self._master
                        generation = self._generation
                    now = time.monotonic()
                    timeout = 0.5
                    if self._timers:
                        timeout = min(timeout, max(0.0, self._timers[0][0] - now))
                    if self._out and self._master >= 0:
                        timeout = min(timeout, max(0.0, next_write - now))
                for key, _ in sel.select(timeout):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    elif key.data == "pty":
                        self._read(key.fd)
                    else:
                        self._call_reader(key.fd, key.data)
                with self._lock:
                    now = time.monotonic()
                    while self._timers and self._timers[0][0] <= now:
                        _, _, fn = heapq.heappop(self._timers)
                        try:
                            fn()
                        except Exception:
                            log.exception("modem emulator timer failed")
                    if self._out and self._master >= 0 and now >= next_write:
                        next_write = self._flush(now)
        finally:
            sel.close()

    def _sync_readers(self, sel: selectors.BaseSelector, readers: dict[int, Callable[[], None]]) -> None:
        """Bring the selector's extra readers in line with ``_readers`` (lock held)."""
        for fd, fn in list(readers.items()):
            if self._readers.get(fd) is not fn:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    sel.unregister(fd)
                del readers[fd]
        for fd, fn in self._readers.items():
            if fd not in readers:
                try:
                    sel.register(fd, selectors.EVENT_READ, fn)
                except (KeyError, ValueError, OSError) as exc:
                    log.error("modem emulator cannot watch fd %d: %s", fd, exc)
                    continue
                readers[fd] = fn

    def _call_reader(self, fd: int, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._readers.get(fd) is not fn:
                return  # removed since the select
            try:
                fn()
            except Exception:
                log.exception("modem emulator reader for fd %d failed", fd)

    def _read(self, fd: int) -> None:
        # Under the lock, and only while ``fd`` is still the master: ``vanish`` (another thread)
        # may have closed it since the select, and the process may already have reused the number
        # for something else (a directory being listed gave IsADirectoryError here once).
        with self._lock:
            if fd != self._master:
                return
            try:
                data = os.read(fd, 4096)  # non-blocking
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    return
                raise
            if data:
                self.model.feed(data)

    def _flush(self, now: float) -> float:
        """Write pending output; returns when to write next."""
        chunk = bytes(self._out[:1]) if self._split else bytes(self._out)
        try:
            written = os.write(self._master, chunk)
        except BlockingIOError:
            return now + 0.005
        except OSError as exc:
            log.debug("modem emulator write failed: %s", exc)
            self._out.clear()
            return now
        del self._out[:written]
        return now + self.split_gap_s if self._split else now
