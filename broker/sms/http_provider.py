"""Wake SMS through an SMS provider's HTTP API, described by config (``[sms_gateway]`` with
``backend = "http"``): a URL template, a method, a body template, and a header or basic auth
whose secret is read from a file.

The templates take ``{to}`` (the device's number, +E.164), ``{text}`` (the wake's text form,
``DW1:`` and base32) and ``{from}`` (``sender``). In the URL each value is percent-encoded; in
the body it is escaped for the content type: JSON string escapes for ``application/json`` (the
template holds the quotes), form encoding for ``application/x-www-form-urlencoded``, as is for
anything else. Any 2xx answer counts as taken; any other is an error that names the status and
the start of the provider's answer. Secrets never appear in logs or errors.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.parse
from pathlib import Path

import aiohttp

from dvrlink.broker.config import SmsGatewayConfig
from dvrlink.broker.sms.gateway import OutgoingWake, SmsReceipt, SmsSendError

log = logging.getLogger(__name__)

ANSWER_EXCERPT = 200
"""Characters of a provider's error answer quoted in the error."""


def fill_url(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{name}`` replaced by its percent-encoded value."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
    return template


def fill_body(template: str, values: dict[str, str], content_type: str) -> str:
    """``template`` with each ``{name}`` replaced by its value, escaped for ``content_type``."""
    kind = content_type.split(";", maxsplit=1)[0].strip().lower()
    for name, value in values.items():
        if kind == "application/json" or kind.endswith("+json"):
            escaped = json.dumps(value)[1:-1]
        elif kind == "application/x-www-form-urlencoded":
            escaped = urllib.parse.quote_plus(value)
        else:
            escaped = value
        template = template.replace("{" + name + "}", escaped)
    return template


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SmsSendError(
            f"SMS gateway: cannot read {what} {path} ({exc.__class__.__name__}): create it with the "
            "provider's credential, readable by the broker only (mode 0600)"
        ) from None


class HttpSmsGateway:
    """The ``http`` backend of :class:`~dvrlink.broker.sms.gateway.SmsGateway`."""

    name = "http"

    def __init__(self, config: SmsGatewayConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}

    async def start(self) -> None:
        """Read the credential files and open the HTTP client.

        Raises:
            SmsSendError: a credential file cannot be read.
        """
        config = self._config
        headers = dict(config.headers)
        if config.body:
            headers["Content-Type"] = config.content_type
        if config.auth_header and config.auth_value_file is not None:
            headers[config.auth_header] = _read_secret(config.auth_value_file, "auth_value_file")
        if config.basic_user and config.basic_password_file is not None:
            password = _read_secret(config.basic_password_file, "basic_password_file")
            pair = f"{config.basic_user}:{password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        self._headers = headers
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=config.timeout_s))

    async def send(self, wake: OutgoingWake) -> SmsReceipt:
        """POST (or the configured method) the wake's text form to the provider.

        Raises:
            SmsSendError: the provider cannot be reached, does not answer in ``timeout_s``, or
                answers with a status that is not 2xx.
        """
        if self._session is None:
            await self.start()
        assert self._session is not None
        config = self._config
        values = {"to": wake.recipient, "text": wake.text, "from": config.sender}
        url = fill_url(config.url, values)
        data = fill_body(config.body, values, config.content_type).encode("utf-8") if config.body else None
        where = urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()
        try:
            async with self._session.request(
                config.method, url, data=data, headers=self._headers, allow_redirects=False
            ) as response:
                answer = (await response.read())[: ANSWER_EXCERPT * 4].decode("utf-8", "replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SmsSendError(
                f"SMS provider {where} cannot be reached ({exc.__class__.__name__}: {exc}): check the url "
                f"and this host's network; the wake to {wake.recipient} was not sent"
            ) from None
        if not 200 <= status < 300:
            raise SmsSendError(
                f"SMS provider {where} answered {status} to the wake for {wake.recipient}: "
                f"{answer[:ANSWER_EXCERPT]!r}; check the credential, the templates and the account's credit"
            )
        log.info("wake SMS to %s taken by the provider %s (HTTP %d)", wake.recipient, where, status)
        return SmsReceipt(self.name, "text", f"HTTP {status}")

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()
            self._session = None
