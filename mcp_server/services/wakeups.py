"""Runs just made, by work pool: a worker's poll held at the gateway returns the moment its pool gets one.

A stock Prefect worker asks for its pool's scheduled runs every `PREFECT_WORKER_QUERY_SECONDS`; a run made
in between waits for the next ask (0.5 s on average at 1 s). The gateway instead holds an ask that found
nothing for up to `HOLD_SECONDS`, and asks Prefect again as soon as `ring` says the pool got a run: the
worker, unchanged, learns of a chat's run at once, on Ariel's hosts and on a customer's alike. The hold
is shorter than Prefect's prefetch (10 s), so runs that fall due on a schedule are still fetched ahead.

One process's: a run made through another app process wakes no one here, and is fetched when the hold
ends (polling stays the fallback).

Example:
    >>> wakeups = Wakeups()
    >>> ticket = wakeups.ticket("pool-a")
    >>> wakeups.ring("pool-a")
    >>> asyncio.run(wakeups.wait("pool-a", ticket, timeout=0.01))  # rung since the ticket: no wait
    True
    >>> asyncio.run(wakeups.wait("pool-b", wakeups.ticket("pool-b"), timeout=0.01))
    False
"""

from __future__ import annotations

import asyncio

HOLD_SECONDS = 5.0


class Wakeups:
    """Per pool, how many runs were made, and who waits for the next."""

    def __init__(self) -> None:
        self._rung: dict[str, int] = {}
        self._waiting: dict[str, asyncio.Event] = {}

    def ticket(self, pool: str) -> int:
        """Take before asking Prefect: `wait` then returns at once for a run made since, even mid-ask."""
        return self._rung.get(pool, 0)

    def ring(self, pool: str) -> None:
        """A run was just made in `pool`."""
        self._rung[pool] = self._rung.get(pool, 0) + 1
        if (event := self._waiting.pop(pool, None)) is not None:
            event.set()

    async def wait(self, pool: str, ticket: int, timeout: float = HOLD_SECONDS) -> bool:
        """Whether `pool` got a run since `ticket`, waiting up to `timeout` for one."""
        if self._rung.get(pool, 0) != ticket:
            return True
        event = self._waiting.setdefault(pool, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True
