"""Rate limits that fit a conversation: tool calls per user, and requests without valid credentials per address.

A person's assistant makes one tool call per step of a conversation, each of
them several MCP HTTP requests (the call, its event stream, the session's
opening and end): counting requests cut an honest client off mid-conversation,
and counting per address cut off everyone behind one NAT. So the tool-call
limit (`mcp_server.tools.middleware.rate_limit`) counts the calls a user makes,
and the address limit (`mcp_server.http.rate_limit`) only the requests nobody
proved who sent them.

Counts live in a `Counter`. Tool calls count in the store (`StoreCounter`):
every app process of an install (`ariel up` replicas, `ariel mcp` beside them)
counts a user against the same window, so the limit is one limit. Requests
without valid credentials count in this process (`MemoryCounter`): a write to
the store for each would hand an unauthenticated flood the database; behind a
load balancer each replica so allows the limit on its own.

Example:
    >>> import asyncio
    >>> limit = RateLimit("tool calls", per_minute=2)
    >>> asyncio.run(limit.check("user u1", "your user"))  # the first two pass
    >>> asyncio.run(limit.check("user u1", "your user"))
    >>> asyncio.run(limit.check("user u1", "your user"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mcp_server.services.exceptions.RateLimited: rate limited: more than 2 tool calls in a minute from your user; \
retry after 60 s (at ...)
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from mcp_server.services.exceptions import RateLimited
from mcp_server.settings import ArielSettings
from mcp_server.store import Store

WINDOW_SECONDS = 60.0


class Counter(Protocol):
    """Where counts live; one counter may serve several limits (their keys differ)."""

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        """Count one event of `key`: None when it is within `limit` in `window` seconds, else the seconds until
        one would be. A refused event is not counted, so a client that retries gets in as soon as it may."""
        ...


class MemoryCounter:
    """A sliding window per key, in this process's memory.

    Memory follows the keys active in the last window: once a window, keys
    with no recent event are dropped.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._swept = clock()

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        now = self.clock()
        self._sweep(now, window)
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            return hits[0] + window - now
        hits.append(now)
        return None

    def __len__(self) -> int:
        """How many keys are held."""
        return len(self._hits)

    def _sweep(self, now: float, window: float) -> None:
        if now - self._swept < window:
            return
        self._swept = now
        for key in [key for key, hits in self._hits.items() if not hits or hits[-1] <= now - window]:
            del self._hits[key]


class StoreCounter:
    """A sliding window per key in the store, shared by every process that opens it (`Store.hit_rate`, timed by
    the database's clock on PostgreSQL).

    Keys nobody counts any more are deleted at most once a window, by whichever process counts next.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store, self.clock = store, clock
        self._swept = clock()

    async def hit(self, key: str, limit: int, window: float) -> float | None:
        now = self.clock()
        if now - self._swept >= window:
            self._swept = now
            # Two windows back: a replica whose clock runs ahead must not delete hits still in the window.
            await self.store.forget_rate_hits(now - 2 * window)
        return await self.store.hit_rate(key, limit, window)


@dataclass(frozen=True)
class RateLimit:
    """At most `per_minute` events of one key in any 60 s; `what` names them in the refusal."""

    what: str
    per_minute: int
    counter: Counter = field(default_factory=MemoryCounter)

    async def check(self, key: str, who: str) -> None:
        """Count an event of `key` (`who` says whose, for the message), or raise `RateLimited` saying when to retry.

        Raises:
            RateLimited: `key` is past the limit; names the limit and when to retry.
        """
        wait = await self.counter.hit(f"{self.what}: {key}", self.per_minute, WINDOW_SECONDS)
        if wait is None:
            return
        seconds = max(1, math.ceil(wait))
        at = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise RateLimited(
            f"rate limited: more than {self.per_minute} {self.what} in a minute from {who}; "
            f"retry after {seconds} s (at {at})",
            retry_after_seconds=seconds, retry_at=at,
        )


def tool_call_limit(settings: ArielSettings, store: Store) -> RateLimit | None:
    """Each user's tool calls, counted in the store: one limit across the install's processes. None when off."""
    calls = settings.rate_limit_per_minute
    return RateLimit("tool calls", calls, StoreCounter(store)) if calls else None


def unauthenticated_limit(settings: ArielSettings) -> RateLimit | None:
    """Requests without valid credentials, per address, counted in this process. None when off."""
    anonymous = settings.unauthenticated_rate_limit_per_minute
    return RateLimit("requests without valid credentials", anonymous, MemoryCounter()) if anonymous else None
