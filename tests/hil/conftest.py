"""The HIL suite's fixtures: the rig (``--rig FILE``, default rigs/qemu-arm64.toml), a broker on
the host (or in the board's namespace, ``[network] kind = "namespace"``), and the board switched
on and registered with it.

``board`` is one board for the whole session: the scenarios of test_qemu_boot.py and
test_qemu_console.py share one boot (test_modem.py starts its own, with the modem emulator). On a
QEMU rig it builds the image (cached), boots it with the rig's config through fw_cfg and the
installer console on a host PTY; on a bench rig it power-cycles the board, writes the broker's
settings over the installer console and opens the shell UART.
Tests marked ``hil_core`` are the set ``make hil-arm64`` runs; ``hil_last`` ones (the watchdog)
run after all others, since they restart the daemon.

These tests take minutes and need root, so the default run (``pytest``, ``make test``) does not
collect this folder (``norecursedirs`` in pyproject.toml). Run ``pytest tests/hil`` or ``make hil``
as root; the first run builds the image (docs/hil.md).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hil.board import (
    Board,
    BoardError,
    ask_on_terminal,
    broker_namespace,
    check_broker_namespace,
    guest_config,
    start_bench_board,
    start_qemu_board,
    viewer_reaches_broker,
)
from hil.loopback import Viewer, add_user
from hil.qemu.build import REPO, Image, build
from hil.qemu.host import HostBroker
from hil.qemu.rigconfig import image_config_path
from hil.qemu.targets import Target, target
from hil.rig import Rig, RigError, load_rig

DEFAULT_RIG = REPO / "rigs/qemu-arm64.toml"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rig",
        default=str(DEFAULT_RIG),
        help="the rig file the HIL scenarios run on (rigs/*.toml; default: rigs/qemu-arm64.toml)",
    )


RIG_KEY = pytest.StashKey[Rig]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil_core: the QEMU arm64 rig's core scenarios (make hil-arm64)")
    config.addinivalue_line("markers", "hil_last: runs after the other scenarios (it restarts the daemon)")
    try:  # a bad rig file stops the run at once, naming the key
        config.stash[RIG_KEY] = load_rig(Path(str(config.getoption("--rig"))))
    except RigError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``hil_last`` tests go right after the last other test on the rig's board (not after other
    files' guests), so the board can be switched off before those boot."""
    last = [item for item in items if item.get_closest_marker("hil_last")]
    rest = [item for item in items if not item.get_closest_marker("hil_last")]
    on_board = [n for n, item in enumerate(rest) if "board" in getattr(item, "fixturenames", ())]
    at = on_board[-1] + 1 if on_board else len(rest)
    items[:] = rest[:at] + last + rest[at:]


BOARD_KEY = pytest.StashKey[Board]()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Switch the board off after the last test that uses it: other files boot their own guests,
    and two TCG guests on a 2-core host slow each other down."""
    board = item.config.stash.get(BOARD_KEY, None)
    if board is None or "board" not in getattr(item, "fixturenames", ()):
        return
    later = item.session.items[item.session.items.index(item) + 1 :]
    if not any("board" in getattr(other, "fixturenames", ()) for other in later):
        board.close()


@pytest.fixture(scope="session")
def rig(pytestconfig: pytest.Config) -> Rig:
    """The rig file named by ``--rig``, checked when the run started."""
    return pytestconfig.stash[RIG_KEY]


@pytest.fixture(scope="session")
def arm64() -> Target:
    return target("arm64")


@pytest.fixture(scope="session")
def arm64_image(arm64: Target) -> Image:
    """The image for the tree as it is now: seconds when cached, minutes on a cold cache."""
    return build(arm64, out=sys.stderr)


def _broker(state_dir: Path, netns: str | None = None) -> Iterator[HostBroker]:
    broker = HostBroker.start(state_dir, netns=netns)
    try:
        yield broker
    finally:
        code = broker.stop()
    assert code == 0, f"dvrlink-broker exited with {code}:\n" + "".join(broker.process.lines[-20:])


@pytest.fixture(scope="module")
def host_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostBroker]:
    """dvrlink-broker on the host (all addresses, free ports); a QEMU guest reaches it as 10.0.2.2."""
    yield from _broker(tmp_path_factory.mktemp("broker"))


@pytest.fixture(scope="session")
def broker_netns(rig: Rig) -> str | None:
    """The namespace a broker for the rig's board runs in (``hil.board.broker_namespace``),
    checked; None: this host's. A missing namespace fails the test, saying how to make one."""
    netns = broker_namespace(rig)
    if netns is not None:
        try:
            check_broker_namespace(netns)
        except BoardError as exc:
            pytest.fail(f"{rig.source}: {exc}")
    return netns


@pytest.fixture(scope="session")
def rig_broker(broker_netns: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostBroker]:
    """The broker the rig's board registers with, for the whole session: on this host, or
    inside the board's namespace (``[network] kind = "namespace"``)."""
    yield from _broker(tmp_path_factory.mktemp("rig-broker"), broker_netns)


def registered_pattern(serial: str) -> str:
    """The broker's log line for a serial's first registration (a fresh broker: every run)."""
    return rf"serial {serial} bound to key .* on first registration from "


def daemon_report(board: Board) -> str:
    """What the board's shell says about dvrlinkd, for a failure message (best effort)."""
    try:
        board.ready(120.0)
        return board.run(
            "systemctl status --no-pager dvrlinkd | head -5;"
            " journalctl -u dvrlinkd --no-pager -o cat | tail -20",
            timeout=120,
        )
    except Exception as exc:  # the report must not hide the failure it explains
        return f"(the shell did not answer: {exc})"


@pytest.fixture(scope="session")
def board(
    rig: Rig, rig_broker: HostBroker, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Board]:
    """The rig's board, switched on, registered with ``rig_broker``, its root shell up.

    ``board.registered_s`` (set here) is the time from power on to the registration."""
    info = rig_broker.info
    run_dir = tmp_path_factory.mktemp(f"board-{rig.name}")
    if rig.emulated:
        # The modem's scenarios (test_modem.py) boot a guest of their own with the emulator on
        # pci-serial and no LAN; this board is on QEMU's user network without it.
        board_target = target(rig.board.arch)
        image = build(board_target, out=sys.stderr)
        config = guest_config(
            image_config_path().read_text(), rig, rig.network.host_address, info.udp_port, info.public_key
        )
        started = start_qemu_board(rig, board_target, image, config, run_dir)
    else:
        env = {**os.environ, "HOME": str(run_dir / "home")}
        started = start_bench_board(rig, info, run_dir, env, ask_on_terminal)
    try:
        try:
            rig_broker.process.wait_for(registered_pattern(rig.serial), rig.board.boot_timeout_s)
        except TimeoutError as exc:
            where = started.guest.exit_report() if started.guest is not None else ""
            raise AssertionError(
                f"{rig.name}: the board did not register: {exc}{where}\n"
                f"on the board:\n{daemon_report(started)}"
            ) from None
        registered_s = time.monotonic() - started.powered_at
        started.ready(300.0)
        started.registered_s = registered_s
        pytestconfig.stash[BOARD_KEY] = started
        yield started
    finally:
        started.close()


WEB_ROOT = "/tmp/www"
"""Where BusyBox httpd on the board serves from."""


@pytest.fixture(scope="session")
def board_httpd(board: Board) -> str:
    """BusyBox httpd on the board's 127.0.0.1:80 (an allowed forward target); its web root."""
    served = board.run(f"mkdir -p {WEB_ROOT} && busybox httpd -p 127.0.0.1:80 -h {WEB_ROOT} && echo serving")
    assert served == "serving", f"busybox httpd on the board: {served}"
    return WEB_ROOT


@pytest.fixture
def logged_in_viewer(rig: Rig, rig_broker: HostBroker, tmp_path: Path) -> Callable[[str], Viewer]:
    """A factory: a new account ``name`` at the rig's broker and a viewer on the host logged in to it.

    Skips on a rig whose broker runs in the board's namespace: no viewer on this host reaches it."""
    if not viewer_reaches_broker(rig):
        pytest.skip(
            f"{rig.name}: the broker runs in namespace {rig.network.name!r} with the board; a viewer "
            "there is not wired yet, so the viewer's scenarios need [network] kind = 'interface'"
        )

    def make(name: str) -> Viewer:
        add_user(rig_broker.state_dir, name, "pass phrase")
        viewer = Viewer(tmp_path / f"viewer-{name}")
        viewer.run(
            "login", "--broker", rig_broker.url, "--user", name, "--password-stdin",
            "--cacert", str(rig_broker.info.cert), stdin="pass phrase\n",
        )  # fmt: skip
        return viewer

    return make
