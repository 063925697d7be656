"""An SMS provider's HTTP API on loopback, for the daemon's SMS wake tests: the broker's HTTP
gateway posts ``to``, ``from`` and ``text`` to it, and it hands each message to the recorder's
number (``own_number``) to the rig's modem emulator once a rig is attached."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from support.daemon_modem import Rig


@dataclass
class Provider:
    """An SMS provider on loopback that delivers each message into the device's emulator."""

    own_number: str
    rig: Rig | None = None
    url: str = ""
    sent: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        message = {name: str(form[name]) for name in ("to", "from", "text")}
        self.sent.append(message)
        if self.rig is not None and message["to"] == self.own_number:
            self.rig.emu.receive_sms(message["from"], message["text"])
        return web.Response(text="queued")


@contextlib.asynccontextmanager
async def provider_server(own_number: str) -> AsyncIterator[Provider]:
    """A :class:`Provider` serving ``POST /send`` on loopback until the block ends."""
    provider = Provider(own_number)
    app = web.Application()
    app.router.add_post("/send", provider.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    provider.url = f"http://127.0.0.1:{runner.addresses[0][1]}/send"
    try:
        yield provider
    finally:
        await runner.cleanup()
