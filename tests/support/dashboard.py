"""A browser stand-in for the dashboard's component tests: an aiohttp session with its own
cookie jar that reads the CSRF token from the pages and sends the dashboard's Origin, as a
browser would. Every read is bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp

from dvrlink.broker.app import RunningBroker
from dvrlink.broker.tls import client_context

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


async def next_presence(stream: aiohttp.ClientResponse, serial: str, state: str) -> dict[str, Any]:
    """Read SSE messages until a ``presence`` update of ``serial`` to ``state``; bounded."""
    seen: list[str] = []

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
