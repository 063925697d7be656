"""The real GPIO lines: ``hal.gpio.LineBackend`` over the kernel's GPIO character devices, through
the ``gpiod`` binding (libgpiod's own Python package, API 2.x).

A chip is named by its path (``/dev/gpiochip0``) or by its label (``pl061``, as ``gpiodetect``
prints it); a line by its offset or its name. Inputs are requested with edge detection on both
edges, the configured bias and active-low, and timestamps on ``CLOCK_MONOTONIC`` (the event
loop's clock). Outputs are requested with their first value already set, so a relay never
glitches at start. The kernel's own debounce is not asked for: many controllers (the PL061 among
them) have none, and ``hal.gpio.InputWatcher`` debounces in software the same way everywhere.

Errors from the kernel become ``GpioError`` with what to fix (``describe_failure``): a missing
chip, a line held by another consumer (named from the line's info, e.g. ``gpio-keys``), or a
permission problem (the udev rule that gives the chips to group dvrlink).
"""

from __future__ import annotations

import errno
import glob
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from dvrlink.hal.gpio import CONSUMER, AlarmInputConfig, Bias, Edge, GpioError, RelayConfig

if TYPE_CHECKING:
    import gpiod

CHIP_GLOB = "/dev/gpiochip*"


def check_binding() -> None:
    """Load the ``gpiod`` module (on first use: only boards with lines need it).

    Raises:
        GpioError: it is not installed; the message says what to do.
    """
    try:
        import gpiod  # noqa: F401, PLC0415
    except ImportError as exc:
        raise GpioError(
            f"the gpiod binding (libgpiod's Python package, 2.x) is not installed ({exc}): install "
            "it, or remove the [[alarm_input]] and [[relay]] tables"
        ) from None


def describe_failure(what: str, chip: str, line: int | str, exc: OSError, held_by: str | None) -> str:
    """The message for a failed request or read of ``line`` on ``chip``: what was seen and what to
    fix. ``what`` is ``request`` or ``read``; ``held_by`` is the line's consumer when the line
    info could be read (None otherwise)."""
    where = f"line {line} of {chip}"
    code = exc.errno
    if code == errno.EBUSY:
        if held_by == CONSUMER:
            return f"{where} is busy: another dvrlinkd (or an earlier request of this one) holds it"
        owner = f"the consumer {held_by!r}" if held_by else "another consumer"
        return (
            f"{where} is held by {owner} (Device or resource busy): free it (stop that program, or "
            "unbind the kernel driver that claims it, e.g. gpio-keys) or use another line"
        )
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return f"no GPIO chip {chip} ({exc.strerror}): check the chip's path or label with gpiodetect"
    if code == errno.ENOTTY:
        return f"{chip} is not a GPIO chip (it takes no GPIO requests): check the path with gpiodetect"
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied on {chip}: the chips must be group dvrlink (the image's udev rule "
            "71-dvrlink-capture.rules) and dvrlinkd in that group, or run it as root"
        )
    if code == errno.EINVAL:
        return f"the {what} of {where} was refused as invalid ({exc.strerror}): check the offset and bias"
    return f"the {what} of {where} failed: {exc.strerror or exc}"


class GpiodBackend:
    """``hal.gpio.LineBackend`` on the real chips (see the module docstring)."""

    def __init__(self, consumer: str = CONSUMER, chips: Callable[[], list[str]] | None = None) -> None:
        self._consumer = consumer
        self._chips = chips if chips is not None else lambda: sorted(glob.glob(CHIP_GLOB))

    def request_input(self, config: AlarmInputConfig) -> _Input:
        """See ``LineBackend.request_input``.

        Raises:
            GpioError: no such chip or line, the line is busy, or permission.
        """
        check_binding()
        import gpiod  # noqa: PLC0415
        from gpiod.line import Bias as GBias  # noqa: PLC0415
        from gpiod.line import Direction, Edge  # noqa: PLC0415

        bias = {
            Bias.AS_IS: GBias.AS_IS,
            Bias.DISABLED: GBias.DISABLED,
            Bias.PULL_UP: GBias.PULL_UP,
            Bias.PULL_DOWN: GBias.PULL_DOWN,
        }[config.bias]
        settings = gpiod.LineSettings(
            direction=Direction.INPUT,
            edge_detection=Edge.BOTH,
            bias=bias,
            active_low=config.active_low,
            debounce_period=timedelta(),
        )
        path, offset, request = self._request(config.chip, config.line, settings)
        return _Input(request, offset, path)

    def request_output(self, config: RelayConfig, active: bool) -> _Output:
        """See ``LineBackend.request_output``.

        Raises:
            GpioError: no such chip or line, the line is busy, or permission.
        """
        check_binding()
        import gpiod  # noqa: PLC0415
        from gpiod.line import Direction, Value  # noqa: PLC0415

        settings = gpiod.LineSettings(
            direction=Direction.OUTPUT,
            active_low=config.active_low,
            output_value=Value.ACTIVE if active else Value.INACTIVE,
        )
        path, offset, request = self._request(config.chip, config.line, settings)
        return _Output(request, offset, path)

    def probe(self, chip: str, line: int | str) -> str:
        """See ``LineBackend.probe``.

        Raises:
            GpioError: no such chip or line, permission, or the line is held by another consumer.
        """
        check_binding()
        import gpiod  # noqa: PLC0415

        path = self.resolve_chip(chip)
        try:
            with gpiod.Chip(path) as handle:
                info = handle.get_info()
                offset = self._offset(handle, path, line)
                line_info = handle.get_line_info(offset)
        except OSError as exc:
            raise GpioError(describe_failure("probe", path, line, exc, None)) from None
        head = f"{path} ({info.label}, {info.num_lines} lines) line {offset}"
        if line_info.name:
            head += f" ({line_info.name})"
        if not line_info.used:
            return f"{head}: free"
        if line_info.consumer == self._consumer:
            return f"{head}: held by {self._consumer} (running)"
        raise GpioError(
            describe_failure("probe", path, offset, OSError(errno.EBUSY, "busy"), line_info.consumer or None)
        )

    def resolve_chip(self, chip: str) -> str:
        """The chip's device path: ``chip`` itself if it is a path, else the chip whose label
        (or name, ``gpiochip0``) is ``chip``.

        Raises:
            GpioError: no chip has that label; the message lists the chips seen.
        """
        if chip.startswith("/"):
            return chip
        check_binding()
        import gpiod  # noqa: PLC0415

        seen = []
        for path in self._chips():
            try:
                if not gpiod.is_gpiochip_device(path):
                    continue
                with gpiod.Chip(path) as handle:
                    info = handle.get_info()
            except OSError as exc:
                seen.append(f"{path} (unreadable: {exc.strerror})")
                continue
            if chip in (info.label, info.name):
                return path
            seen.append(f"{path} ({info.label})")
        listed = ", ".join(seen) or "none"
        raise GpioError(f"no GPIO chip labelled {chip!r} (chips: {listed}); check the label with gpiodetect")

    # ---- inside ----

    def _offset(self, handle: gpiod.Chip, path: str, line: int | str) -> int:
        if isinstance(line, int):
            return line
        try:
            return handle.line_offset_from_id(line)
        except (OSError, ValueError):
            raise GpioError(
                f"no line named {line!r} on {path}: check the name with gpioinfo, or give the offset"
            ) from None

    def _request(
        self, chip: str, line: int | str, settings: gpiod.LineSettings
    ) -> tuple[str, int, gpiod.LineRequest]:
        check_binding()
        import gpiod  # noqa: PLC0415

        path = self.resolve_chip(chip)
        try:
            handle = gpiod.Chip(path)
        except OSError as exc:
            raise GpioError(describe_failure("request", path, line, exc, None)) from None
        with handle:
            offset = self._offset(handle, path, line)
            try:
                return path, offset, handle.request_lines({offset: settings}, consumer=self._consumer)
            except OSError as exc:
                held_by = None
                if exc.errno == errno.EBUSY:
                    try:
                        held_by = handle.get_line_info(offset).consumer or None
                    except OSError:
                        held_by = None
                raise GpioError(describe_failure("request", path, offset, exc, held_by)) from None
            except ValueError as exc:  # an offset past the chip's last line
                raise GpioError(f"line {offset} of {path}: {exc}; gpioinfo lists the chip's lines") from None


class _Input:
    """A requested input line (``hal.gpio.InputLine``)."""

    def __init__(self, request: gpiod.LineRequest, offset: int, path: str) -> None:
        self._request = request
        self._offset = offset
        self._path = path
        self._released = False

    @property
    def fd(self) -> int:
        return self._request.fd

    def read_edges(self) -> list[Edge]:
        from gpiod import EdgeEvent  # noqa: PLC0415

        try:
            events = self._request.read_edge_events()
        except OSError as exc:
            raise GpioError(describe_failure("read", self._path, self._offset, exc, None)) from None
        # Edge types in the v2 uAPI are logical: with active-low the kernel swaps them.
        return [
            Edge(event.event_type is EdgeEvent.Type.RISING_EDGE, event.timestamp_ns / 1e9) for event in events
        ]

    def get_value(self) -> bool:
        from gpiod.line import Value  # noqa: PLC0415

        try:
            return self._request.get_value(self._offset) is Value.ACTIVE
        except OSError as exc:
            raise GpioError(describe_failure("read", self._path, self._offset, exc, None)) from None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._request.release()


class _Output:
    """A requested output line (``hal.gpio.OutputLine``)."""

    def __init__(self, request: gpiod.LineRequest, offset: int, path: str) -> None:
        self._request = request
        self._offset = offset
        self._path = path
        self._released = False

    def set_value(self, active: bool) -> None:
        from gpiod.line import Value  # noqa: PLC0415

        try:
            self._request.set_value(self._offset, Value.ACTIVE if active else Value.INACTIVE)
        except OSError as exc:
            raise GpioError(describe_failure("write", self._path, self._offset, exc, None)) from None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._request.release()
