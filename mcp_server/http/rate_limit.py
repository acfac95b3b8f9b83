"""Rate limits per client address and per user: at most N requests in any 60 seconds, then 429 with Retry-After.

Two instances of `RateLimit` sit in the app's stack: one keyed by client
address before authentication (so floods of bad credentials are limited too),
one keyed by the authenticated user after it (so a user is counted across
addresses). Counts live in the middleware instance, in memory: each server
process limits on its own, and a restart forgets them.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_server.services.caller import Caller
from mcp_server.tools.middleware.caller import SCOPE_CALLER

WINDOW_SECONDS = 60.0

UNCOUNTED_PATHS = frozenset({"/health", "/ready"})
"""Load balancers and orchestrators poll these; a limit there would take a healthy server out of rotation."""


class SlidingWindow:
    """The times of each key's requests in the last `window` seconds.

    A key at `limit` waits for its oldest to expire.
    """

    def __init__(self, limit: int, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._swept = clock()

    def hit(self, key: str) -> float | None:
        """Count a request of `key`; None when it is allowed, else the seconds until one would be.

        A refused request is not counted, so a client that keeps retrying gets in as soon as it may.
        """
        now = self.clock()
        self._sweep(now)
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        return None

    def __len__(self) -> int:
        """How many keys are held."""
        return len(self._hits)

    def _sweep(self, now: float) -> None:
        # Once a window, drop keys with no recent request, so memory follows the active clients, not all clients ever.
        if now - self._swept < self.window:
            return
        self._swept = now
        for key in [key for key, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]:
            del self._hits[key]


class RateLimit:
    """Refuse requests past `per_minute`.

    Counted per client address (`per="address"`) or per authenticated user (`per="user"`).
    """

    def __init__(self, app: ASGIApp, per: Literal["address", "user"], per_minute: int) -> None:
        self.app = app
        self.per = per
        self.window = SlidingWindow(per_minute) if per_minute > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.window is None
            or scope["type"] != "http"
            or (key := self._key(scope)) is None
            or (wait := self.window.hit(key)) is None
        ):
            await self.app(scope, receive, send)
            return
        seconds = max(1, math.ceil(wait))
        at = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        who = "your user" if self.per == "user" else f"address {key}"
        body = {
            "error": "rate limited",
            "detail": f"more than {self.window.limit} requests in a minute from {who}; retry after {seconds} s ({at})",
            "retry_after_seconds": seconds,
            "retry_at": at,
        }
        await JSONResponse(body, status_code=429, headers={"Retry-After": str(seconds)})(scope, receive, send)

    def _key(self, scope: Scope) -> str | None:
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path in UNCOUNTED_PATHS:
            return None
        if self.per == "user":
            caller = scope.get("state", {}).get(SCOPE_CALLER)
            # Only authenticated paths have a caller; the public ones are counted per address alone.
            return f"user {caller.user_id}" if isinstance(caller, Caller) else None
        client = scope.get("client")
        return _address_key(client[0]) if client else "unknown"


def _address_key(host: str) -> str:
    """The address to count: an IPv6 client by its /64, which one host usually has to itself."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
