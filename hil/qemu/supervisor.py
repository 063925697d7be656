"""The board supervisor's outputs wired to the rig, as a board's transistors wire them.

The supervisor's firmware (``supervisor/``) runs on the host in MicroPython and records every
level change of its pins (``tests/support/micropython.py``, ``Trace.pins``: ``(t_ms, gpio,
level)``). On a board those pins pull the SoC's nRESET, the modem's PWRKEY and the gate of the
modem's supply switch; on the rig :class:`PinWiring` follows the recorded changes and hands them
to what stands for those parts:

- the modem's two lines go to :class:`ModemPower`, which says when the modem's power goes off or
  on, and that to the modem emulator (``ModemEmulator.power``);
- the SoC reset line may go to QEMU's ``system_reset`` (the monitor).

:class:`ModemPower` is plain logic with the pins' times passed in, so it is tested on its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

SOC_RESET_GPIO = 2
PWRKEY_GPIO = 3
POWER_CUT_GPIO = 4
"""The Pico's pins (``sv_board.PICO_BOARD``): each is active high at the MCU."""

PWRKEY_PRESS_MS = {
    "simcom-sim800": 1000,
    "quectel-ec25": 500,
    "quectel-uc20": 500,
}
"""The shortest PWRKEY press that switches each emulated modem family on or off (the SIM800
needs 1 s, Quectel's EC2x and UC20 500 ms: their hardware design guides)."""

FOLLOW_STEP_S = 0.01
"""How often :class:`PinWiring` looks for new pin changes."""


@dataclass(frozen=True, slots=True)
class ModemLines:
    """Which supervisor pins reach the modem, and the press its PWRKEY needs."""

    press_ms: int
    pwrkey: int = PWRKEY_GPIO
    power_cut: int = POWER_CUT_GPIO

    @classmethod
    def for_profile(cls, profile: str) -> ModemLines:
        """The lines for an emulated modem family (``hil.modememu`` profile name).

        Raises:
            ValueError: no PWRKEY timing is known for ``profile`` (add it to ``PWRKEY_PRESS_MS``).
        """
        try:
            return cls(PWRKEY_PRESS_MS[profile])
        except KeyError:
            raise ValueError(
                f"no PWRKEY timing for the modem {profile!r}: add it to hil.qemu.supervisor.PWRKEY_PRESS_MS"
            ) from None


class ModemPower:
    """A modem's power as its PWRKEY and supply switch make it: a press of at least
    ``press_ms`` (counted at release) turns a supplied modem on when it is off and off when it is
    on; cutting the supply turns it off, and a modem whose supply comes back stays off until
    PWRKEY turns it on (how the SIM800 and the Quectel modems start). Starts on and supplied."""

    def __init__(self, lines: ModemLines) -> None:
        self.lines = lines
        self.on = True
        self.supplied = True
        self._pressed_at: int | None = None

    def pin(self, t_ms: int, gpio: int, level: int) -> bool | None:
        """One level change of a supervisor pin; returns the modem's new power (True: on) when it
        changed, None otherwise. Other pins are ignored."""
        if gpio == self.lines.power_cut:
            self.supplied = level == 0
            if not self.supplied and self.on:
                self.on = False
                return False
            return None
        if gpio != self.lines.pwrkey:
            return None
        if level:
            self._pressed_at = t_ms
            return None
        pressed_at, self._pressed_at = self._pressed_at, None
        if pressed_at is None or not self.supplied or t_ms - pressed_at < self.lines.press_ms:
            return None
        self.on = not self.on
        return self.on


class PinWiring:
    """Follows a supervisor's recorded pin changes (``pins``, appended to by another thread)
    from the current end on, in a thread of its own: the modem's lines go through ``modem`` to
    ``set_modem_power``, each pulse of the SoC reset line to ``reset_soc`` (when given). Use as a
    context manager. What a callback raises is kept in ``error`` and raised again by ``close``."""

    def __init__(
        self,
        pins: Sequence[tuple[int, int, int]],
        *,
        modem: ModemPower | None = None,
        set_modem_power: Callable[[bool], None] | None = None,
        reset_soc: Callable[[], None] | None = None,
        soc_reset_gpio: int = SOC_RESET_GPIO,
    ) -> None:
        self._pins = pins
        self._seen = len(pins)
        self.modem = modem
        self._set_modem_power = set_modem_power
        self._reset_soc = reset_soc
        self._soc_reset_gpio = soc_reset_gpio
        self._soc_held = False
        self.power_changes: list[tuple[int, bool]] = []
        """(t_ms, on) of each change of the modem's power, in the supervisor's time."""
        self.soc_resets: list[int] = []
        """The supervisor's time of each SoC reset pulse handed on (at its release)."""
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="supervisor-wiring", daemon=True)
        self._thread.start()

    def __enter__(self) -> PinWiring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop following.

        Raises:
            RuntimeError: a callback failed (chained to its exception).
        """
        self._stop.set()
        self._thread.join(10.0)
        if self.error is not None:
            raise RuntimeError(f"the supervisor's wiring failed: {self.error!r}") from self.error

    def _follow(self) -> None:
        try:
            while not self._stop.wait(FOLLOW_STEP_S):
                end = len(self._pins)
                for t_ms, gpio, level in self._pins[self._seen : end]:
                    self._apply(t_ms, gpio, level)
                self._seen = end
        except BaseException as exc:  # raised again by close, in the test's thread
            self.error = exc

    def _apply(self, t_ms: int, gpio: int, level: int) -> None:
        if gpio == self._soc_reset_gpio:
            pulsed, self._soc_held = self._soc_held and level == 0, level != 0
            if pulsed and self._reset_soc is not None:
                log.info("supervisor wiring: the SoC reset line pulsed at %d ms", t_ms)
                self.soc_resets.append(t_ms)
                self._reset_soc()
            return
        if self.modem is None:
            return
        power = self.modem.pin(t_ms, gpio, level)
        if power is not None:
            log.info("supervisor wiring: the modem's power goes %s at %d ms", "on" if power else "off", t_ms)
            self.power_changes.append((t_ms, power))
            if self._set_modem_power is not None:
                self._set_modem_power(power)
