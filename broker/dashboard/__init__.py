"""The fleet dashboard: HTML pages the broker serves under ``/dashboard/``, live over SSE.

``feed`` turns presence events into per-device history, fleet counters and a live stream with
bounded queues; ``logins`` keeps the server-side login sessions (cookie and CSRF token); ``view``
gathers what a page shows from the registry, the presence core and the session table; ``render``
writes it as escaped HTML; ``routes`` is the aiohttp side (pages, login, SSE, static files, the
security headers). Nothing here is loaded from outside the broker: no CDN, no external fonts.
"""
