"""Jobs that one process of an install does at a time, whichever: bringing back lost runs, forgetting journals.

Several app processes may serve one install (replicas on one store). Two of
them retrying one crashed run would schedule it twice, and the second, forced,
could send a run already running again back to the queue. So each such job runs
only while its process holds the job's lease in the store (`Store.lease`); the
others ask again every `LEASE_RETRY_SECONDS`, and one of them takes over within
that once the holder stops or dies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

from mcp_server.store import Lease, Store

log = logging.getLogger("ariel.leadership")

LEASE_RETRY_SECONDS = 5.0
"""How often a process without the lease asks for it again: the longest a job waits for a new holder."""
LEASE_CHECK_SECONDS = 5.0
"""How often the holder checks that its lease still holds (its database connection may have dropped)."""

RUN_RECOVERY_LEASE = "run-recovery"
"""The lease of the app process that brings back the install's lost runs and forgets old journals."""

Job = Callable[[], Coroutine[Any, Any, None]]


async def while_leading(store: Store, name: str, job: Job, *, retry_seconds: float = LEASE_RETRY_SECONDS,
                        check_seconds: float = LEASE_CHECK_SECONDS) -> None:
    """Run `job` whenever this process holds lease `name`, until cancelled."""
    failing = False
    while True:
        try:
            async with store.lease(name) as lease:
                failing = False
                if lease is not None:
                    log.info("%s: this process does it now", name)
                    if not await _run_while_held(lease, job, check_seconds):
                        log.warning("%s: this process lost its lease and stopped; it asks again", name)
        except Exception:  # the store unreachable, or the job failed: logged once a streak, and asked for again
            if not failing:
                log.exception("%s: stopped; asking for its lease again every %.0f s", name, retry_seconds)
            failing = True
        await asyncio.sleep(retry_seconds)


async def _run_while_held(lease: Lease, job: Job, check_seconds: float) -> bool:
    """Run `job` until it ends (True; its error is raised) or the lease no longer holds (False; the job is
    cancelled)."""
    task = asyncio.create_task(job())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=check_seconds)
            if done:
                task.result()
                return True
            if not await lease.alive():
                return False
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
