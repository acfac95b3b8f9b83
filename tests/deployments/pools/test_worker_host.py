"""One worker-host process serves every org's pool, including pools made after it started."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from functools import partial
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import anyio
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.objects import Worker
from prefect.settings import PREFECT_API_URL, temporary_settings
from starlette.requests import Request
from starlette.responses import Response

from deployments.pools.readiness import is_polling
from deployments.pools.work_pools import install_prefix
from deployments.pools.worker_host import HostedProcessWorker, RunSlots
from mcp_server.settings import ArielSettings
from mcp_server.store import Store
from tests import support
from tests.mcp_server.callers import call
from tests.support import Forward, http_service, prefect_proxy, reply_text_to_run, serve_app, wait_until


@contextmanager
def started_worker_host(
    prefect_api: str, prefix: str, folder: Path, background: bool = False, options: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """The worker host serving `prefix…` process pools, as `ariel up` starts it (or as a background job would
    be, SIGINT ignored); logging to `folder`/worker-host.log, stopped afterwards whatever happened."""
    env = {**support.test_env(folder), "PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PYTHONPATH": os.getcwd()}
    argv = [sys.executable, "-m", "deployments.pools.worker_host", "--type", "process", "--prefix", prefix, *options]
    with (folder / "worker-host.log").open("w") as out:
        process = subprocess.Popen(support.as_background_job(argv) if background else argv,
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        support.stop_process(process)


@pytest.fixture
def worker_host(prefect_api: str, tmp_path: Path) -> Iterator[None]:
    install = asyncio.run(install_id(tmp_path / "home"))
    with started_worker_host(prefect_api, install_prefix(install), tmp_path):
        yield


async def test_pools_of_new_orgs_are_served_and_deleted_ones_let_go(
    worker_host: None, prefect_api: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    async with PrefectClient(prefect_api) as prefect:  # another install's pool on the same Prefect server
        foreign = f"{install_prefix('f0' * 16)}{'0' * 12}-process"
        await prefect.create_work_pool(WorkPoolCreate(name=foreign, type="process"))
    with serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url:
        results = []
        for owner in ("dev:ann:north:owner", "dev:sam:south:owner"):  # two orgs, two pools, made now
            agent = await call(url, owner, "create_agent", name="Hi", instructions="x", model="ariel/scripted",
                               script=[{"reply": f"hi from {owner.split(':')[2]}"}])
            await call(url, owner, "update_agent", agent="hi", action="approve")
            run = await call(url, owner, "run_agent", agent="hi", wait_seconds=180)
            results.append((agent["work_pool"], run["state"], run["result"]))
        await call(url, "dev:sam:south:owner", "manage_org", action="delete_org", confirm=True)
        south_pool = results[1][0]
        wait_until(lambda: any(f"work pool {south_pool} is gone" in line for line in _read(tmp_path)), 30,
                   "the worker of the deleted pool to stop")
    assert results[0][0] != results[1][0]
    assert not any(foreign in line for line in _read(tmp_path)), "the host served another install's pool"
    assert [(state, result) for _, state, result in results] == [
        ("Completed", "hi from north"), ("Completed", "hi from south"),
    ]


async def test_a_pool_without_a_worker_is_kept_online_and_gets_one_for_each_run_due(
    prefect_api: str, tmp_path: Path
) -> None:
    # With no idle workers kept, as past the first few pools of a large install: what serves each pool between
    # its runs is the host's one query across pools and its own heartbeats.
    home = tmp_path / "home"
    install = await install_id(home)
    with started_worker_host(prefect_api, install_prefix(install), tmp_path, options=("--idle-workers", "0")), \
            serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url:
        owner = "dev:ann:north:owner"
        agent = await call(url, owner, "create_agent", name="Hi", instructions="x", model="ariel/scripted",
                           script=[{"reply": "hi"}])
        pool = agent["work_pool"]
        async with PrefectClient(prefect_api) as prefect:
            async def online() -> list[Worker]:
                workers = await prefect.read_workers_for_work_pool(pool)
                return [worker for worker in workers if is_polling(worker, datetime.now(UTC))]

            beaten = await wait_for(online, 30, "the host's heartbeat for a pool it runs no worker for")
            assert [worker.heartbeat_interval_seconds for worker in beaten] == [60]  # the host's, not a worker's
            assert not any(f"serving work pool {pool}" in line for line in _read(tmp_path))
            await call(url, owner, "update_agent", agent="hi", action="approve")
            first = await call(url, owner, "run_agent", agent="hi", wait_seconds=180)
            wait_until(lambda: any(f"work pool {pool} is idle" in line for line in _read(tmp_path)), 30,
                       "the worker to stop once its run has ended")
            second = await call(url, owner, "run_agent", agent="hi", wait_seconds=180)
            still = await online()
    assert [(first["state"], first["result"]), (second["state"], second["result"])] == [
        ("Completed", "hi"), ("Completed", "hi")]
    assert sum(f"serving work pool {pool}" in line for line in _read(tmp_path)) == 2  # one worker per run due
    assert len(still) == 1, "the pool's worker is one worker in Prefect, whoever sends its heartbeat"


async def test_on_an_install_too_large_to_list_often_a_new_orgs_first_run_is_found_before_the_next_listing(
    prefect_api: str,
) -> None:
    """Past a page of pools the host lists them every 10 s; a pool made meanwhile with a run due is added at once."""
    from datetime import timedelta

    from prefect import flow
    from prefect.client.schemas.actions import FlowRunCreate
    from prefect.states import Scheduled, to_state_create

    from deployments.pools.worker_host import LIST_SECONDS, LIST_SECONDS_MANY, PAGE, Pool, PoolHost

    @flow(name="discovery-probe")
    def probe() -> None: ...

    prefix = install_prefix(uuid.uuid4().hex)
    new, later, foreign, docker, newer = (
        f"{prefix}neworg-process", f"{prefix}laterorg-process", f"{install_prefix(uuid.uuid4().hex)}neworg-process",
        f"{prefix}neworg-docker", f"{prefix}newerorg-process")
    known = {f"{prefix}org{n}-process" for n in range(PAGE)}
    async with PrefectClient(prefect_api) as prefect:
        flow_id = await prefect.create_flow(probe)

        async def pool_with_a_run(pool: str, pool_type: str = "process", start_in: float = 0) -> None:
            await prefect.create_work_pool(WorkPoolCreate(name=pool, type=pool_type))
            when = datetime.now(UTC) + timedelta(seconds=start_in)
            await prefect._client.post("/flow_runs/", json=FlowRunCreate(
                flow_id=flow_id, name=f"probe-{pool[-20:]}", work_pool_name=pool, work_queue_name="default",
                state=to_state_create(Scheduled(scheduled_time=when))).model_dump(mode="json"))

        await pool_with_a_run(new)
        await pool_with_a_run(later, start_in=3600)
        await pool_with_a_run(foreign)
        await pool_with_a_run(docker, "docker")
        host = PoolHost(prefect, "process", prefix, exact=False, idle_workers=0, max_runs=2, query_seconds=1,
                        prefetch_seconds=10)
        host.pools = {pool: Pool(pool, False) for pool in known}
        assert host.rescan_seconds == LIST_SECONDS_MANY
        now = asyncio.get_running_loop().time()
        await host.discover(now)
        found = set(host.pools) - known
        await pool_with_a_run(newer)
        await host.discover(now + LIST_SECONDS / 2)  # asked only every LIST_SECONDS: no query meanwhile
        found_meanwhile = set(host.pools) - known - found
        await host.discover(now + LIST_SECONDS)
        found_next = set(host.pools) - known - found
        for pool in (new, later, foreign, docker, newer):
            await prefect.delete_work_pool(pool)
    # Not the one whose run is an hour away (the next listing brings it), nor another install's, nor one of the type
    # another worker host serves.
    assert found == {new}
    assert host.pools[new] == Pool(new, False)
    assert (found_meanwhile, found_next) == (set(), {newer})


class Holding(BaseHTTPRequestHandler):
    """Counts the requests it gets, and answers none until `release` is set."""

    seen: ClassVar[list[str]] = []
    release: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append(self.path)
        type(self).release.wait(timeout=300)
        reply_text_to_run(self, b"done")


async def test_a_run_past_max_runs_waits_scheduled_for_a_slot_and_starts_once_one_is_free(
    prefect_api: str, tmp_path: Path
) -> None:
    # One slot across the host's pools: ann's run holds it (the service answers it only when the test says), and
    # sam's, in another org's pool, waits for it.
    home = tmp_path / "home"
    install = await install_id(home)
    Holding.seen.clear()
    Holding.release.clear()
    sam = "dev:sam:south:owner"
    with http_service(Holding) as service, \
            started_worker_host(prefect_api, install_prefix(install), tmp_path, options=("--max-runs", "1")), \
            serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url:
        runs = {}
        for owner in ("dev:ann:north:owner", sam):
            await call(url, owner, "create_agent", name="Fetch", instructions="x", model="ariel/scripted",
                       tools=["http_request"], allowed_hosts=[service],
                       script=[{"tool": "http_request", "arguments": {"url": f"http://{service}/{owner[4:7]}"}},
                               {"reply": "{last_tool_result}"}])
            await call(url, owner, "update_agent", agent="fetch", action="approve")
            runs[owner] = (await call(url, owner, "run_agent", agent="fetch", wait_seconds=0))["id"]
            if not Holding.seen:
                wait_until(lambda: bool(Holding.seen), 120, "the first run to reach the service")
        async with PrefectClient(prefect_api) as prefect:
            async def state_of(owner: str) -> str | None:
                run = await prefect.read_flow_run(UUID(runs[owner]))
                return run.state.name if run.state else None

            # Short of the tool's 30 s timeout, after which ann's request would be made again.
            while_held = set()
            for _ in range(5):  # five of the worker's 1 s polls
                while_held.add(await state_of(sam))
                await asyncio.sleep(1)
            held = list(Holding.seen)
            released_at = datetime.now(UTC)
            Holding.release.set()
            results = []
            for owner, run_id in runs.items():
                ended = await wait_for_state(partial(state_of, owner), "Completed", 180)
                results.append((ended, (await call(url, owner, "get_run", run=run_id))["result"]))
            started = (await prefect.read_flow_run(UUID(runs[sam]))).start_time
    assert (while_held, held) == ({"Scheduled"}, ["/ann"])
    assert started is not None and started > released_at
    assert Holding.seen == ["/ann", "/sam"]
    assert results == [("Completed", '{"status": 200, "body": "done"}')] * 2


async def test_a_run_whose_deployment_prefect_fails_to_read_is_taken_again_and_the_runs_in_flight_go_on(
    prefect_api: str, tmp_path: Path
) -> None:
    """Prefect's worker lets any error but ObjectNotFound out of its read of a run's deployment, which ended the
    worker and every run it watched (a process pool's runs are its children). The worker host reaches Prefect
    through a proxy that answers that read with 500, twice, while another run of the pool is in flight."""
    home = tmp_path / "home"
    install = await install_id(home)
    Holding.seen.clear()
    Holding.release.clear()
    faults = [2]

    async def around(request: Request, forward: Forward) -> Response:
        if request.method == "GET" and request.url.path.startswith("/api/deployments/") and faults[0] > 0:
            faults[0] -= 1
            return Response('{"detail": "database is locked"}', 500, media_type="application/json")
        return await forward()  # type: ignore[no-any-return]  # a starlette Response

    owner = "dev:ann:north:owner"
    with http_service(Holding) as service, prefect_proxy(prefect_api, around) as proxied, \
            started_worker_host(proxied, install_prefix(install), tmp_path), \
            serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url:
        await call(url, owner, "create_agent", name="Fetch", instructions="x", model="ariel/scripted",
                   tools=["http_request"], allowed_hosts=[service],
                   script=[{"tool": "http_request", "arguments": {"url": f"http://{service}/a"}},
                           {"reply": "{last_tool_result}"}])
        await call(url, owner, "create_agent", name="Hi", instructions="x", model="ariel/scripted",
                   script=[{"reply": "hi"}])
        for agent in ("fetch", "hi"):
            await call(url, owner, "update_agent", agent=agent, action="approve")
        faults[0] = 0
        fetching = await call(url, owner, "run_agent", agent="fetch", wait_seconds=0)
        wait_until(lambda: bool(Holding.seen), 120, "the first run to reach the service")
        faults[0] = 2
        hi = await call(url, owner, "run_agent", agent="hi", wait_seconds=0)
        wait_until(lambda: faults[0] == 0, 60, "the worker to read the second run's deployment twice")
        Holding.release.set()

        async def final(run_id: str) -> dict[str, Any]:
            deadline = asyncio.get_running_loop().time() + 180
            ended = ("Completed", "Failed", "Crashed", "Cancelled")
            while (got := await call(url, owner, "get_run", run=run_id))["state"] not in ended:
                assert asyncio.get_running_loop().time() < deadline, f"run {run_id} still {got['state']}"
                await asyncio.sleep(1)
            return got  # type: ignore[no-any-return]  # a tool's JSON answer

        ended = [await final(run["id"]) for run in (fetching, hi)]
    log = _read(tmp_path)
    assert [(run["state"], run["result"]) for run in ended] == [
        ("Completed", '{"status": 200, "body": "done"}'), ("Completed", "hi")]
    assert sum(f"flow run {hi['id']} was not submitted (PrefectHTTPStatusError" in line for line in log) == 2
    assert not [line for line in log if line.startswith("worker of ")], "the pool's worker never stopped"


def _polls_of(polls: list[tuple[float, str]], prefix: str, since: float, until: float = math.inf) -> int:
    return sum(since <= at < until and prefix in path for at, path in polls)


async def test_past_the_warm_pools_a_worker_asks_for_its_pools_runs_only_when_the_host_finds_one_due(
    prefect_api: str, tmp_path: Path
) -> None:
    """A stock worker asks Prefect for its pool's runs every second, run or no run. Past the pools the host keeps
    warm (none here), a pool's worker asks only when the host's one query across pools finds a run due in it:
    while it lingers after a run, it asks nothing, and a run made then is still taken."""
    polls: list[tuple[float, str]] = []

    async def around(request: Request, forward: Forward) -> Response:
        if request.url.path.endswith("/get_scheduled_flow_runs"):
            polls.append((time.monotonic(), request.url.path))
        return await forward()  # type: ignore[no-any-return]  # a starlette Response

    async with _hi_agent(prefect_api, tmp_path, around, options=("--idle-workers", "0")) as (url, owner, prefix):
        first = await call(url, owner, "run_agent", agent="hi", wait_seconds=120)
        quiet_from = time.monotonic()
        await asyncio.sleep(6)  # within the worker's linger (10 s) after its run
        quiet_until = time.monotonic()
        lingering = not any(f"work pool {prefix}" in line and "is idle" in line for line in _read(tmp_path))
        second = await call(url, owner, "run_agent", agent="hi", wait_seconds=120)
    assert [(first["state"], first["result"]), (second["state"], second["result"])] == [("Completed", "hi")] * 2
    assert lingering, "the worker stopped before the quiet window ended: nothing was measured"
    assert _polls_of(polls, prefix, quiet_from, quiet_until) == 0
    assert _polls_of(polls, prefix, 0) <= 4  # about one for each run due (a stock worker: one a second)


async def test_a_pool_whose_concurrency_limit_holds_its_run_back_is_asked_again_only_every_few_seconds(
    prefect_api: str, tmp_path: Path
) -> None:
    """A run due that Prefect does not hand out (the pool's concurrency limit reached) keeps showing in the host's
    query: its pool's worker asks again at most every `REWAKE_SECONDS`, not every second, and the run starts once
    the limit lets it."""
    from deployments.pools.worker_host import REWAKE_SECONDS

    home = tmp_path / "home"
    prefix = install_prefix(await install_id(home))
    owner = "dev:ann:north:owner"
    polls: list[tuple[float, str]] = []
    Holding.seen.clear()
    Holding.release.clear()

    async def around(request: Request, forward: Forward) -> Response:
        if request.url.path.endswith("/get_scheduled_flow_runs"):
            polls.append((time.monotonic(), request.url.path))
        return await forward()  # type: ignore[no-any-return]  # a starlette Response

    with http_service(Holding) as service, prefect_proxy(prefect_api, around) as proxied, \
            started_worker_host(proxied, prefix, tmp_path, options=("--idle-workers", "0")), \
            serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url:
        agent = await call(url, owner, "create_agent", name="Fetch", instructions="x", model="ariel/scripted",
                           tools=["http_request"], allowed_hosts=[service],
                           script=[{"tool": "http_request", "arguments": {"url": f"http://{service}/a"}},
                                   {"reply": "{last_tool_result}"}])
        await call(url, owner, "update_agent", agent="fetch", action="approve")
        async with PrefectClient(prefect_api) as prefect:
            await prefect.update_work_pool(agent["work_pool"], WorkPoolUpdate(concurrency_limit=1))
            holding = await call(url, owner, "run_agent", agent="fetch", wait_seconds=0)
            wait_until(lambda: bool(Holding.seen), 120, "the first run to reach the service")
            waiting = await call(url, owner, "run_agent", agent="fetch", wait_seconds=0)
            window_from = time.monotonic()
            await asyncio.sleep(3 * REWAKE_SECONDS)
            window_until = time.monotonic()
            held_back = await _state_name(prefect, UUID(waiting["id"]))
            released_at = datetime.now(UTC)
            Holding.release.set()
            ended = [await wait_for_state(partial(_state_name, prefect, UUID(run["id"])), "Completed", 120)
                     for run in (holding, waiting)]
            started = (await prefect.read_flow_run(UUID(waiting["id"]))).start_time
    assert held_back in ("Scheduled", "Late")
    assert ended == ["Completed", "Completed"]
    assert started is not None and started > released_at
    # A stock worker: ~15 asks in the window. Woken for the new run, then again every REWAKE_SECONDS at most.
    assert _polls_of(polls, prefix, window_from, window_until) <= 5


async def test_a_retry_due_while_its_first_attempt_still_runs_is_taken_by_the_worker_the_host_wakes(
    prefect_api: str, tmp_path: Path
) -> None:
    """A run retried while its first attempt still runs (set Crashed for its silence, its process outliving it) is
    Scheduled again while that attempt holds a slot of the host: the host's query finds the retry due, and wakes
    the pool's worker for it, which takes it beside the first attempt."""
    from prefect.states import AwaitingRetry

    from deployments.runs.attempts import number_attempt

    home = tmp_path / "home"
    prefix = install_prefix(await install_id(home))
    owner = "dev:ann:north:owner"
    Holding.seen.clear()
    Holding.release.clear()
    with http_service(Holding) as service, \
            started_worker_host(prefect_api, prefix, tmp_path, options=("--idle-workers", "0")), \
            serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url:
        await call(url, owner, "create_agent", name="Fetch", instructions="x", model="ariel/scripted",
                   tools=["http_request"], allowed_hosts=[service],
                   script=[{"tool": "http_request", "arguments": {"url": f"http://{service}/a"}},
                           {"reply": "{last_tool_result}"}])
        await call(url, owner, "update_agent", agent="fetch", action="approve")
        run = await call(url, owner, "run_agent", agent="fetch", wait_seconds=0)
        run_id = UUID(run["id"])
        wait_until(lambda: bool(Holding.seen), 120, "the first attempt to reach the service")
        async with PrefectClient(prefect_api) as prefect:
            submitted = f"submitting flow run '{run_id}'"
            before = sum(submitted in line for line in _read(tmp_path))
            # As recovery retries a run: numbered first, then scheduled again, due now.
            await number_attempt(prefect, run_id, 2)
            await prefect.set_flow_run_state(run_id, AwaitingRetry(scheduled_time=datetime.now(UTC)), force=True)
            wait_until(lambda: sum(submitted in line for line in _read(tmp_path)) > before, 120,
                       "the host's worker to take the retry")
            log = _read(tmp_path)
            Holding.release.set()
            ended = await wait_for_state(partial(_state_name, prefect, run_id), "Completed", 120)
        result = (await call(url, owner, "get_run", run=run["id"]))["result"]
    # Taken while the first attempt still ran: it had not ended (its call still waited on the service).
    assert not [line for line in log if "ariel.run - Finished in state" in line], log
    # And the run ends with the call's answer, the first attempt's container or not.
    assert (ended, result) == ("Completed", '{"status": 200, "body": "done"}')


async def test_a_run_starts_while_prefect_is_still_to_take_its_worker_labels(prefect_api: str, tmp_path: Path) -> None:
    """Prefect's worker labels each run with its name before starting it; on SQLite that write is answered 503 at
    once whenever another write lands in between, and Prefect's client asks again after 2, 4, 8 s. The worker host
    reaches Prefect through a proxy that holds every such write until the run has completed."""
    release = threading.Event()
    held: list[str] = []

    async def around(request: Request, forward: Forward) -> Response:
        if request.method == "PATCH" and request.url.path.endswith("/labels"):
            held.append(request.url.path)
            while not release.is_set():
                await asyncio.sleep(0.2)
        return await forward()  # type: ignore[no-any-return]  # a starlette Response

    async with _hi_agent(prefect_api, tmp_path, around) as (url, owner, prefix):
        run = await call(url, owner, "run_agent", agent="hi", wait_seconds=0)
        async with PrefectClient(prefect_api) as prefect:
            async def state() -> str | None:
                return await _state_name(prefect, UUID(run["id"]))

            ended = await wait_for_state(state, "Completed", 120)
            labels_held = list(held)
            release.set()

            async def worker_named() -> str | None:
                named = (await prefect.read_flow_run(UUID(run["id"]))).labels.get("prefect.worker.name")
                return None if named is None else str(named)

            deadline = asyncio.get_running_loop().time() + 60
            while (worker := await worker_named()) is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.5)
    assert ended == "Completed"
    assert labels_held == [f"/api/flow_runs/{run['id']}/labels"]  # asked for, and not answered yet
    assert worker is not None and worker.startswith(prefix)  # the labels still land


async def test_a_run_whose_worker_labels_prefect_refuses_runs_all_the_same(prefect_api: str, tmp_path: Path) -> None:
    async def around(request: Request, forward: Forward) -> Response:
        if request.method == "PATCH" and request.url.path.endswith("/labels"):
            return Response('{"detail": "Internal Server Error"}', 500, media_type="application/json")
        return await forward()  # type: ignore[no-any-return]  # a starlette Response

    async with _hi_agent(prefect_api, tmp_path, around) as (url, owner, _prefix):
        run = await call(url, owner, "run_agent", agent="hi", wait_seconds=120)
        said = f"flow run {run['id']}: could not label it with its worker (PrefectHTTPStatusError"
        wait_until(lambda: sum(said in line for line in _read(tmp_path)) == 3, 60, "three attempts at the labels")
    assert (run["state"], run["result"]) == ("Completed", "hi")
    assert [line.endswith("; trying again") for line in _read(tmp_path) if said in line] == [True, True, False]


@asynccontextmanager
async def _hi_agent(prefect_api: str, tmp_path: Path, around: Callable[[Request, Forward], Awaitable[Response]],
                    options: tuple[str, ...] = ()) -> AsyncIterator[tuple[str, str, str]]:
    """A reply-only agent `hi`, approved, whose org's worker host (started with `options`) reaches Prefect through a
    proxy that hands each request to `around`; yields the app's URL, the agent's owner and the install's pool
    prefix."""
    home = tmp_path / "home"
    prefix = install_prefix(await install_id(home))
    owner = "dev:ann:north:owner"
    with prefect_proxy(prefect_api, around) as proxied, \
            started_worker_host(proxied, prefix, tmp_path, options=options), \
            serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url:
        await call(url, owner, "create_agent", name="Hi", instructions="x", model="ariel/scripted",
                   script=[{"reply": "hi"}])
        await call(url, owner, "update_agent", agent="hi", action="approve")
        yield url, owner, prefix


async def wait_for_state(read: Callable[[], Awaitable[str | None]], state: str, timeout: float) -> str | None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (now := await read()) != state and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(1)
    return now


async def wait_for(check: Callable[[], Awaitable[list[Worker]]], timeout: float, what: str) -> list[Worker]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
async def test_a_worker_host_started_with_sigint_ignored_stops_within_10_s_of_the_signal(
    sig: signal.Signals, prefect_api: str, tmp_path: Path
) -> None:
    prefix = install_prefix(uuid.uuid4().hex)
    pool = f"{prefix}{uuid.uuid4().hex[:12]}-process"
    async with PrefectClient(prefect_api) as prefect:
        await prefect.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    try:
        with started_worker_host(prefect_api, prefix, tmp_path, background=True) as process:
            wait_until(lambda: any(line.endswith("started!") and pool in line for line in _read(tmp_path)), 60,
                       f"a worker serving {pool}")
            stopped = support.stop_process(process, sig)
    finally:
        async with PrefectClient(prefect_api) as prefect:
            await prefect.delete_work_pool(pool)
    assert stopped.by is sig, _read(tmp_path)[-20:]  # within 10 s of it
    assert stopped.left == frozenset()
    assert process.returncode == 128 + sig


async def install_id(home: Path) -> str:
    home.mkdir()
    store = await Store.open(ArielSettings(home=home).resolved_store_url)
    try:
        return await store.installation_id()
    finally:
        await store.close()


def _read(tmp_path: Path) -> list[str]:
    return (tmp_path / "worker-host.log").read_text().splitlines()


@pytest.mark.parametrize(("served", "refusal"), [
    (["--pool", "ariel-9a8b7c6d-0f3c9a1b2c3d-own", "--prefix", "ariel-9a8b7c6d-"], "not allowed with argument"),
    (["--pool", "someone-elses-pool"], "--pool must be an Ariel pool's name"),
    (["--prefix", "ariel-"], "--prefix must be one install's"),
    ([], "one of the arguments --prefix --pool is required"),
])
def test_a_worker_host_serves_one_install_or_one_pool_and_says_so_when_asked_otherwise(
    served: list[str], refusal: str
) -> None:
    done = subprocess.run([sys.executable, "-m", "deployments.pools.worker_host", "--type", "docker", *served],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and refusal in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


async def test_run_slots_are_shared_by_workers_and_a_retried_run_may_hold_two() -> None:
    host = RunSlots.of(3)
    north, south = host.for_worker(), host.for_worker()
    run = uuid.uuid4()
    north.acquire_on_behalf_of_nowait(run)
    north.acquire_on_behalf_of_nowait(run)  # its retry, while the first attempt's container is still watched
    south.acquire_on_behalf_of_nowait(uuid.uuid4())
    with pytest.raises(anyio.WouldBlock):  # Prefect's worker leaves the run Scheduled on this
        south.acquire_on_behalf_of_nowait(uuid.uuid4())
    assert (north.borrowed_tokens, south.borrowed_tokens, host.available_tokens) == (2, 1, 0)
    north.release_on_behalf_of(run)
    north.release_all()  # a worker that died: what it held comes back
    with pytest.raises(RuntimeError):  # what Prefect's worker expects of a second release, and ignores
        north.release_on_behalf_of(run)
    assert (north.borrowed_tokens, host.available_tokens) == (0, 2)


async def test_a_retry_that_fails_to_start_gives_back_its_own_slot_not_its_earlier_attempts(prefect_api: str) -> None:
    """Prefect gives back the slot of a start that failed twice. A run crashed for silence and retried while its
    first attempt's container still runs holds two: the second give-back took the first attempt's, and the host
    ran one more than its cap. A real process worker whose command does not exist fails the start."""
    pool = f"{install_prefix(uuid.uuid4().hex)}{uuid.uuid4().hex[:12]}-process"
    async with PrefectClient(prefect_api) as prefect:
        await prefect.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment = await prefect.create_deployment(
            flow_id=await prefect.create_flow_from_name("slots-probe"), name="probe", work_pool_name=pool,
            job_variables={"command": "/nonexistent/ariel-no-such-program"})
        run = await prefect.create_flow_run_from_deployment(deployment)
        worker = HostedProcessWorker(work_pool_name=pool, create_pool_if_not_found=False)
        worker.slots = RunSlots.of(2).for_worker()
        try:
            with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
                async with worker:
                    await worker.sync_with_backend()
                    worker.slots.acquire_on_behalf_of_nowait(run.id)  # the first attempt's, its container running
                    worker.slots.acquire_on_behalf_of_nowait(run.id)  # the retry's, as Prefect takes it
                    worker._submitting_flow_run_ids.add(run.id)
                    await worker._submit_run(run)
                    state = await wait_for_state(
                        lambda: _state_name(prefect, run.id), "Crashed", 30)  # the start failed, and said so
                    await asyncio.sleep(0.5)  # the submission's own give-back, after it proposed Crashed
                    held = worker.slots.holds(run.id)
        finally:
            await prefect.delete_work_pool(pool)
    assert state == "Crashed"
    assert held == 1, "the first attempt's slot is still held"


async def _state_name(prefect: PrefectClient, run_id: UUID) -> str | None:
    run = await prefect.read_flow_run(run_id)
    return run.state.name if run.state else None


async def test_a_run_container_no_worker_watches_holds_a_slot_until_it_ends(
    prefect_api: str, engine: Any,
) -> None:
    """A worker, or the host before a restart, that died while its runs ran gave their slots back with it: each such
    container holds one again until it ends, or the machine would take up to max_runs more runs beside them. By
    container: a run retried while its first attempt's container still ran has two."""
    from deployments.pools.standby import POOL_LABEL, RUN_LABEL, STANDBY_LABEL
    from deployments.pools.worker_host import ORPHAN_SECONDS, PoolHost
    from tests.deployments.pools.conftest import BASE_IMAGE, TEST_LABEL

    prefix = f"ariel-{uuid.uuid4().hex[:8]}-"
    left, others = uuid.uuid4(), uuid.uuid4()

    def container(pool: str, **labels: str) -> Any:
        labels = {"ariel.role": "flow-run", POOL_LABEL: pool, TEST_LABEL[0]: TEST_LABEL[1], **labels}
        return engine.containers.run(BASE_IMAGE, ["sleep", "300"], labels=labels, detach=True, auto_remove=True)

    first, retry = (container(f"{prefix}acme-docker", **{RUN_LABEL: str(left)}) for _ in range(2))
    container(f"{prefix}acme-docker", **{STANDBY_LABEL: "yes"})  # a standby waiting for a run: no run's yet
    # An org's own hardware's worker on the same engine: its runs are its worker's, not this host's.
    container(f"{prefix}0f3c9a1b2c3d-own", **{RUN_LABEL: str(others)})
    async with PrefectClient(prefect_api) as prefect:
        host = PoolHost(prefect, "docker", prefix, exact=False, idle_workers=0, max_runs=3, query_seconds=1,
                        prefetch_seconds=10)
        free = []
        for count, gone in enumerate((None, None, first, retry)):
            if gone is not None:
                gone.remove(force=True)
            await host.hold_for_orphans(count * ORPHAN_SECONDS)
            free.append(host.slots.available_tokens)

    # Seen once: it may be a run that just ended. Then one slot a container, each given back as its container ends.
    assert free == [3, 1, 2, 3]
