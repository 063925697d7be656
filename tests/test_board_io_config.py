"""``[[alarm_input]]`` and ``[[relay]]`` in dvrlinkd's config: what they accept, what each refusal
says to do, and ``dvrlinkd check-config``'s probe of the lines (on the fake backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from support.daemon_config import MINIMAL, load_text

from dvrlink.daemon import cli
from dvrlink.daemon.board_io_config import parse_board_io
from dvrlink.daemon.board_io_service import check_board_io
from dvrlink.daemon.errors import ConfigError
from dvrlink.hal.gpio import AlarmInputConfig, Bias, RelayConfig
from dvrlink.hal.gpio_fake import FakeBackend

SOURCE = Path("/etc/dvrlink/dvrlinkd.toml")
DOOR = {"name": "door", "chip": "/dev/gpiochip0", "line": 3}
SIREN = {"name": "siren", "chip": "/dev/gpiochip0", "line": 4}


def parse(inputs: list[object], relays: list[object] | None = None) -> object:
    return parse_board_io({"alarm_input": inputs, "relay": relays or []}, SOURCE)


def test_defaults_and_full_tables() -> None:
    assert parse_board_io({}, SOURCE) == ((), ())
    inputs, relays = parse_board_io(
        {
            "alarm_input": [
                DOOR,
                {
                    "name": "pir",
                    "chip": "pl061",
                    "line": "PIR_IN",
                    "active_low": True,
                    "bias": "Pull-Up",
                    "debounce_s": 0,
                },
            ],
            "relay": [SIREN, {"name": "strike", "chip": "pl061", "line": 5, "default": "on"}],
        },
        SOURCE,
    )
    assert inputs == (
        AlarmInputConfig("door", "/dev/gpiochip0", 3),
        AlarmInputConfig("pir", "pl061", "PIR_IN", active_low=True, bias=Bias.PULL_UP, debounce_s=0.0),
    )
    assert relays == (
        RelayConfig("siren", "/dev/gpiochip0", 4),
        RelayConfig("strike", "pl061", 5, default_on=True),
    )


@pytest.mark.parametrize(
    ("inputs", "relays", "message"),
    [
        ([{**DOOR, "pin": 3}], [], r"\[\[alarm_input\]\] #1: unknown key pin; .*known keys: name, chip"),
        ([{"name": "door", "chip": "/dev/gpiochip0"}], [], r"line is missing; add it, e.g. line = 3"),
        ([{**DOOR, "line": 600}], [], r"line = 600: expected the line's offset \(0-511\)"),
        ([{**DOOR, "line": True}], [], r"line = true: expected the line's offset"),
        ([{**DOOR, "bias": "up"}], [], r'bias = "up": expected one of as-is, disabled, pull-up, pull-down'),
        ([{**DOOR, "debounce_s": 90}], [], r"debounce_s = 90: expected seconds from 0 to 60"),
        ([{**DOOR, "active_low": "yes"}], [], r'active_low = "yes": expected true or false'),
        ([{**DOOR, "name": "Front Door"}], [], r"lower-case letters"),
        ([DOOR, {**DOOR, "line": 5}], [], r"#2: the name 'door' is used twice"),
        ([DOOR], [{**SIREN, "name": "door"}], r"\[\[relay\]\] #1: the name 'door' is used twice"),
        ([DOOR], [{**SIREN, "line": 3}], r"line 3 of /dev/gpiochip0 is also \[\[alarm_input\]\] door"),
        ([], [{**SIREN, "default": "closed"}], r'default = "closed": expected one of off, on'),
    ],
)
def test_refusals_say_what_to_write(inputs: list[object], relays: list[object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(inputs, relays)


def test_single_brackets_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[\[relay\]\] \(double brackets"):
        load_text(tmp_path, MINIMAL + '[relay]\nname = "siren"\nchip = "/dev/gpiochip0"\nline = 4\n')
    config = load_text(
        tmp_path,
        MINIMAL + '[[alarm_input]]\nname = "door"\nchip = "/dev/gpiochip0"\nline = 3\n'
        '[[relay]]\nname = "siren"\nchip = "/dev/gpiochip0"\nline = 4\n',
    )
    assert [i.name for i in config.alarm_inputs] == ["door"] and [r.name for r in config.relays] == ["siren"]


def test_the_probe_names_a_busy_line_s_consumer_and_a_missing_chip() -> None:
    backend = FakeBackend(held={("/dev/gpiochip0", 3): "gpio-keys"}, missing={"/dev/gpiochip7"})
    lines = check_board_io(
        [AlarmInputConfig("door", "/dev/gpiochip0", 3), AlarmInputConfig("pir", "/dev/gpiochip7", 1)],
        [RelayConfig("siren", "/dev/gpiochip0", 4)],
        backend,
    )
    assert lines[0].startswith(
        "error: alarm input door: line 3 of /dev/gpiochip0 is held by the consumer 'gpio-keys'"
    )
    assert lines[1].startswith("error: alarm input pir: no GPIO chip /dev/gpiochip7")
    assert lines[2] == "relay siren: /dev/gpiochip0 (fake) line 4: free"
    assert backend.requests == 0, "a probe requests nothing"


def test_check_config_fails_on_a_busy_line(
    tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = FakeBackend(held={("/dev/gpiochip0", 3): "gpio-keys"})
    mocker.patch("dvrlink.daemon.board_io_service.default_backend", return_value=backend)
    probe = mocker.spy(backend, "probe")
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(MINIMAL + '[[alarm_input]]\nname = "door"\nchip = "/dev/gpiochip0"\nline = 3\n')
    assert cli.main(["--config", str(path), "check-config"]) == 78
    probe.assert_called_once_with("/dev/gpiochip0", 3)
    assert "held by the consumer 'gpio-keys'" in capsys.readouterr().err
    del backend.held[("/dev/gpiochip0", 3)]
    assert cli.main(["--config", str(path), "check-config"]) == 0
    assert "alarm input door: /dev/gpiochip0 (fake) line 3: free" in capsys.readouterr().out
