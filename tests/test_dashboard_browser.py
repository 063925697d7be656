"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium through
Debian's chromedriver, against a real ``dvrlink-broker`` process and a real ``dvrlinkd``.

It logs in with the keyboard only, sees the paired device online, pauses the daemon (SIGSTOP:
the broker's keepalive timeout) and sees its row go offline without a reload, resumes it and
sees it online again, stops it (SIGTERM: GOODBYE) and starts a new one; it finds the NAT type
the daemon classified against the broker's RFC 5780 alternate address (``no NAT`` on loopback);
it names the device ``<script>…`` through the form and finds the name shown as text with no
alert; it checks labels
and text contrast; and it saves screenshots of the login, device list, device and fleet pages
(to ``DVRLINK_SCREENSHOT_DIR`` if set, else the test's temporary folder; docs/screenshots/ holds
copies).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.dashboard import (
    BrowserRigDaemon,
    LoggedProcess,
    contrast,
    headless_chromium,
    parse_css_color,
    skip_without_browser_or_scripts,
)

from dvrlink.broker.state import read_info

BIN = Path(sys.executable).parent
SERIAL = "DL-0016-0042"
USER, PASSWORD = "alice", "s3cret-pass-16"
XSS = "<script>alert(1)</script>"
KEEPALIVE_S = 2  # the broker judges the device offline after 2.5 intervals without a keepalive
WAIT_S = 30.0  # bound on each wait for the page
TEXT_SELECTORS = ("h1", "h2", "th", "td", "a", "label", "button", "dt", "dd", "p", ".state", "caption")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Rig(BrowserRigDaemon):
    """The broker and daemon processes and their files."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, BIN, WAIT_S)
        self.state = tmp / "broker"
        config = tmp / "broker.toml"
        config.write_text(
            f'state_dir = "{self.state}"\nudp_host = "127.0.0.1"\nudp_port = 0\nhttps_host = "127.0.0.1"\n'
            f"https_port = 0\npresence_tcp_port = 0\nturn_enabled = false\n"
            f'dashboard_operators = ["{USER}"]\n'
            'stun_alternate_host = "127.0.0.2"\nstun_alternate_port = 0\n'  # the NAT type (RFC 5780)
        )
        self.broker = LoggedProcess(
            [str(BIN / "dvrlink-broker"), "--config", str(config), "serve"], tmp / "broker.log", self.env
        )
        self.broker.wait_for("dvrlink-broker ready")
        self.info = read_info(self.state)
        self.base = f"https://localhost:{self.info.https_port}"
        self.point_daemon_at(SERIAL, self.info.udp_port, self.info.public_key, KEEPALIVE_S)
        with self.daemon_config.open("a") as config_file:
            config_file.write("learn_after_s = 0\n")  # classify the NAT at once

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.broker.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    skip_without_browser_or_scripts(BIN)
    the_rig = Rig(tmp_path)
    try:
        the_rig.pair_daemon(SERIAL, the_rig.state, the_rig.base, the_rig.info.cert, USER, PASSWORD)
        yield the_rig
    finally:
        the_rig.close()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    with headless_chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def _screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DVRLINK_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver: Any, what: str, condition: Any) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # A form that posts loads a new page: an element found just before the load is stale when
    # read, which means "not yet", not a failure.
    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        return wait.until(condition)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        raise AssertionError(
            f"{what}: not within {WAIT_S:g} s; the page at {driver.current_url} shows:\n{body}"
        ) from None


def _row_state(driver: Any) -> str:
    cells = driver.find_elements("css selector", f'tr[data-serial="{SERIAL}"] [data-field="state"]')
    return str(cells[0].text) if cells else "(no row)"


def _nat_after_reload(driver: Any) -> str:
    driver.refresh()
    cells = driver.find_elements("css selector", f'tr[data-serial="{SERIAL}"] [data-field="nat"]')
    return str(cells[0].text) if cells else "(no row)"


def _press(driver: Any, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def _active(driver: Any) -> Any:
    return driver.switch_to.active_element


def _no_alert(driver: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    raise AssertionError(f"an alert fired: {alert.text!r}")


def _check_labels(driver: Any) -> None:
    """Every visible input has a label (``<label for>``) or an accessible name."""
    inputs = driver.find_elements("css selector", "input:not([type=hidden]), select, textarea")
    assert inputs, f"no inputs on {driver.current_url}"
    for field in inputs:
        name = field.get_attribute("id")
        labelled = bool(name) and driver.find_elements("css selector", f'label[for="{name}"]')
        assert labelled or field.get_attribute("aria-label"), (
            f"input {field.get_attribute('name')!r} on {driver.current_url} has no label"
        )


_COLOURS = """
const out = [];
for (const node of document.querySelectorAll(arguments[0])) {
  if (!node.offsetParent || !node.textContent.trim()) continue;
  let back = node, bg = "rgba(0, 0, 0, 0)";
  while (back) {
    bg = getComputedStyle(back).backgroundColor;
    if (!/rgba\\(.*,\\s*0\\)$/.test(bg)) break;
    back = back.parentElement;
  }
  if (!back) bg = "rgb(255, 255, 255)";
  out.push([node.tagName + "." + node.className, node.textContent.trim().slice(0, 40),
            getComputedStyle(node).color, bg]);
}
return out;
"""


def _check_contrast(driver: Any) -> int:
    """Text contrast of the main text elements, from their computed styles: at least 4.5:1."""
    checked = 0
    for selector in TEXT_SELECTORS:
        for where, text, color, background in driver.execute_script(_COLOURS, selector):
            ratio = contrast(parse_css_color(color), parse_css_color(background))
            assert ratio >= 4.5, (
                f"{where} {text!r} on {driver.current_url}: {color} on {background} is {ratio:.2f}:1"
            )
            checked += 1
    return checked


def test_dashboard_in_chromium(rig: Rig, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    shots = _screenshots(tmp_path)
    driver = browser

    # -- log in with the keyboard only ----------------------------------------------------------
    driver.get(f"{rig.base}/dashboard/login")
    _wait(driver, "the login form", lambda d: d.find_elements("id", "username"))
    _check_labels(driver)
    assert _check_contrast(driver) > 3
    driver.save_screenshot(str(shots / "login.png"))
    _press(driver, Keys.TAB)
    assert _active(driver).get_attribute("id") == "username", "Tab from the page did not reach the username"
    _press(driver, USER, Keys.TAB)
    assert _active(driver).get_attribute("id") == "password"
    _press(driver, PASSWORD, Keys.TAB)
    assert _active(driver).tag_name == "button" and _active(driver).text == "Log in"
    _press(driver, Keys.ENTER)
    _wait(driver, "the device list after login", lambda d: d.current_url.endswith("/dashboard/devices"))
    _wait(driver, "the live stream", lambda d: d.find_element("id", "live").text == "Live updates: on")

    # -- the device goes offline and online without a reload -----------------------------------
    _wait(driver, f"{SERIAL} online", lambda d: _row_state(d) == "online")
    driver.execute_script("window.dashboardNotReloaded = true;")
    assert _check_contrast(driver) > 10
    assert rig.daemon is not None
    rig.daemon.signal(signal.SIGSTOP)  # silent: offline after the keepalive timeout
    _wait(driver, f"{SERIAL} offline after SIGSTOP", lambda d: _row_state(d) == "offline")
    rig.daemon.signal(signal.SIGCONT)
    _wait(driver, f"{SERIAL} online after SIGCONT", lambda d: _row_state(d) == "online")
    rig.daemon.stop()  # SIGTERM: the daemon says goodbye
    _wait(driver, f"{SERIAL} offline after SIGTERM", lambda d: _row_state(d) == "offline")
    assert _check_contrast(driver) > 10  # the offline colour too
    rig.start_daemon()
    _wait(driver, f"{SERIAL} online after a restart", lambda d: _row_state(d) == "online")
    assert driver.execute_script("return window.dashboardNotReloaded === true;"), "the page was reloaded"

    # -- the NAT type the daemon classified and reported (the column is not live: reload) ------
    _wait(driver, "the NAT type in the device's row", lambda d: _nat_after_reload(d).startswith("no NAT"))

    # -- reach the device by Tab and open it with Enter ----------------------------------------
    for _ in range(30):
        _press(driver, Keys.TAB)
        if (_active(driver).get_attribute("href") or "").endswith(f"/dashboard/devices/{SERIAL}"):
            break
    else:
        raise AssertionError(f"30 presses of Tab did not reach the link of {SERIAL}")
    _press(driver, Keys.ENTER)
    _wait(driver, "the device page", lambda d: d.current_url.endswith(f"/dashboard/devices/{SERIAL}"))
    _check_labels(driver)

    # -- a name that is markup shows as text -------------------------------------------------
    field = driver.find_element("id", "device-name")
    field.clear()
    field.send_keys(XSS, Keys.ENTER)
    _wait(
        driver,
        "the new name on the device page",
        lambda d: XSS in d.find_element("css selector", "dl.facts").text,
    )
    _no_alert(driver)
    assert driver.find_elements("css selector", "dl.facts script") == []
    _wait(driver, "the live stream", lambda d: d.find_element("id", "live").text == "Live updates: on")
    _wait(
        driver,
        "the device page's state",
        lambda d: "online" in d.find_element("css selector", ".status").text,
    )
    assert _check_contrast(driver) > 10
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1280, max(860, int(height) + 140))  # the whole page in the picture
    driver.save_screenshot(str(shots / "device.png"))
    driver.set_window_size(1280, 860)

    driver.get(f"{rig.base}/dashboard/devices")
    _wait(
        driver,
        "the renamed row",
        lambda d: d.find_elements("css selector", f'tr[data-serial="{SERIAL}"] .name'),
    )
    assert driver.find_element("css selector", f'tr[data-serial="{SERIAL}"] .name').text == XSS
    _no_alert(driver)
    _wait(driver, "the live stream", lambda d: d.find_element("id", "live").text == "Live updates: on")
    driver.save_screenshot(str(shots / "devices.png"))

    # -- the operators' fleet page -------------------------------------------------------------
    driver.get(f"{rig.base}/dashboard/fleet")
    _wait(driver, "the fleet page", lambda d: d.find_elements("css selector", '[data-field="online_count"]'))
    assert driver.find_element("css selector", '[data-field="online_count"]').text == "1"
    assert _check_contrast(driver) > 5
    driver.save_screenshot(str(shots / "fleet.png"))
    for name in ("login", "devices", "device", "fleet"):
        assert (shots / f"{name}.png").stat().st_size > 1000
    print(f"screenshots in {shots}")

    # -- the broker stops cleanly while this page still follows its stream ---------------------
    assert rig.broker.stop(bound=10.0) == 0, rig.broker.text()
    _wait(
        driver,
        "the page noticing the broker is gone",
        lambda d: "reconnecting" in d.find_element("id", "live").text,
    )
