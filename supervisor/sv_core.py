"""The supervisor's policy and request handling: a plain object, time passed in, no I/O.

The main loop (sv_board.run) feeds it UART bytes (``receive``), ADC samples (``supply_sample``)
and the time (``poll``); it reads back the bytes to send (``take_output``), the level each output
signal should have (``asserted``), when to look again (``next_deadline``), and whether the reset log
changed (``log_serial``, compared with what was saved).

Policy (docs/supervisor.md):

- The heartbeat watchdog arms at the first heartbeat after the MCU starts. Armed, with no heartbeat
  for the heartbeat timeout, the MCU pulses the SoC's reset line. A DISARM request (the daemon
  stopping on purpose) stands it down, logged (CAUSE_DISARMED) when it was armed; the next
  heartbeat arms it again.
- After any reset of the SoC the next heartbeat may take ``boot_grace_ms`` plus a backoff that
  doubles with each watchdog reset in a row (``backoff_base_ms`` to ``backoff_max_ms``). Heartbeats
  for ``stable_ms`` after a reset end the run of resets.
- At most ``daily_cap`` watchdog resets in any 24 hours (rolling); the first one held back by the
  cap is logged (CAUSE_CAPPED).
- Each reset, modem power cycle and MCU start goes to the reset log (cause, unix time when a
  heartbeat told it, uptime, detail), newest last, ``log_entries`` long.

Signals are logical: ``SOC_RESET`` asserted holds the SoC in reset, ``MODEM_PWRKEY`` asserted pulls
the modem's PWRKEY low, ``MODEM_POWER_CUT`` asserted switches the modem's supply off. The board
(sv_board) maps them to pins and levels.
"""

from sv_wire import (
    DISARM,
    ERR_BAD_PAYLOAD,
    ERR_UNKNOWN_TYPE,
    ERROR,
    GET_STATUS,
    HEARTBEAT,
    POWER_CYCLE_MODEM,
    READ_RESET_LOG,
    READ_SUPPLY,
    REPLY,
    RESET_SOC,
    SET_HEARTBEAT_TIMEOUT,
    STATUS_BUSY,
    STATUS_NOT_FITTED,
    STATUS_OK,
    STATUS_OUT_OF_RANGE,
    FrameDecoder,
    encode_frame,
    pack_u16,
    pack_u32,
    u16,
    u32,
)

FIRMWARE_VERSION = (1, 1, 0)

SOC_RESET = "soc_reset"
MODEM_PWRKEY = "modem_pwrkey"
MODEM_POWER_CUT = "modem_power_cut"
SIGNALS = (SOC_RESET, MODEM_PWRKEY, MODEM_POWER_CUT)

CAUSE_HEARTBEAT_TIMEOUT = 1
"""The watchdog reset the SoC; detail: seconds without a heartbeat."""
CAUSE_COMMAND = 2
"""The SoC asked to be reset; detail: 0."""
CAUSE_MODEM_POWER_CYCLE = 3
"""The SoC asked for a modem power cycle; detail: the profile."""
CAUSE_MCU_START = 4
"""The MCU started; detail: machine.reset_cause() (rp2: 1 power-on, 3 its own watchdog)."""
CAUSE_CAPPED = 5
"""A watchdog reset was held back by the daily cap; detail: seconds without a heartbeat."""
CAUSE_DISARMED = 6
"""The daemon stopped on purpose and disarmed the watchdog (not a reset); detail: seconds since
the last heartbeat."""

# Modem power-cycle profiles: number -> (name, steps). A step is (signal, asserted, hold_ms): set
# the signal, then hold it that long before the next step. Pulse widths: SIM800 needs PWRKEY low
# >= 1 s (on and off); Quectel EC2x/UC20 >= 500 ms and then release (700 ms also sits inside the
# EC2x turn-off window). The waits for the modem to power down are generous on purpose.
MODEM_PROFILES = {
    0: (
        "sim800",
        (
            (MODEM_PWRKEY, True, 1200),
            (MODEM_PWRKEY, False, 5000),
            (MODEM_PWRKEY, True, 1200),
            (MODEM_PWRKEY, False, 0),
        ),
    ),
    1: (
        "quectel-ec2x-uc20",
        (
            (MODEM_PWRKEY, True, 700),
            (MODEM_PWRKEY, False, 30000),
            (MODEM_PWRKEY, True, 700),
            (MODEM_PWRKEY, False, 0),
        ),
    ),
    2: (
        "sim800-power-cut",
        (
            (MODEM_POWER_CUT, True, 5000),
            (MODEM_POWER_CUT, False, 1000),
            (MODEM_PWRKEY, True, 1200),
            (MODEM_PWRKEY, False, 0),
        ),
    ),
    3: (
        "quectel-power-cut",
        (
            (MODEM_POWER_CUT, True, 5000),
            (MODEM_POWER_CUT, False, 1000),
            (MODEM_PWRKEY, True, 700),
            (MODEM_PWRKEY, False, 0),
        ),
    ),
}

NEVER = -1
REPEAT_WINDOW_MS = 5000
"""A request of the same type and seq within this time is a retransmission: answered, not acted on."""


class Config:
    """The policy's settings, in milliseconds unless named otherwise. Not changed once built (the
    heartbeat timeout the SoC sets lives in the Supervisor, starting from this default)."""

    def __init__(
        self,
        heartbeat_timeout_s: int = 120,
        min_timeout_s: int = 10,
        max_timeout_s: int = 3600,
        boot_grace_ms: int = 180_000,
        backoff_base_ms: int = 60_000,
        backoff_max_ms: int = 4 * 3600_000,
        stable_ms: int = 600_000,
        daily_cap: int = 6,
        day_ms: int = 86_400_000,
        reset_pulse_ms: int = 200,
        reply_lead_ms: int = 20,
        log_entries: int = 16,
    ) -> None:
        if not min_timeout_s <= heartbeat_timeout_s <= max_timeout_s:
            raise ValueError("heartbeat_timeout_s must lie between min_timeout_s and max_timeout_s")
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.min_timeout_s = min_timeout_s
        self.max_timeout_s = max_timeout_s
        self.boot_grace_ms = boot_grace_ms
        """How long a SoC may take from reset to its first heartbeat."""
        self.backoff_base_ms = backoff_base_ms
        self.backoff_max_ms = backoff_max_ms
        self.stable_ms = stable_ms
        self.daily_cap = daily_cap
        self.day_ms = day_ms
        self.reset_pulse_ms = reset_pulse_ms
        self.reply_lead_ms = reply_lead_ms
        """Time between a reply and the action it announces, so the reply leaves the UART first."""
        self.log_entries = log_entries


class Supervisor:
    """The policy and the request handler. ``fitted``: the signals this board has wired."""

    def __init__(
        self,
        config: Config,
        fitted: tuple[str, ...],
        log: list[list[int]],
        boots: int,
        now_ms: int,
        mcu_reset_cause: int,
    ) -> None:
        self.config = config
        self.fitted = fitted
        self.decoder = FrameDecoder()
        self.bad_requests = 0
        self.timeout_ms = config.heartbeat_timeout_s * 1000
        self.log = log[-config.log_entries :]
        """Entries [cause, unix_time, uptime_s, detail], oldest first."""
        self.boots = boots
        self.log_serial = 0
        """Grows with every change of ``log`` or ``boots``."""
        self.asserted: dict[str, bool] = {}
        for signal in SIGNALS:
            self.asserted[signal] = False
        self._out = b""
        self._armed = False
        self._last_heartbeat = NEVER
        self._health = 0
        self._unix_at = (0, 0)
        """(unix time, our ms) of the last heartbeat that told the time."""
        self._last_reset = NEVER
        self._resets_in_row = 0
        self._first_heartbeat_since_reset = NEVER
        self._watchdog_resets: list[int] = []
        self._capped_logged = False
        self._steps: list[tuple[int, str, bool]] = []
        """Pending signal changes: (at ms, signal, asserted), in time order."""
        self._modem_busy_until = NEVER
        self._last_request = (-1, -1)
        self._last_request_at = NEVER
        self._last_reply = b""
        self.supply_mv = 0
        self.supply_min_mv = 0
        self.supply_raw = 0
        self._add_log(CAUSE_MCU_START, now_ms, mcu_reset_cause)

    # -- inputs ------------------------------------------------------------------------------

    def receive(self, data: bytes, now_ms: int) -> None:
        """Bytes from the UART. Frames in them are handled at once; the rest is counted."""
        for msg_type, seq, payload in self.decoder.feed(data, now_ms):
            self._handle(msg_type, seq, payload, now_ms)

    def supply_sample(self, millivolts: int, raw: int) -> None:
        """A reading of the supply voltage (the main loop converts the ADC's count)."""
        self.supply_mv = millivolts
        self.supply_raw = raw
        if self.supply_min_mv == 0 or millivolts < self.supply_min_mv:
            self.supply_min_mv = millivolts

    def poll(self, now_ms: int) -> None:
        """Apply what is due at ``now_ms``: signal changes and the heartbeat watchdog."""
        for msg_type, seq, payload in self.decoder.poll(now_ms):
            self._handle(msg_type, seq, payload, now_ms)
        due = self._watchdog_due()
        if due != NEVER and now_ms >= due:
            if self._cap_release(now_ms) == NEVER:
                self._watchdog_fires(now_ms)
            elif not self._capped_logged:
                self._capped_logged = True
                self._add_log(CAUSE_CAPPED, now_ms, self._silent_s(now_ms))
        while self._steps and self._steps[0][0] <= now_ms:
            _, signal, level = self._steps.pop(0)
            self.asserted[signal] = level

    # -- outputs -----------------------------------------------------------------------------

    def take_output(self) -> bytes:
        """The bytes to write to the UART since the last call."""
        out, self._out = self._out, b""
        return out

    def next_deadline(self, now_ms: int) -> int:
        """When ``poll`` has something to do next (NEVER: nothing pending)."""
        times = [self._steps[0][0]] if self._steps else []
        if self.decoder.deadline() != NEVER:
            times.append(self.decoder.deadline())
        due = self._watchdog_due()
        if due != NEVER:
            release = self._cap_release(now_ms) if due <= now_ms else NEVER
            times.append(max(due, now_ms, release))
        return min(times) if times else NEVER

    def resets_today(self, now_ms: int) -> int:
        return len([t for t in self._watchdog_resets if now_ms - t < self.config.day_ms])

    # -- the watchdog ------------------------------------------------------------------------

    def _backoff_ms(self) -> int:
        if self._resets_in_row == 0:
            return 0
        backoff = self.config.backoff_base_ms * (1 << min(self._resets_in_row - 1, 30))
        return min(backoff, self.config.backoff_max_ms)

    def _watchdog_due(self) -> int:
        """When the watchdog resets the SoC if no heartbeat comes first, leaving the daily cap
        aside (NEVER: not armed)."""
        if not self._armed:
            return NEVER
        if self._last_reset != NEVER and self._last_reset >= self._last_heartbeat:
            return self._last_reset + self.config.boot_grace_ms + self._backoff_ms()
        return self._last_heartbeat + self.timeout_ms

    def _cap_release(self, now_ms: int) -> int:
        """When the daily cap lets the next watchdog reset through (NEVER: it does now)."""
        recent = [t for t in self._watchdog_resets if now_ms - t < self.config.day_ms]
        if len(recent) < self.config.daily_cap:
            return NEVER
        return recent[len(recent) - self.config.daily_cap] + self.config.day_ms

    def _watchdog_fires(self, now_ms: int) -> None:
        silent_s = self._silent_s(now_ms)
        self._watchdog_resets = [t for t in self._watchdog_resets if now_ms - t < self.config.day_ms]
        self._watchdog_resets.append(now_ms)
        self._resets_in_row += 1
        self._first_heartbeat_since_reset = NEVER
        self._capped_logged = False
        self._reset_soc(now_ms, now_ms, CAUSE_HEARTBEAT_TIMEOUT, silent_s)

    def _silent_s(self, now_ms: int) -> int:
        """Seconds since the last heartbeat or, after a reset, since that reset."""
        return (now_ms - max(self._last_heartbeat, self._last_reset)) // 1000

    def _reset_soc(self, now_ms: int, at_ms: int, cause: int, detail: int) -> None:
        self._last_reset = at_ms
        self._schedule(at_ms, ((SOC_RESET, True, self.config.reset_pulse_ms), (SOC_RESET, False, 0)))
        self._add_log(cause, now_ms, detail)

    def _schedule(self, at_ms: int, steps: tuple[tuple[str, bool, int], ...]) -> int:
        """Queue a pulse sequence from ``at_ms``; returns when it ends."""
        for signal, level, hold_ms in steps:
            self._steps.append((at_ms, signal, level))
            at_ms += hold_ms
        self._steps.sort(key=lambda step: step[0])
        return at_ms

    # -- the reset log -----------------------------------------------------------------------

    def unix_time(self, now_ms: int) -> int:
        """The wall-clock time, from the last heartbeat that told it (0: never told)."""
        unix, at = self._unix_at
        return unix + (now_ms - at) // 1000 if unix else 0

    def _add_log(self, cause: int, now_ms: int, detail: int) -> None:
        self.log.append([cause, self.unix_time(now_ms), now_ms // 1000, detail])
        del self.log[: max(0, len(self.log) - self.config.log_entries)]
        self.log_serial += 1

    # -- requests ----------------------------------------------------------------------------

    def _reply(self, msg_type: int, seq: int, payload: bytes) -> bytes:
        frame = encode_frame(msg_type, seq, payload)
        self._out += frame
        return frame

    def _handle(self, msg_type: int, seq: int, payload: bytes, now_ms: int) -> None:
        if msg_type == HEARTBEAT:
            self._heartbeat(seq, payload, now_ms)
            return
        if (
            (msg_type, seq) == self._last_request
            and msg_type in (POWER_CYCLE_MODEM, RESET_SOC)
            and now_ms - self._last_request_at < REPEAT_WINDOW_MS
        ):
            # A repeat of the request just handled (its reply was lost): answer again, act once.
            self._out += self._last_reply
            return
        handler = {
            POWER_CYCLE_MODEM: self._power_cycle,
            RESET_SOC: self._reset_command,
            READ_RESET_LOG: self._read_log,
            READ_SUPPLY: self._read_supply,
            SET_HEARTBEAT_TIMEOUT: self._set_timeout,
            GET_STATUS: self._status,
            DISARM: self._disarm,
        }.get(msg_type)
        if handler is None:
            self.bad_requests += 1
            self._reply(ERROR, seq, bytes((ERR_UNKNOWN_TYPE, msg_type)))
            return
        reply = handler(payload, now_ms)
        if reply is None:
            self.bad_requests += 1
            self._reply(ERROR, seq, bytes((ERR_BAD_PAYLOAD, msg_type)))
            return
        self._last_request = (msg_type, seq)
        self._last_request_at = now_ms
        self._last_reply = self._reply(msg_type | REPLY, seq, reply)

    def _heartbeat(self, seq: int, payload: bytes, now_ms: int) -> None:
        if len(payload) != 5:
            self.bad_requests += 1
            self._reply(ERROR, seq, bytes((ERR_BAD_PAYLOAD, HEARTBEAT)))
            return
        self._armed = True
        self._last_heartbeat = now_ms
        self._health = payload[0]
        unix = u32(payload, 1)
        if unix:
            self._unix_at = (unix, now_ms)
        if self._first_heartbeat_since_reset == NEVER:
            self._first_heartbeat_since_reset = now_ms
        elif now_ms - self._first_heartbeat_since_reset >= self.config.stable_ms:
            self._resets_in_row = 0
        self._reply(HEARTBEAT | REPLY, seq, pack_u16(self.timeout_ms // 1000))

    def _disarm(self, payload: bytes, now_ms: int) -> bytes | None:
        if len(payload) != 4:
            return None
        was_armed = self._armed
        unix = u32(payload, 0)
        if unix:
            self._unix_at = (unix, now_ms)
        if was_armed:
            # Logged once: a retransmitted DISARM finds the watchdog disarmed already.
            self._armed = False
            self._add_log(CAUSE_DISARMED, now_ms, self._silent_s(now_ms))
        return bytes((1 if was_armed else 0,))

    def _power_cycle(self, payload: bytes, now_ms: int) -> bytes | None:
        if len(payload) != 1:
            return None
        profile = MODEM_PROFILES.get(payload[0])
        if profile is None or any(step[0] not in self.fitted for step in profile[1]):
            return bytes((STATUS_NOT_FITTED,)) + pack_u32(0)
        if now_ms < self._modem_busy_until:
            return bytes((STATUS_BUSY,)) + pack_u32(self._modem_busy_until - now_ms)
        start = now_ms + self.config.reply_lead_ms
        self._modem_busy_until = self._schedule(start, profile[1])
        self._add_log(CAUSE_MODEM_POWER_CYCLE, now_ms, payload[0])
        return bytes((STATUS_OK,)) + pack_u32(self._modem_busy_until - now_ms)

    def _reset_command(self, payload: bytes, now_ms: int) -> bytes | None:
        if payload:
            return None
        self._reset_soc(now_ms, now_ms + self.config.reply_lead_ms, CAUSE_COMMAND, 0)
        self._first_heartbeat_since_reset = NEVER
        return bytes((STATUS_OK,)) + pack_u16(self.config.reply_lead_ms)

    def _read_log(self, payload: bytes, now_ms: int) -> bytes | None:
        if payload:
            return None
        out = pack_u16(self.boots) + bytes((len(self.log),))
        for cause, unix, uptime_s, detail in reversed(self.log):
            out += bytes((cause,)) + pack_u32(unix) + pack_u32(uptime_s) + pack_u16(detail)
        return out

    def _read_supply(self, payload: bytes, now_ms: int) -> bytes | None:
        if payload:
            return None
        return pack_u16(self.supply_mv) + pack_u16(self.supply_min_mv) + pack_u16(self.supply_raw)

    def _set_timeout(self, payload: bytes, now_ms: int) -> bytes | None:
        if len(payload) != 2:
            return None
        seconds = u16(payload, 0)
        if not self.config.min_timeout_s <= seconds <= self.config.max_timeout_s:
            return bytes((STATUS_OUT_OF_RANGE,)) + pack_u16(self.timeout_ms // 1000)
        self.timeout_ms = seconds * 1000
        return bytes((STATUS_OK,)) + pack_u16(seconds)

    def _status(self, payload: bytes, now_ms: int) -> bytes | None:
        if payload:
            return None
        since = (now_ms - self._last_heartbeat) // 1000 if self._last_heartbeat != NEVER else 0xFFFF
        d = self.decoder
        return (
            bytes(FIRMWARE_VERSION)
            + bytes((1 if self._armed else 0, self._health))
            + pack_u16(self.timeout_ms // 1000)
            + pack_u16(since)
            + bytes((self.resets_today(now_ms), self.config.daily_cap))
            + pack_u32(d.garbage_bytes)
            + pack_u16(d.bad_crc)
            + pack_u16(d.bad_version)
            + pack_u16(self.bad_requests)
            + pack_u32(now_ms // 1000)
        )
