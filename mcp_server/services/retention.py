"""Forgetting what Ariel keeps about runs once it has served its purpose: run journals, and transcripts where the
operator set a retention (`ARIEL_JOURNAL_RETENTION_HOURS`, `ARIEL_TRANSCRIPT_RETENTION_DAYS`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from blocks.object_store import ObjectStoreError

FORGET_EVERY_SECONDS = 3600.0

log = logging.getLogger("ariel.retention")


async def keep_forgetting(forget: Callable[[timedelta], Awaitable[int]], what: str, retention: timedelta,
                          interval: float = FORGET_EVERY_SECONDS) -> None:
    """Call `forget` (a journal's or the transcripts' `forget_older_than`) every `interval` seconds until cancelled;
    a pass that fails is logged, not fatal. `what`: what it forgets, for the log ("run journal steps")."""
    while True:
        try:
            if forgotten := await forget(retention):
                log.info("forgot %d %s of runs idle for %s", forgotten, what, _span(retention))
        except asyncio.CancelledError:
            raise
        except ObjectStoreError as exc:  # its message names the store and what to check, never a credential
            log.warning("old %s could not be forgotten this pass: %s", what, exc)
        except Exception as exc:  # the store unavailable for a moment: the next pass tries again
            log.warning("old %s could not be forgotten this pass (%s)", what, type(exc).__name__)
        await asyncio.sleep(interval)


def _span(retention: timedelta) -> str:
    """
    >>> _span(timedelta(days=7)), _span(timedelta(hours=24)), _span(timedelta(hours=1)), _span(timedelta(seconds=90))
    ('7 days', '1 day', '1 hour', '0:01:30')
    """
    seconds = int(retention.total_seconds())
    for unit, size in (("day", 86_400), ("hour", 3_600)):
        if seconds and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return str(retention)
