"""``dvrlink-broker`` as a program: config checks, admin commands, and serve with SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from dvrlink.broker.registry import Registry
from dvrlink.broker.state import load_or_create_static_key, read_info
from dvrlink.broker.tls import client_context

BROKER = Path(sys.executable).with_name("dvrlink-broker")
KEY_1 = base64.b64encode(bytes(range(32))).decode()
KEY_2 = base64.b64encode(bytes(range(1, 33))).decode()


def broker(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BROKER), *args], check=False, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_check_config_accepts_a_good_file_and_names_the_bad_key(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'state_dir = "{tmp_path / "state"}"\nudp_port = 0\n')
    for args in (["--check-config", "--config", str(good)], ["check-config", "--config", str(good)]):
        done = broker(*args)
        assert done.returncode == 0, done.stderr
        assert "configuration OK" in done.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('state_dir = "/x"\nhttps_port = 99999\n')
    done = broker("--check-config", "--config", str(bad))
    assert done.returncode == 78
    assert str(bad) in done.stderr and "'https_port'" in done.stderr and "99999" in done.stderr
    no_cert = tmp_path / "no_cert.toml"
    no_cert.write_text(f'state_dir = "/x"\ntls_cert = "{tmp_path}/c.pem"\ntls_key = "{tmp_path}/k.pem"\n')
    done = broker("check-config", "--config", str(no_cert))
    assert done.returncode == 78
    assert "cannot load TLS certificate" in done.stderr
    done = broker("check-config")
    assert done.returncode == 78
    assert "--config FILE or --state-dir DIR" in done.stderr


def test_user_add_and_show_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = broker(
        "user", "add", "alice", "--password-stdin", "--state-dir", str(state), stdin="s3cret-pass\n"
    )
    assert done.returncode == 0, done.stderr
    done = broker("user", "add", "alice", "--password-stdin", "--state-dir", str(state), stdin="other-pass\n")
    assert done.returncode == 1
    assert "exists" in done.stderr
    done = broker("user", "add", "bob", "--password-stdin", "--state-dir", str(state), stdin="short\n")
    assert done.returncode == 1
    assert "shorter than 8" in done.stderr
    registry = Registry(state / "registry.sqlite3")
    assert registry.authenticate("alice", "s3cret-pass")
    assert registry.password_record("bob") is None
    registry.close()

    load_or_create_static_key(state)  # what the broker's first start does
    first = broker("show-key", "--state-dir", str(state))
    assert first.returncode == 0, first.stderr
    assert len(base64.b64decode(first.stdout.strip(), validate=True)) == 32
    assert broker("show-key", "--state-dir", str(state)).stdout == first.stdout
    assert (state / "broker_key.pem").stat().st_mode & 0o777 == 0o600
    # a node of a fleet prints the fleet key, not its state_dir's own
    fleet_state = tmp_path / "fleet"
    fleet_state.mkdir()
    load_or_create_static_key(fleet_state)
    config = tmp_path / "node.toml"
    config.write_text(f'state_dir = "{state}"\nfleet_key_file = "{fleet_state / "broker_key.pem"}"\n')
    fleet = broker("show-key", "--config", str(config))
    assert fleet.returncode == 0, fleet.stderr
    assert fleet.stdout != first.stdout
    assert fleet.stdout == broker("show-key", "--state-dir", str(fleet_state)).stdout


def test_manifest_load_csv_and_json_with_conflicts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    csv = tmp_path / "manifest.csv"
    csv.write_text(f"# factory batch 7\nserial,public_key\nDL-0001,{KEY_1}\n\nDL-0002, {KEY_2}\n")
    done = broker("manifest", "load", str(csv), "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert "2 added" in done.stdout
    conflicting = tmp_path / "manifest.json"
    conflicting.write_text(json.dumps({"DL-0001": KEY_2, "DL-0003": KEY_1}))
    done = broker("manifest", "load", str(conflicting), "--state-dir", str(state))
    assert done.returncode == 1
    assert "1 added" in done.stdout and "1 conflicts" in done.stdout
    assert "DL-0001" in done.stderr and "left unchanged" in done.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text(f"DL-0004,{KEY_1}\nDL-0005\n")
    done = broker("manifest", "load", str(broken), "--state-dir", str(state))
    assert done.returncode == 1
    assert f"{broken}:2" in done.stderr and "nothing was loaded" in done.stderr
    registry = Registry(state / "registry.sqlite3")
    assert registry.device("DL-0001").public_key == bytes(range(32))  # type: ignore[union-attr]
    assert registry.device("DL-0004") is None
    registry.close()
    done = broker("device", "release", "DL-0001", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert "released" in done.stdout
    done = broker("device", "release", "DL-0001", "--state-dir", str(state))
    assert done.returncode == 1
    assert "not bound" in done.stderr


def test_serve_as_a_process_until_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            str(BROKER),
            "serve",
            "--state-dir",
            str(state),
            "--udp-port",
            "0",
            "--https-port",
            "0",
            "--turn-port",
            "0",
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        try:
            lines: list[str] = []
            while True:
                line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
                assert line, "broker exited before it was ready: " + "".join(lines)
                lines.append(line)
                if "dvrlink-broker ready" in line:
                    break
            info = read_info(state)
            assert info.pid == proc.pid
            assert f"https=0.0.0.0:{info.https_port}" in line and f"udp=0.0.0.0:{info.udp_port}" in line
            assert info.turn_udp_port and info.turn_tcp_port
            assert f"turn=0.0.0.0:{info.turn_udp_port}/udp,{info.turn_tcp_port}/tcp" in line
            assert (state / "turn_secret").stat().st_mode & 0o777 == 0o600
            added = await asyncio.create_subprocess_exec(
                str(BROKER), "user", "add", "alice", "--password-stdin", "--state-dir", str(state),
                stdin=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await asyncio.wait_for(added.communicate(b"s3cret-pass\n"), 30)
            assert added.returncode == 0
            connector = aiohttp.TCPConnector(ssl=client_context(info.cert))
            async with aiohttp.ClientSession(
                f"https://127.0.0.1:{info.https_port}", connector=connector
            ) as http:
                async with http.get("/v1/health") as resp:
                    assert (resp.status, await resp.json()) == (200, {"status": "ok", "online": 0})
                login = {"username": "alice", "password": "s3cret-pass"}
                async with http.post("/v1/tokens", json=login) as resp:
                    assert resp.status == 200
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            assert not (state / "broker.json").exists()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    asyncio.run(main())


def test_a_second_broker_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def main() -> None:
        from dvrlink.broker.app import start_broker
        from dvrlink.broker.config import config_from_mapping

        config = config_from_mapping(
            {
                "state_dir": str(state),
                "udp_host": "127.0.0.1",
                "udp_port": 0,
                "https_host": "127.0.0.1",
                "https_port": 0,
                "turn_udp_port": 0,
                "turn_tcp_port": 0,
            },
            source="test",
        )
        running = await start_broker(config)
        try:
            done = await asyncio.to_thread(
                broker,
                "serve",
                "--state-dir",
                str(state),
                "--udp-port",
                "0",
                "--https-port",
                "0",
                "--turn-port",
                "0",
            )
            assert done.returncode == 1
            assert "another dvrlink-broker is using" in done.stderr
            assert read_info(state) == running.info  # the running broker's file is untouched
        finally:
            await running.close()

    asyncio.run(main())


def test_turn_flags_of_serve(tmp_path: Path) -> None:
    from dvrlink.broker.cli import _config, _parser

    args = _parser().parse_args(
        ["serve", "--state-dir", str(tmp_path), "--turn-port", "0", "--turn-allow-loopback-peers"]
    )
    config = _config(args)
    assert (config.turn_udp_port, config.turn_tcp_port, config.turn_allow_loopback_peers) == (0, 0, True)
    config = _config(_parser().parse_args(["serve", "--state-dir", str(tmp_path)]))
    assert (config.turn_udp_port, config.turn_allow_loopback_peers) == (3479, False)
