"""Sliding-window failure counting per key, for the API's login limit. No I/O; time is an argument.

The account- and device-wide limits on wrong pairing codes live in the registry (they are
persisted); this one is in memory, per (username, client address).

The API sees both through small async interfaces (:class:`LoginLimiter`, :class:`PairFailures`):
a single broker uses the in-memory limiter and the registry (:class:`LocalLoginLimiter`,
:class:`RegistryPairFailures`); a broker in a cluster counts in Redis
(``broker/cluster/counters.py``), so spreading guesses over nodes gains nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

LIMITER_MAX_KEYS = 100_000
"""Keys kept at most; past that, stale keys and then the oldest are forgotten."""


class FailureLimiter:
    """Sliding-window failure counter per key (e.g. (username, client address)); in memory."""

    def __init__(self, max_failures: int, window_s: float, max_keys: int = LIMITER_MAX_KEYS) -> None:
        self._max = max_failures
        self._window = window_s
        self._max_keys = max_keys
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def retry_after(self, key: tuple[str, str], now: float) -> float:
        """Seconds until ``key`` may try again; 0 if it may try now."""
        times = self._failures.get(key)
        if times is None:
            return 0.0
        while times and now - times[0] >= self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < self._max:
            return 0.0
        return times[0] + self._window - now

    def begin(self, key: tuple[str, str], now: float) -> float:
        """Start an attempt of ``key``: 0 if it may go on, counted as a failure until
        :meth:`succeeded` forgets it; else the seconds until it may try (nothing is counted).

        Counting before the work (a password hash) means concurrent attempts cannot get past
        the limit: in one event loop, this check and the count are one step.
        """
        wait = self.retry_after(key, now)
        if wait <= 0:
            self.failed(key, now)
        return wait

    def failed(self, key: tuple[str, str], now: float) -> None:
        """Count a failure of ``key`` at ``now``."""
        if key not in self._failures and len(self._failures) >= self._max_keys:
            self._prune(now)
        self._failures.setdefault(key, deque(maxlen=self._max)).append(now)

    def undo(self, key: tuple[str, str]) -> None:
        """Take back the newest count of ``key`` (an attempt :meth:`begin` counted that was not made)."""
        times = self._failures.get(key)
        if times:
            times.pop()
            if not times:
                del self._failures[key]

    def succeeded(self, key: tuple[str, str]) -> None:
        """Forget the failures of ``key``."""
        self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        stale = [k for k, t in self._failures.items() if not t or now - t[-1] >= self._window]
        for k in stale:
            del self._failures[k]
        while len(self._failures) >= self._max_keys:  # still full: forget the oldest keys
            del self._failures[next(iter(self._failures))]


class LoginLimiter(Protocol):
    """Failed logins per (username, client address), as the API counts them."""

    async def begin(self, key: tuple[str, str], now: float) -> float:
        """0 and the attempt counted as a failure, or the seconds until ``key`` may try."""
        ...

    async def undo(self, key: tuple[str, str]) -> None:
        """Take back the count of an attempt that was not made."""
        ...

    async def succeeded(self, key: tuple[str, str]) -> None:
        """Forget the failures of ``key``."""
        ...


class LocalLoginLimiter:
    """:class:`LoginLimiter` over an in-memory :class:`FailureLimiter` (one broker)."""

    def __init__(self, limiter: FailureLimiter) -> None:
        self.limiter = limiter

    async def begin(self, key: tuple[str, str], now: float) -> float:
        return self.limiter.begin(key, now)

    async def undo(self, key: tuple[str, str]) -> None:
        self.limiter.undo(key)

    async def succeeded(self, key: tuple[str, str]) -> None:
        self.limiter.succeeded(key)


class PairFailureStore(Protocol):
    """The registry's calls for wrong pairing codes."""

    def record_pair_failure(self, serial: str, now: float, username: str | None = None) -> None: ...
    def pair_failures_since(self, serial: str, since: float, username: str | None = None) -> int: ...


class PairFailures(Protocol):
    """Wrong pairing codes per device (and per account and device), as the API counts them."""

    async def record(self, serial: str, now: float, username: str) -> None:
        """Count a wrong code ``username`` sent ``serial`` at ``now``."""
        ...

    async def count_since(self, serial: str, since: float, username: str | None = None) -> int:
        """Wrong codes for ``serial`` since ``since`` (from ``username`` only, if given)."""
        ...


class RegistryPairFailures:
    """:class:`PairFailures` in the registry (shared by the nodes when the registry is)."""

    def __init__(self, registry: PairFailureStore) -> None:
        self._registry = registry

    async def record(self, serial: str, now: float, username: str) -> None:
        self._registry.record_pair_failure(serial, now, username)

    async def count_since(self, serial: str, since: float, username: str | None = None) -> int:
        return self._registry.pair_failures_since(serial, since, username)
