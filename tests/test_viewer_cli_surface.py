"""What ``dvrlink`` shows about itself: ``--version``, a description on every subcommand, exit 78
(EX_CONFIG) for a broken file in its home, and values in messages spelled as a file spells them."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dvrlink.viewer.api_types import parse_candidate_batch
from dvrlink.viewer.cli import build_parser, main
from dvrlink.viewer.errors import EXIT_CONFIG, EXIT_USAGE
from dvrlink.viewer.forward import parse_forward_spec
from dvrlink.viewer.home import ViewerHome

VIEWER_BIN = Path(sys.executable).parent / "dvrlink"


@pytest.mark.skipif(not VIEWER_BIN.exists(), reason="the dvrlink script is not installed")
def test_version() -> None:
    run = subprocess.run(
        [str(VIEWER_BIN), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert (run.returncode, run.stderr) == (0, ""), run
    assert run.stdout == f"dvrlink {importlib.metadata.version('dvrlink')}\n"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subparsers here, and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands found")


def test_every_subcommand_has_a_description_and_a_help_line() -> None:
    parser = build_parser()
    commands = _subcommands(parser)
    assert {"login", "logout", "pair", "unpair", "devices", "status", "forward", "ping", "sessions"} <= set(
        commands
    )
    no_description = sorted(name for name, sub in commands.items() if not sub.description)
    assert no_description == [], f"subcommands without a description: {no_description}"
    listing = parser.format_help()
    for name in commands:
        line = next((line for line in listing.splitlines() if line.strip().startswith(name + " ")), "")
        assert len(line.split()) > 1, f"`dvrlink --help` has no help line for {name}: {listing}"


@pytest.mark.parametrize(
    ("name", "text"),
    [("viewer.json", "{oops"), ("pins.json", "[1]"), ("viewer_key.pem", "not a key")],
)
def test_a_broken_file_in_the_home_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if name != "viewer_key.pem":
        ViewerHome(home).load_or_create_key()
    (home / name).write_text(text)
    if name != "viewer.json":
        (home / "viewer.json").write_text(
            json.dumps(
                {
                    "broker": "https://127.0.0.1:1",
                    "cacert": None,
                    "username": "alice",
                    "token": "T" * 43,
                    "expires_at": 4e9,
                }
            )
        )
    command = ["pair", "DL-TEST-0001", "ABCDEFGHIJKLMNOP"]
    code = main(["--home", str(home), *command])
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG == 78, (code, err)
    assert str(home / name) in err, err


def test_home_that_is_a_file_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.write_text("")
    assert main(["--home", str(home), "devices"]) == EXIT_CONFIG
    assert "is not a directory" in capsys.readouterr().err


def test_usage_errors_still_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["forward", "DL-TEST-0001", "8554"]) == EXIT_USAGE
    assert 'bad forward "8554"' in capsys.readouterr().err


@pytest.mark.parametrize(
    ("run", "shown", "python"),
    [
        (lambda: parse_forward_spec("85x4:554"), 'local port "85x4"', "'85x4'"),
        (lambda: parse_forward_spec("8554"), 'bad forward "8554"', "'8554'"),
        (lambda: parse_candidate_batch({"candidates": [], "end_of_candidates": 1}), "is 1, not true", "'"),
        (
            lambda: parse_candidate_batch({"candidates": [], "end_of_candidates": "yes"}),
            'field "end_of_candidates" is "yes", not true or false',
            "'",
        ),
    ],
)
def test_messages_spell_values_as_a_file_does(run: object, shown: str, python: str) -> None:
    assert callable(run)
    with pytest.raises(ValueError) as err:
        run()
    message = str(err.value)
    assert shown in message, message
    assert python not in message, f"Python's spelling in: {message}"


def test_broker_url_messages_quote_like_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env_home = ["--home", str(tmp_path / "home")]
    assert main([*env_home, "login", "--broker", "ftp://x", "--user", "a"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert 'broker URL "ftp://x"' in err and "'" not in err.split("broker URL")[1].split(" is ")[0], err
