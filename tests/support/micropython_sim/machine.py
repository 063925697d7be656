"""The ``machine`` module the firmware imports under the tests: Pin, UART, ADC and WDT of an
RP2040, recording into simboard's world instead of touching hardware."""

from simboard import WORLD


class Pin:
    OUT = 1
    IN = 0
    PULL_UP = 1

    def __init__(self, gpio: int, mode: int = -1, pull: int = -1, value: int | None = None) -> None:
        self.gpio = gpio
        self.level = -1
        if mode == Pin.IN:
            self.level = int(WORLD.config.get("inputs", {}).get(str(gpio), 1 if pull == Pin.PULL_UP else 0))
        if value is not None:
            self.value(value)

    def value(self, level: int | None = None) -> int:
        if level is None:
            return self.level
        level = 1 if level else 0
        if level != self.level:
            self.level = level
            WORLD.event({"pin": self.gpio, "v": level})
        return level

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)


class UART:
    def __init__(self, uart_id: int, baudrate: int = 115200, **kwargs: object) -> None:
        self.uart_id = uart_id
        self.baudrate = baudrate

    def any(self) -> int:
        return len(WORLD.rx)

    def read(self, nbytes: int = -1) -> bytes | None:
        if not WORLD.rx:
            return None
        data, WORLD.rx = WORLD.rx, b""
        return data

    def write(self, data: bytes) -> int:
        WORLD.event({"tx": bytes(data).hex()})
        return len(data)


class ADC:
    def __init__(self, pin: object) -> None:
        self.pin = pin

    def read_u16(self) -> int:
        return WORLD.adc


class WDT:
    def __init__(self, id: int = 0, timeout: int = 5000) -> None:
        WORLD.wdt_timeout = timeout
        WORLD.wdt_last = WORLD.now
        WORLD.event({"wdt_start": timeout})

    def feed(self) -> None:
        WORLD.check_wdt()
        WORLD.wdt_last = WORLD.now


def reset_cause() -> int:
    return WORLD.reset_cause
