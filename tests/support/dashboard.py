"""A browser stand-in for the dashboard's component tests: an aiohttp session with its own
cookie jar that reads the CSRF token from the pages and sends the dashboard's Origin, as a
browser would. Every read is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from dvrlink.broker.app import RunningBroker
from dvrlink.broker.tls import client_context
from dvrlink.protocol.identity import b64encode_key
from dvrlink.protocol.pairing import normalize_code, pair_proof
from support.waiting import wait_until

STEP = 10.0
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: str) -> str:
    """The CSRF token of a page's forms."""
    found = _CSRF.search(page)
    assert found is not None, f"no CSRF field in the page: {page[:500]}"
    return found.group(1)


class DashboardClient:
    """One browser: cookies, CSRF tokens and the Origin header."""

    def __init__(self, broker: RunningBroker) -> None:
        self.origin = f"https://localhost:{broker.info.https_port}"
        connector = aiohttp.TCPConnector(ssl=client_context(broker.info.cert))
        self.http = aiohttp.ClientSession(self.origin, connector=connector)
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(path, allow_redirects=False) as resp:
            text = await resp.text()
        if resp.status == 200 and 'name="csrf"' in text:
            self.csrf = csrf_of(text)
        return resp.status, text, resp

    async def post(
        self, path: str, fields: dict[str, str], *, origin: str | None = "", csrf: str | None = ""
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        """POST a form; ``origin``/``csrf`` "" send the right ones, None sends none."""
        headers = {} if origin is None else {"Origin": origin or self.origin}
        data = dict(fields)
        if csrf is not None:
            data["csrf"] = csrf or self.csrf
        async with self.http.post(path, data=data, headers=headers, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp

    async def login(self, username: str, password: str) -> tuple[int, str, aiohttp.ClientResponse]:
        status, _text, _resp = await self.get("/dashboard/login")
        assert status == 200
        answer = await self.post("/dashboard/login", {"username": username, "password": password})
        if answer[0] == 303:
            await self.get("/dashboard/devices")  # picks up the login's CSRF token
        return answer


async def next_presence(
    stream: aiohttp.ClientResponse, serial: str, state: str, seen: list[str] | None = None
) -> dict[str, Any]:
    """Read SSE messages until a ``presence`` update of ``serial`` to ``state``; bounded. The
    lines read are appended to ``seen``."""
    seen = [] if seen is None else seen

    async def scan() -> dict[str, Any]:
        event = ""
        while True:
            raw = await stream.content.readline()
            assert raw, f"the stream ended; seen: {seen}"
            line = raw.decode().rstrip("\n")
            seen.append(line)
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "presence":
                update: dict[str, Any] = json.loads(line[6:])
                if update["serial"] == serial and update["state"] == state:
                    return update

    try:
        return await asyncio.wait_for(scan(), STEP)
    except TimeoutError:
        raise AssertionError(f"no {state} update of {serial} within {STEP} s; seen: {seen}") from None


# -- the browser test: real processes and a real Chromium ------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,860",
    "--ignore-certificate-errors",  # the broker's self-signed certificate; only here, in a test
)


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return (
            f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(make system-packages)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: run `make venv` (it is in the test extra)"
    return None


class LoggedProcess:
    """A child process whose stderr goes to a file; ``wait_for`` waits for a line (bounded)."""

    def __init__(self, args: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        self._file = log.open("ab")
        self.proc = subprocess.Popen(self.args, stderr=self._file, stdout=subprocess.DEVNULL, env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 30.0) -> str:
        """The first line matching ``pattern`` in the log from character ``after`` on."""

        def found() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args[0]} exited ({self.proc.returncode}):\n{self.text()}")
            match = re.search(f"^.*{pattern}.*$", self.text()[after:], re.MULTILINE)
            return match.group(0) if match else None

        return wait_until(f"{pattern!r} in {self.log.name}", found, timeout=timeout, seen=self.text)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, bound: float = 20.0) -> int:
        """SIGCONT (in case it is stopped) and SIGTERM, then its exit code (SIGKILL after ``bound``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(bound)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(bound)
            raise AssertionError(
                f"{self.args[0]} did not exit within {bound:g} s of SIGTERM:\n{self.text()}"
            ) from None
        finally:
            self._file.close()
        return code


async def pair_over_api(base: str, cert: Path, serial: str, code: str, username: str, password: str) -> None:
    """Pair ``serial`` to ``username`` through the viewer API, as ``dvrlink pair`` does."""
    connector = aiohttp.TCPConnector(ssl=client_context(cert))
    async with aiohttp.ClientSession(base, connector=connector) as http:
        async with http.post("/v1/tokens", json={"username": username, "password": password}) as resp:
            assert resp.status == 200, await resp.text()
            auth = {"Authorization": "Bearer " + (await resp.json())["token"]}
        async with http.get(f"/v1/devices/{serial}/identity", headers=auth) as resp:
            identity = await resp.json()
        device_key = base64.b64decode(identity["public_key"])
        viewer_key, nonce = os.urandom(32), os.urandom(16)
        body = {
            "viewer_public_key": b64encode_key(viewer_key),
            "nonce": base64.b64encode(nonce).decode(),
            "proof": base64.b64encode(pair_proof(code, serial, device_key, viewer_key, nonce)).decode(),
        }
        async with http.post(f"/v1/devices/{serial}/pairings", headers=auth, json=body) as resp:
            assert resp.status == 200, await resp.text()


def _channel(value: float) -> float:
    value /= 255
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def luminance(rgb: Sequence[float]) -> float:
    """WCAG relative luminance of an sRGB colour (0-255 channels)."""
    r, g, b = (_channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(foreground: Sequence[float], background: Sequence[float]) -> float:
    """WCAG contrast ratio of two colours (1 to 21)."""
    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def parse_css_color(text: str) -> tuple[float, float, float, float]:
    """``rgb(r, g, b)`` or ``rgba(r, g, b, a)`` as computed styles give them."""
    numbers = [float(n) for n in re.findall(r"[\d.]+", text)]
    assert len(numbers) in (3, 4), f"not an rgb() colour: {text!r}"
    return (numbers[0], numbers[1], numbers[2], numbers[3] if len(numbers) == 4 else 1.0)


class BrowserRigDaemon:
    """The ``dvrlinkd`` a browser test starts, stops and restarts (its config and one log per
    start in ``tmp``), and the admin commands it runs, each bounded by ``bound`` seconds."""

    def __init__(self, tmp: Path, bin_dir: Path, bound: float) -> None:
        self.tmp = tmp
        self.bin = bin_dir
        self.bound = bound
        self.env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        self.daemon: LoggedProcess | None = None
        self.daemons = 0
        self.daemon_config = tmp / "dvrlinkd.toml"

    def point_daemon_at(self, serial: str, udp_port: int, public_key: bytes, keepalive_s: float) -> None:
        """Write the daemon's config: ``serial`` registering with the broker at ``udp_port``."""
        self.daemon_config.write_text(
            f'[device]\nserial = "{serial}"\nstate_dir = "{self.tmp / "device"}"\n'
            f'runtime_dir = "{self.tmp / "run"}"\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {udp_port}\n'
            f'public_key = "{b64encode_key(public_key)}"\n'
            f'[presence]\ntransport = "udp"\nkeepalive_interval_s = {keepalive_s}\nlearn_keepalive = false\n'
            "reply_timeout_s = 0.5\nretries = 1\nreport_min_interval_s = 1\n"
        )

    def run(self, *args: str, stdin: bytes = b"") -> str:
        """Run a command to its end; its output (fails the test if it fails)."""
        done = subprocess.run(
            args, input=stdin, capture_output=True, timeout=self.bound, env=self.env, check=False
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def start_daemon(self) -> None:
        """Start ``dvrlinkd run`` and wait until it registered."""
        self.daemons += 1
        self.daemon = LoggedProcess(
            [str(self.bin / "dvrlinkd"), "run", "--config", str(self.daemon_config)],
            self.tmp / f"dvrlinkd-{self.daemons}.log",
            self.env,
        )
        self.daemon.wait_for("registered")

    def pair_daemon(
        self, serial: str, broker_state: Path, base: str, cert: Path, username: str, password: str
    ) -> None:
        """Make a pairing code, start the daemon, add ``username`` at the broker of
        ``broker_state`` and pair the device to it over the viewer API."""
        label = self.run(
            str(self.bin / "dvrlinkd"), "pairing-code", "--create", "--config", str(self.daemon_config)
        )
        found = re.search(r"pairing code:\s*(\S+)", label)
        assert found is not None, label
        self.start_daemon()
        self.run(
            str(self.bin / "dvrlink-broker"), "user", "add", username, "--password-stdin", "--state-dir",
            str(broker_state), stdin=f"{password}\n".encode(),
        )  # fmt: skip
        asyncio.run(pair_over_api(base, cert, serial, normalize_code(found.group(1)), username, password))


def skip_without_browser_or_scripts(bin_dir: Path) -> None:
    """Skip the test (saying what to install) without Chromium, chromedriver, selenium or the
    installed scripts."""
    import pytest

    why = browser_missing()
    if why is not None:
        pytest.skip(why)
    for script in ("dvrlinkd", "dvrlink-broker"):
        if not (bin_dir / script).exists():
            pytest.skip(f"the {script} script is not installed (run `make venv`)")


@contextlib.contextmanager
def headless_chromium(profile: Path) -> Iterator[Any]:
    """Debian's Chromium, headless, driven by its chromedriver, with a fresh profile in
    ``profile``. The caller sets ``SE_OFFLINE=true`` (monkeypatch) so Selenium Manager fetches
    nothing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile.mkdir()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
