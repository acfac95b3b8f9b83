"""Runs just made, by work pool: a worker's poll held at the gateway returns the moment its pool gets one.

A stock Prefect worker asks for its pool's scheduled runs every `PREFECT_WORKER_QUERY_SECONDS`; a run made
in between waits for the next ask (0.5 s on average at 1 s). The gateway instead holds an ask that found
nothing for up to `HOLD_SECONDS`, and asks Prefect again as soon as `ring` says the pool got a run: the
worker, unchanged, learns of a chat's run at once, on Ariel's hosts and on a customer's alike. The hold
is shorter than Prefect's prefetch (10 s), so runs that fall due on a schedule are still fetched ahead.

Across the app processes of an install on PostgreSQL, each run made is also announced on the store's
`WAKEUP_CHANNEL` (`announce`), and every process rings its own `Wakeups` for what it hears
(`keep_hearing`): a run made through one replica, or an `ariel mcp`, wakes a poll held at another. On
SQLite each process hears only itself: a run made through another is fetched when the hold ends.

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
import logging
from contextlib import aclosing

from mcp_server.store import Store

log = logging.getLogger("ariel.wakeups")

HOLD_SECONDS = 5.0
WAKEUP_CHANNEL = "ariel_run_made"
HEAR_AGAIN_SECONDS = 5.0
ANNOUNCE_SECONDS = 2.0


class Wakeups:
    """Per pool, how many runs were made, and who waits for the next."""

    def __init__(self) -> None:
        self._rung: dict[str, int] = {}
        self._waiting: dict[str, asyncio.Event] = {}
        self._released = False

    def ticket(self, pool: str) -> int:
        """Take before asking Prefect: `wait` then returns at once for a run made since, even mid-ask."""
        return self._rung.get(pool, 0)

    def ring(self, pool: str) -> None:
        """A run was just made in `pool`."""
        self._rung[pool] = self._rung.get(pool, 0) + 1
        if (event := self._waiting.pop(pool, None)) is not None:
            event.set()

    async def wait(self, pool: str, ticket: int, timeout: float = HOLD_SECONDS) -> bool:
        """Whether `pool` got a run since `ticket`, waiting up to `timeout` for one (not at all once released)."""
        if self._rung.get(pool, 0) != ticket:
            return True
        if self._released:
            return False
        event = self._waiting.setdefault(pool, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return self._rung.get(pool, 0) != ticket

    def release(self) -> None:
        """The app is stopping: end every hold now, and hold nothing from here on.

        A held poll would otherwise outlast the server's bounded shutdown, and be cancelled with a traceback;
        released, the worker gets its (empty) answer, and asks the next process of the install.
        """
        self._released = True
        for event in self._waiting.values():
            event.set()
        self._waiting.clear()


async def announce(store: Store, wakeups: Wakeups, pool: str) -> None:
    """A run was just made in `pool`: ring here, and in the install's other processes."""
    wakeups.ring(pool)
    if store.shares_notifications:
        try:
            # Bounded: the run is made, and its caller waits for this answer; a slow database must not hold it.
            await asyncio.wait_for(store.notify(WAKEUP_CHANNEL, pool), ANNOUNCE_SECONDS)
        except Exception as exc:  # the other processes' workers find the run when their hold ends
            log.warning("could not announce a run of %s to the other app processes (%s)", pool, type(exc).__name__)


async def keep_hearing(store: Store, wakeups: Wakeups, listening: asyncio.Event | None = None) -> None:
    """Ring `wakeups` for each run announced on the store, by any process; until cancelled. `listening` is set
    once the store listens (again, after a dropped connection)."""
    failing = False
    while True:
        try:
            async with aclosing(store.listen(WAKEUP_CHANNEL, listening)) as heard:
                if failing:
                    log.warning("hearing of runs made by other app processes again")
                failing = False
                async for pool in heard:
                    wakeups.ring(pool)
        except Exception as exc:  # the database restarted, say: held polls fall back to their hold meanwhile
            if not failing:  # once a streak: said where operators look, not every 5 s
                log.warning("stopped hearing of runs made by other app processes (%s); trying again every %.0f s",
                            type(exc).__name__, HEAR_AGAIN_SECONDS)
            failing = True
        await asyncio.sleep(HEAR_AGAIN_SECONDS)
