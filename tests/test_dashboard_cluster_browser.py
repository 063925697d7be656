"""The dashboard of a cluster in a real browser: two ``dvrlink-broker`` processes on one real
Redis, a real ``dvrlinkd`` registered at node b, and Debian's Chromium (headless, Selenium
through Debian's chromedriver) logged in at node a. The device's row at a goes offline when the
daemon falls silent at b (SIGSTOP: b's keepalive timeout) and online again when it resumes,
without a reload; the device page at a names node b (screenshot ``cluster-device.png``, to
``DVRLINK_SCREENSHOT_DIR`` if set). The fleet page's "online now" at a follows the daemon's
registration at b live; the login made at a works at b, and a logout at b ends it at a.

Until the registry is shared (PostgreSQL), each node has its own SQLite registry: the daemon
first registers at a, where the account pairs it, then moves to b (same key: b binds it on first
use), as a shared registry would let it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from support.dashboard import (
    BrowserRigDaemon,
    LoggedProcess,
    headless_chromium,
    skip_without_browser_or_scripts,
)
from support.redis_server import RedisServer, redis_server

from dvrlink.broker.state import BrokerInfo, read_info
from dvrlink.protocol.identity import private_key_to_pem

BIN = Path(sys.executable).parent
SERIAL = "DL-0016-0777"
USER, PASSWORD = "alice", "s3cret-pass-16"
KEEPALIVE_S = 2
WAIT_S = 30.0

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class ClusterRig(BrowserRigDaemon):
    """Redis, brokers a and b, and the daemon, with their files."""

    def __init__(self, tmp: Path, redis: RedisServer) -> None:
        super().__init__(tmp, BIN, WAIT_S)
        fleet_key = tmp / "fleet_key.pem"
        fleet_key.write_bytes(private_key_to_pem(X25519PrivateKey.generate()))
        fleet_key.chmod(0o600)
        self.brokers: dict[str, LoggedProcess] = {}
        self.info: dict[str, BrokerInfo] = {}
        self.state: dict[str, Path] = {}
        for node in ("a", "b"):
            state = self.state[node] = tmp / f"broker-{node}"
            config = tmp / f"broker-{node}.toml"
            config.write_text(
                f'state_dir = "{state}"\nudp_host = "127.0.0.1"\nudp_port = 0\nhttps_host = "127.0.0.1"\n'
                f"https_port = 0\npresence_tcp_port = 0\nturn_enabled = false\n"
                f'dashboard_operators = ["{USER}"]\nredis_url = "{redis.url}"\nnode_id = "node-{node}"\n'
                f'fleet_key_file = "{fleet_key}"\n'
            )
            self.brokers[node] = LoggedProcess(
                [str(BIN / "dvrlink-broker"), "--config", str(config), "serve"],
                tmp / f"broker-{node}.log",
                self.env,
            )
        for node, process in self.brokers.items():
            process.wait_for("dvrlink-broker ready")
            self.info[node] = read_info(self.state[node])
        self.base = f"https://localhost:{self.info['a'].https_port}"

    def point_at(self, node: str) -> None:
        """The daemon registers with ``node`` from its next start."""
        self.point_daemon_at(SERIAL, self.info[node].udp_port, self.info[node].public_key, KEEPALIVE_S)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        for process in self.brokers.values():
            process.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[ClusterRig]:
    skip_without_browser_or_scripts(BIN)
    with redis_server(tmp_path / "redis") as redis:
        the_rig = ClusterRig(tmp_path, redis)
        try:
            the_rig.point_at("a")
            the_rig.pair_daemon(
                SERIAL, the_rig.state["a"], the_rig.base, the_rig.info["a"].cert, USER, PASSWORD
            )
            assert the_rig.daemon is not None
            the_rig.daemon.stop()  # and on to node b
            the_rig.point_at("b")
            the_rig.start_daemon()
            yield the_rig
        finally:
            the_rig.close()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    with headless_chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def _wait(driver: Any, what: str, condition: Any) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        raise AssertionError(
            f"{what}: not within {WAIT_S:g} s; the page at {driver.current_url} shows:\n{body}"
        ) from None


def _field(driver: Any, name: str) -> str:
    cells = driver.find_elements("css selector", f'[data-serial="{SERIAL}"] [data-field="{name}"]')
    return str(cells[0].text) if cells else f"(no {name})"


def test_a_viewer_at_node_a_follows_a_device_held_by_node_b(
    rig: ClusterRig, browser: Any, tmp_path: Path
) -> None:
    shots = Path(os.environ.get("DVRLINK_SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    driver = browser
    driver.get(f"{rig.base}/dashboard/login")
    _wait(driver, "the login form", lambda d: d.find_elements("id", "username"))
    driver.find_element("id", "username").send_keys(USER)
    driver.find_element("id", "password").send_keys(PASSWORD)
    driver.find_element("css selector", "form.login button").click()
    _wait(driver, "the device list after login", lambda d: d.current_url.endswith("/dashboard/devices"))
    _wait(driver, "the live stream", lambda d: d.find_element("id", "live").text == "Live updates: on")
    _wait(driver, f"{SERIAL} online (held by node b)", lambda d: _field(d, "state") == "online")
    driver.execute_script("window.dashboardNotReloaded = true;")

    assert rig.daemon is not None
    rig.daemon.signal(signal.SIGSTOP)  # silent at b: b's timeout, published to a
    _wait(driver, f"{SERIAL} offline after SIGSTOP at node b", lambda d: _field(d, "state") == "offline")
    rig.daemon.signal(signal.SIGCONT)
    _wait(driver, f"{SERIAL} online after SIGCONT at node b", lambda d: _field(d, "state") == "online")
    assert driver.execute_script("return window.dashboardNotReloaded === true;"), "the page was reloaded"

    driver.get(f"{rig.base}/dashboard/devices/{SERIAL}")
    _wait(driver, "the device page", lambda d: _field(d, "node") == "node-b")
    _wait(driver, "the live stream", lambda d: d.find_element("id", "live").text == "Live updates: on")
    driver.save_screenshot(str(shots / "cluster-device.png"))
    rig.daemon.stop()  # GOODBYE at b
    _wait(driver, "the device page going offline", lambda d: _field(d, "state") == "offline")
    assert _field(driver, "node") == "none (offline)"

    # The fleet page's online figure follows node b's changes live.
    driver.get(f"{rig.base}/dashboard/fleet")
    _wait(driver, "the live stream", lambda d: d.find_element("id", "live").text == "Live updates: on")
    _wait(driver, "no device online", lambda d: _online_now(d) == "0")
    driver.execute_script("window.dashboardNotReloaded = true;")
    rig.start_daemon()  # registers at b again
    _wait(driver, "online now 1 after the daemon registered at node b", lambda d: _online_now(d) == "1")
    assert driver.execute_script("return window.dashboardNotReloaded === true;"), "the page was reloaded"

    # The login made at node a is known at node b (another port of the same host, as behind a load
    # balancer); a logout at b ends it at a too.
    driver.get(f"https://localhost:{rig.info['b'].https_port}/dashboard/devices")
    _wait(driver, "node b's device list without a new login", lambda d: _field(d, "state") == "online")
    assert USER in driver.find_element("css selector", ".who").text
    driver.find_element("css selector", "form.logout button").click()
    _wait(driver, "the login form after the logout at b", lambda d: d.find_elements("id", "username"))
    driver.get(f"{rig.base}/dashboard/devices")
    _wait(driver, "node a's login form", lambda d: d.current_url.endswith("/dashboard/login"))


def _online_now(driver: Any) -> str:
    cells = driver.find_elements("css selector", '[data-field="online_count"]')
    return str(cells[0].text) if cells else "(no online figure)"
