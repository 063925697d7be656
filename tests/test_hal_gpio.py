"""Board I/O cores with made-up time: the alarm input watcher's debounce, the relay bank's pulse
timers, the config's checks, and the error messages for what the kernel says."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from dvrlink.hal.gpio import (
    AlarmInputActive,
    AlarmInputCleared,
    AlarmInputConfig,
    BoardEvent,
    GpioError,
    InputWatcher,
    LineFailed,
    RelayBank,
    RelayConfig,
    RelaySwitched,
    SetRelay,
)
from dvrlink.hal.gpio_chip import GpiodBackend, describe_failure

DOOR = AlarmInputConfig("door", "/dev/gpiochip0", 3, debounce_s=0.05)
PIR = AlarmInputConfig("pir", "/dev/gpiochip0", "PIR_IN", active_low=True, debounce_s=0.0)
SIREN = RelayConfig("siren", "/dev/gpiochip0", 4)
STRIKE = RelayConfig("strike", "pl061", 5, default_on=True)


def drain(core: InputWatcher | RelayBank) -> list[BoardEvent]:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def run_timers(core: InputWatcher | RelayBank, until: float) -> None:
    """Fire the core's timer at each deadline up to ``until``, as the driver would (bounded)."""
    for _ in range(100):
        due = core.get_timer()
        if due is None or due > until:
            return
        core.handle_timer(due)
    raise AssertionError(f"the timer kept firing: next {core.get_timer()}")


# ---- inputs ----


def test_start_sets_the_state_without_an_event() -> None:
    watcher = InputWatcher([DOOR])
    watcher.start("door", True, 10.0)
    assert drain(watcher) == [] and watcher.get_timer() is None
    assert watcher.active("door") is True and watcher.since("door") == 10.0


def test_an_edge_that_holds_for_the_debounce_time_is_reported_with_its_edge_time() -> None:
    watcher = InputWatcher([DOOR])
    watcher.start("door", False, 0.0)
    watcher.edge("door", True, 5.0)
    assert watcher.get_timer() == pytest.approx(5.05)
    watcher.handle_timer(5.04)
    assert drain(watcher) == []
    watcher.handle_timer(5.05)
    assert drain(watcher) == [AlarmInputActive("door", 5.05, 5.0)]
    watcher.edge("door", False, 17.0)
    run_timers(watcher, 20.0)
    (cleared,) = drain(watcher)
    assert isinstance(cleared, AlarmInputCleared)
    assert cleared.since == 17.0 and cleared.active_s == pytest.approx(12.0)
    assert watcher.active("door") is False and watcher.get_timer() is None


def test_bounce_shorter_than_the_debounce_time_is_never_reported() -> None:
    watcher = InputWatcher([DOOR])
    watcher.start("door", False, 0.0)
    for n in range(10):  # a contact bouncing every 10 ms, then back at rest
        watcher.edge("door", n % 2 == 0, 1.0 + n * 0.01)
        watcher.handle_timer(1.0 + n * 0.01)
    run_timers(watcher, 10.0)
    assert drain(watcher) == []
    assert watcher.active("door") is False


def test_bounce_then_a_steady_level_is_one_event_timed_from_the_last_edge() -> None:
    watcher = InputWatcher([DOOR])
    watcher.start("door", False, 0.0)
    for n in range(5):
        watcher.edge("door", n % 2 == 0, 1.0 + n * 0.01)  # ends active at 1.04
    run_timers(watcher, 10.0)
    (active,) = drain(watcher)
    assert isinstance(active, AlarmInputActive)
    assert active.at == pytest.approx(1.09) and active.since == 1.04


def test_a_pulse_read_in_one_batch_is_judged_on_its_timestamps() -> None:
    """A 100 ms press (QEMU's gpio-key) whose two edges are read together, after a busy loop:
    the level held longer than the debounce time between them, so it is an alarm and a clear."""
    watcher = InputWatcher([DOOR])
    watcher.start("door", False, 0.0)
    watcher.edge("door", True, 1.0)
    watcher.edge("door", False, 1.1)
    run_timers(watcher, 2.0)
    active, cleared = drain(watcher)
    assert active == AlarmInputActive("door", pytest.approx(1.05), 1.0)  # type: ignore[arg-type]
    assert isinstance(cleared, AlarmInputCleared) and cleared.since == 1.1
    assert cleared.at == pytest.approx(1.15) and cleared.active_s == pytest.approx(0.1)
    watcher.edge("door", True, 3.0)  # shorter than the debounce time, read in one batch: nothing
    watcher.edge("door", False, 3.01)
    run_timers(watcher, 4.0)
    assert drain(watcher) == []


def test_zero_debounce_reports_at_once_and_a_repeated_level_is_not_an_edge() -> None:
    watcher = InputWatcher([PIR])
    watcher.start("pir", False, 0.0)
    watcher.edge("pir", True, 2.0)
    watcher.edge("pir", True, 2.5)  # a repeat (a lost falling edge between): changes nothing
    assert watcher.get_timer() == 2.0
    watcher.handle_timer(2.0)
    assert drain(watcher) == [AlarmInputActive("pir", 2.0, 2.0)]


def test_a_level_read_after_lost_edges_counts_as_an_edge_at_that_time() -> None:
    watcher = InputWatcher([DOOR])
    watcher.start("door", False, 0.0)
    watcher.level("door", False, 1.0)
    assert watcher.get_timer() is None
    watcher.level("door", True, 3.0)  # the kernel's buffer overflowed: no edge, but the level
    run_timers(watcher, 4.0)
    (active,) = drain(watcher)
    assert isinstance(active, AlarmInputActive)
    assert active.at == pytest.approx(3.05) and active.since == 3.0


def test_read_failures_are_one_event_per_run_and_edges_of_unknown_inputs_are_ignored() -> None:
    watcher = InputWatcher([DOOR])
    watcher.edge("door", True, 1.0)  # not started yet
    assert watcher.get_timer() is None
    watcher.start("door", False, 1.0)
    watcher.failed("door", "the read of line 3 failed: EIO", 2.0)
    watcher.failed("door", "the read of line 3 failed: EIO", 3.0)
    assert drain(watcher) == [LineFailed("door", 2.0, "the read of line 3 failed: EIO")]
    assert watcher.failing("door")
    watcher.edge("door", True, 4.0)
    assert not watcher.failing("door")
    with pytest.raises(KeyError):
        watcher.start("window", False, 0.0)


# ---- relays ----


def test_start_and_stop_write_every_relay_at_its_default() -> None:
    bank = RelayBank([SIREN, STRIKE])
    bank.start(0.0)
    assert bank.datagrams_to_send() == [SetRelay("siren", False), SetRelay("strike", True)]
    assert drain(bank) == []  # already there: written, but no change to report
    bank.set("siren", True, 1.0)
    bank.set("strike", False, 1.0)
    bank.datagrams_to_send()
    drain(bank)
    bank.stop(2.0)
    assert bank.datagrams_to_send() == [SetRelay("siren", False), SetRelay("strike", True)]
    assert drain(bank) == [
        RelaySwitched("siren", 2.0, False, "stop"),
        RelaySwitched("strike", 2.0, True, "stop"),
    ]


def test_set_writes_only_changes() -> None:
    bank = RelayBank([SIREN])
    bank.start(0.0)
    bank.datagrams_to_send()
    bank.set("siren", True, 1.0)
    bank.set("siren", True, 1.5)
    assert bank.datagrams_to_send() == [SetRelay("siren", True)]
    assert drain(bank) == [RelaySwitched("siren", 1.0, True, "set")]
    assert bank.state("siren") == (True, None, 1.0)


def test_a_pulse_ends_on_its_timer_and_a_second_pulse_moves_the_end() -> None:
    bank = RelayBank([SIREN])
    bank.start(0.0)
    bank.datagrams_to_send()
    bank.pulse("siren", 5.0, 10.0)
    assert bank.get_timer() == 15.0 and bank.state("siren") == (True, 15.0, 10.0)
    bank.pulse("siren", 5.0, 12.0)  # restarted: ends at 17
    bank.handle_timer(15.0)
    assert bank.state("siren")[0] is True
    run_timers(bank, 100.0)
    assert bank.datagrams_to_send() == [SetRelay("siren", True), SetRelay("siren", False)]
    assert drain(bank) == [
        RelaySwitched("siren", 10.0, True, "pulse 5 s"),
        RelaySwitched("siren", 17.0, False, "pulse over"),
    ]
    assert bank.get_timer() is None


def test_off_during_a_pulse_cancels_it() -> None:
    bank = RelayBank([SIREN])
    bank.start(0.0)
    bank.pulse("siren", 30.0, 1.0)
    bank.set("siren", False, 2.0)
    assert bank.get_timer() is None
    assert bank.state("siren") == (False, None, 2.0)


def test_relay_commands_check_their_arguments() -> None:
    bank = RelayBank([SIREN])
    with pytest.raises(KeyError, match="no relay named 'horn' \\(relays: siren\\)"):
        bank.set("horn", True, 0.0)
    for seconds in (0.0, -1.0, 3601.0):
        with pytest.raises(ValueError, match="pulse of"):
            bank.pulse("siren", seconds, 0.0)
    bank.failed("siren", "the write of line 4 failed", 3.0)
    assert drain(bank) == [LineFailed("siren", 3.0, "the write of line 4 failed")]


# ---- config and messages ----


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AlarmInputConfig("Door", "/dev/gpiochip0", 3), "lower-case"),
        (lambda: AlarmInputConfig("door", " ", 3), "chip is empty"),
        (lambda: AlarmInputConfig("door", "/dev/gpiochip0", 512), "offset from 0 to 511"),
        (lambda: AlarmInputConfig("door", "/dev/gpiochip0", ""), "line is empty"),
        (lambda: AlarmInputConfig("door", "/dev/gpiochip0", 3, debounce_s=61), "debounce_s"),
        (lambda: RelayConfig("siren", "/dev/gpiochip0", -1), "offset from 0 to 511"),
    ],
)
def test_config_checks_say_what_to_write(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_kernel_errors_become_messages_that_say_what_to_fix() -> None:
    busy = OSError(errno.EBUSY, "Device or resource busy")
    text = describe_failure("request", "/dev/gpiochip0", 3, busy, "gpio-keys")
    assert "line 3 of /dev/gpiochip0 is held by the consumer 'gpio-keys'" in text
    assert "unbind the kernel driver" in text
    assert "another dvrlinkd" in describe_failure("request", "/dev/gpiochip0", 3, busy, "dvrlinkd")
    missing = OSError(errno.ENOENT, "No such file or directory")
    assert "gpiodetect" in describe_failure("request", "/dev/gpiochip9", 3, missing, None)
    denied = OSError(errno.EACCES, "Permission denied")
    assert "group dvrlink" in describe_failure("request", "/dev/gpiochip0", 3, denied, None)
    odd = OSError(errno.EIO, "Input/output error")
    assert describe_failure("read", "/dev/gpiochip0", 3, odd, None).endswith("failed: Input/output error")


def test_the_real_backend_says_what_is_wrong_with_a_chip_path(tmp_path: Path) -> None:
    """The gpiod binding itself, on what this host has: no chip (no gpio-sim here), a file that is
    not a chip, a label no chip has."""
    backend = GpiodBackend(chips=lambda: [])
    with pytest.raises(GpioError, match=r"no GPIO chip /nonexistent/gpiochip9 .*gpiodetect"):
        backend.request_input(AlarmInputConfig("door", "/nonexistent/gpiochip9", 3))
    plain = tmp_path / "not-a-chip"
    plain.write_text("")
    with pytest.raises(GpioError, match=rf"{plain} is not a GPIO chip"):
        backend.probe(str(plain), 3)
    with pytest.raises(GpioError, match=r"no GPIO chip labelled 'pl061' \(chips: none\)"):
        backend.request_output(RelayConfig("siren", "pl061", 4), False)
