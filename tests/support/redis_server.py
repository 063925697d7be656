"""The cluster tests' Redis: a real ``redis-server`` on loopback (``hil/redis_server.py``, which
the benchmarks share), started in a temporary folder and stopped afterwards. The ``redis``
fixture in tests/conftest.py gives each test its own."""

from __future__ import annotations

from hil.redis_server import RedisServer, redis_server

__all__ = ["RedisServer", "redis_server"]
