"""Whether a worker polls this install's work pools, as the Prefect API sees it (for the app's /ready).

Workers send Prefect a heartbeat every `PREFECT_WORKER_HEARTBEAT_SECONDS`
(30 s by default); Prefect calls a worker offline after three missed ones.
Runs of this install wait forever when no worker polls its pools, so that is
part of being ready.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterType
from prefect.client.schemas.objects import Worker, WorkerStatus

from deployments.pools.work_pools import PoolType, install_prefix

HEARTBEAT_SECONDS = 30  # PREFECT_WORKER_HEARTBEAT_SECONDS' default, for workers that do not say theirs
MISSED_HEARTBEATS = 3  # as Prefect's server: a worker is offline after this many intervals without one
PAGE = 200  # the most the Prefect API returns per request


@dataclass(frozen=True)
class WorkerCensus:
    """This install's pools, and the first one found with a polling worker (None when no pool has one)."""

    pools: tuple[str, ...]
    polled_pool: str | None = None
    polling_workers: int = 0


async def install_pools(client: PrefectClient, install_id: str, pool_type: PoolType | None = None) -> list[str]:
    """Names of this install's pools (of `pool_type`, when given), sorted, however many there are."""
    prefix = install_prefix(install_id)
    pool_filter = WorkPoolFilter(type=WorkPoolFilterType(any_=[pool_type])) if pool_type else None
    names: list[str] = []
    for offset in itertools.count(0, PAGE):
        page = await client.read_work_pools(limit=PAGE, offset=offset, work_pool_filter=pool_filter)
        names += [pool.name for pool in page if pool.name.startswith(prefix)]
        if len(page) < PAGE:
            return sorted(names)
    raise AssertionError("unreachable")


def is_polling(worker: Worker, now: datetime) -> bool:
    """Prefect's ONLINE, or a heartbeat within three intervals.

    The server computes ONLINE from the worker's own heartbeat interval.
    """
    if worker.status == WorkerStatus.ONLINE:
        return True
    if worker.last_heartbeat_time is None:
        return False
    interval = worker.heartbeat_interval_seconds or HEARTBEAT_SECONDS
    return now - worker.last_heartbeat_time <= timedelta(seconds=interval * MISSED_HEARTBEATS)


async def polling_workers(client: PrefectClient, install_id: str, pool_type: PoolType | None = None) -> WorkerCensus:
    """Find a pool of this install that a worker polls, and count its polling workers.

    Stops at the first such pool: one worker host serves all of an install's
    pools, and a readiness probe must not cost a request per organization.
    """
    pools = tuple(await install_pools(client, install_id, pool_type))
    now = datetime.now(UTC)
    for pool in pools:
        workers = await client.read_workers_for_work_pool(pool, limit=PAGE)
        polling = sum(1 for worker in workers if is_polling(worker, now))
        if polling:
            return WorkerCensus(pools=pools, polled_pool=pool, polling_workers=polling)
    return WorkerCensus(pools=pools)
