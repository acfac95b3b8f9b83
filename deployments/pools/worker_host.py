"""One process serving every Ariel work pool of one type: stock Prefect workers side by side.

Each org has its own pool; a worker process per pool would cost ~150 MB each.
Instead this process watches Prefect for its install's pools of its type
(`ariel-<install>-*`; other installs may share the Prefect server) and runs
one worker object per pool in one event loop (`ProcessWorker`, or for Docker
`standby.StandbyDockerWorker`: the stock `DockerWorker` handing each run to a
container started and imported before it), starting workers for new pools and stopping those whose pool was
deleted. The workers never create pools: the control plane does, from the
hardened template. Beside Docker workers it follows the engine's events and
writes on each run how its container ended (`container_exits`): the stock
worker reports an exit code only, which cannot tell out-of-memory from a kill.

Run: `python -m deployments.pools.worker_host --type docker --prefix ariel-9a8b7c6d-` (with PREFECT_API_URL set).
SIGINT or SIGTERM stops it within `STOP_SECONDS`, whatever it inherited for them (a background job has SIGINT
ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
import socket
import threading
from typing import Literal

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterType
from prefect.workers.base import BaseWorker
from prefect.workers.process import ProcessWorker

from deployments.pools import container_exits
from deployments.pools.standby import StandbyDockerWorker, remove_standbys
from deployments.pools.work_pools import POOL_PREFIX, PoolType

WORKERS: dict[PoolType, type[BaseWorker]] = {  # type: ignore[type-arg]
    "docker": StandbyDockerWorker, "process": ProcessWorker,
}


PAGE = 200  # the most the Prefect API returns per request
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After a stop signal the workers get this long to let go of their pools; then the process exits regardless
# (a worker's last API calls retry for longer than that when the Prefect server is stopping too). Under
# `ariel up`'s 5 s grace, so that it ends on its own rather than by SIGKILL.
STOP_SECONDS = 4.0


async def ariel_pools(pool_type: PoolType, prefix: str) -> set[str]:
    """Names of the pools of `pool_type` whose name starts with `prefix`, however many there are."""
    names: set[str] = set()
    pool_filter = WorkPoolFilter(type=WorkPoolFilterType(any_=[pool_type]))
    async with get_client() as client:
        for offset in itertools.count(0, PAGE):
            page = await client.read_work_pools(limit=PAGE, offset=offset, work_pool_filter=pool_filter)
            names |= {pool.name for pool in page if pool.name.startswith(prefix)}
            if len(page) < PAGE:
                return names
    raise AssertionError("unreachable")


async def serve_pool(worker: BaseWorker, pool: str) -> None:  # type: ignore[type-arg]
    await worker.start(printer=lambda message: print(f"[{pool}] {message}", flush=True))


async def serve(pool_type: PoolType, prefix: str, rescan_seconds: float = 2.0, *, exact: bool = False) -> None:
    """Serve every pool of the type named `prefix…` until cancelled; new ones are picked up within `rescan_seconds`.

    `exact`: serve the pool named `prefix` alone, without listing pools (an org's own hardware, whose worker key
    reads its one pool and no other).
    """
    host = socket.gethostname()
    running: dict[str, tuple[asyncio.Task[None], BaseWorker]] = {}  # type: ignore[type-arg]
    retry_at: dict[str, float] = {}  # a worker that died waits before its next start
    loop = asyncio.get_running_loop()
    exits = asyncio.create_task(container_exits.watch(prefix)) if pool_type == "docker" else None
    if pool_type == "docker":  # a worker host that was killed left its standbys waiting for a run
        await asyncio.to_thread(_remove_standbys, prefix)
    try:
        while True:
            try:
                pools = {prefix} if exact else await ariel_pools(pool_type, prefix)
            except Exception as exc:  # the API restarting must not stop the workers already running
                print(f"could not list work pools ({type(exc).__name__}); retrying", flush=True)
                pools = set(running)
            for pool in sorted(pools - running.keys()):
                if retry_at.get(pool, 0) > loop.time():
                    continue
                print(f"serving work pool {pool}", flush=True)
                worker = WORKERS[pool_type](work_pool_name=pool, name=f"{pool}@{host}", create_pool_if_not_found=False)
                running[pool] = (asyncio.create_task(serve_pool(worker, pool), name=pool), worker)
            for pool in sorted(running.keys() - pools):
                print(f"work pool {pool} is gone; stopping its worker", flush=True)
                running.pop(pool)[0].cancel()
            for pool, (task, _) in list(running.items()):
                if task.done():  # a worker that died is started again on the next pass
                    running.pop(pool)
                    error = None if task.cancelled() else task.exception()
                    print(f"worker of {pool} stopped ({type(error).__name__}: {error}); restarting in 30 s", flush=True)
                    retry_at[pool] = loop.time() + 30
            for pool, (_, worker) in running.items():
                if isinstance(worker, StandbyDockerWorker):
                    try:
                        await asyncio.to_thread(worker.retire_idle)
                    except Exception as exc:  # the engine gone, say: the standby is retired on a later pass
                        print(f"could not retire the idle standby of {pool} ({type(exc).__name__})", flush=True)
            await asyncio.sleep(rescan_seconds)
    finally:
        tasks = [*(task for task, _ in running.values()), *([exits] if exits else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if pool_type == "docker":  # what a worker's own teardown did not get to
            await asyncio.to_thread(_remove_standbys, prefix)


def _remove_standbys(prefix: str) -> None:
    try:
        if removed := remove_standbys(prefix):
            print(f"removed {removed} standby container(s) no run was handed", flush=True)
    except Exception as exc:  # no engine now: the workers' cold path starts containers as before
        print(f"could not look for standby containers ({type(exc).__name__})", flush=True)


async def serve_until_signalled(pool_type: PoolType, prefix: str, *, exact: bool = False) -> int:
    """`serve` until SIGINT or SIGTERM, whatever this process inherited for them; returns 128 + the signal.

    A background job of a non-interactive shell starts with SIGINT ignored, so Python's KeyboardInterrupt
    cannot be relied on; and SIGTERM's default would end the process without stopping its workers.
    """
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    assert serving is not None  # called as asyncio.run's main coroutine
    received: list[int] = []

    def stop(sig: signal.Signals) -> None:
        if not received:
            print(f"{sig.name}: stopping the workers", flush=True)
            _exit_after(STOP_SECONDS, 128 + sig)
        received.append(sig)
        serving.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        await serve(pool_type, prefix, exact=exact)
    except asyncio.CancelledError:
        if not received:
            raise
    return 128 + received[0]


def _exit_after(seconds: float, status: int) -> None:
    """Exit with `status` in `seconds` however far the orderly stop has got: a bound no worker can hang past."""
    timer = threading.Timer(seconds, os._exit, [status])
    timer.daemon = True  # so that it does not itself hold up an exit that comes sooner
    timer.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--type", choices=sorted(WORKERS), required=True, help="the pool type to serve")
    served = parser.add_mutually_exclusive_group(required=True)
    served.add_argument("--prefix", help="serve the pools whose name starts with this (an install's)")
    served.add_argument("--pool", help="serve this one pool (an org's own hardware: `ariel worker` passes it)")
    args = parser.parse_args()
    if args.prefix is not None and not re.fullmatch(rf"{POOL_PREFIX}[0-9a-f]{{8}}-", args.prefix):
        # A shorter prefix would serve other installs' pools too.
        parser.error(f"--prefix must be one install's, like '{POOL_PREFIX}9a8b7c6d-' (`ariel up` passes it)")
    if args.pool is not None and not re.fullmatch(rf"{POOL_PREFIX}[0-9a-f]{{8}}-[-a-z0-9]+", args.pool):
        parser.error(f"--pool must be an Ariel pool's name, like '{POOL_PREFIX}9a8b7c6d-1f2e3d4c5b6a-own'")
    pool_type: Literal["docker", "process"] = args.type
    exact = args.pool is not None
    raise SystemExit(asyncio.run(serve_until_signalled(pool_type, args.pool if exact else args.prefix, exact=exact)))


if __name__ == "__main__":
    main()
