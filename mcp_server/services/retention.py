"""Forgetting what Ariel keeps about runs once it has served its purpose: run journals, and transcripts where the
operator set a retention (`ARIEL_JOURNAL_RETENTION_HOURS`, `ARIEL_TRANSCRIPT_RETENTION_DAYS`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

FORGET_EVERY_SECONDS = 3600.0

log = logging.getLogger("ariel.retention")


async def keep_forgetting(forget: Callable[[timedelta], Awaitable[int]], what: str, retention: timedelta,
                          interval: float = FORGET_EVERY_SECONDS) -> None:
    """Call `forget` (a journal's or the transcripts' `forget_older_than`) every `interval` seconds until cancelled;
    a pass that fails is logged, not fatal. `what`: what it forgets, for the log ("run journal steps")."""
    while True:
        try:
            if forgotten := await forget(retention):
                log.info("forgot %d %s of runs idle for %s", forgotten, what, retention)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store unavailable for a moment: the next pass tries again
            log.warning("old %s could not be forgotten this pass (%s)", what, type(exc).__name__)
        await asyncio.sleep(interval)
