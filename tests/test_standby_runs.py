"""A Docker run goes to a container started and imported before it; one that died or is stale is replaced.

A real `ariel up` on Docker, whose pool host keeps a standby container per pool and image, and one for each
run scheduled soon (`deployments.pools.standby`). Its runtime images (the full one and its lean twin) are tags
of this module's own, so that a test can rebuild one (a new image id, as after `ariel build-image`) without
touching the images the other tests run. What the pool host did is read from its
log and from the engine: which container took a run, which it removed.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import uuid
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import certifi
import docker
import pytest
from docker.errors import ImageNotFound, NotFound
from fastmcp import Client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.states import Scheduled

from deployments.pools.run_images import lean_image_of
from deployments.pools.standby import POOL_LABEL, STANDBY_CPU_SHARES, waiting_standbys
from deployments.runs import wait_for_run
from tests.mcp_server.callers import ask
from tests.support import ArielUp, ariel_up, child_pid, standby_handoffs, wait_until

pytestmark = pytest.mark.slow

# Of this test process only: the tests below rebuild and remove them, which must not reach another worker's stack.
IMAGE = f"ariel-runtime:standby-test-{uuid.uuid4().hex[:12]}"
LEAN = lean_image_of(IMAGE) or ""
BURST = 4
BURST_LEAD_SECONDS = 50  # time enough to start standbys on a loaded CI machine, before the worker takes the runs


@pytest.fixture(scope="module")
def image(docker_engine: None) -> Iterator[str]:
    engine = docker.from_env()
    engine.images.get("ariel-runtime:local").tag(IMAGE)
    engine.images.get("ariel-runtime-lean:local").tag(LEAN)
    yield IMAGE
    for name in (IMAGE, LEAN):
        with suppress(ImageNotFound, docker.errors.APIError):  # a container of it still being removed: left dangling
            engine.images.remove(name)
    engine.close()


@pytest.fixture(scope="module")
def stack(image: str, prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArielUp]:
    # A CA file for the pool host's own Prefect client, as an operator may set: Prefect's worker hands its runs every
    # setting it has, this path among them, which names nothing in a run's container.
    ca_file = tmp_path_factory.mktemp("pool-host-ca") / "company-ca.pem"
    shutil.copy(certifi.where(), ca_file)
    with ariel_up(tmp_path_factory.mktemp("home-standby"), "docker", prefect_api,
                  extra_env={"ARIEL_RUNTIME_IMAGE": image, "PREFECT_API_SSL_CERT_FILE": str(ca_file)}) as up:
        pool = re.search(r"Work pool: (\S+)", up.printed())
        assert pool is not None, up.printed()
        yield up
    # Stopped, the pool host leaves no standby behind. A run's container is the engine's (a run in flight goes on
    # without `ariel up`): the last run's ends on its own, moments after its final state.
    engine = docker.from_env()
    try:
        assert not waiting_standbys(engine, pool.group(1), running_only=False)
        wait_until(lambda: not engine.containers.list(all=True, filters={"label": f"{POOL_LABEL}={pool.group(1)}"},
                                                            ignore_removed=True),
                   30, "the last run's container to end and be removed")
    finally:
        engine.close()


@pytest.fixture(scope="module")
def engine(docker_engine: None) -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def waiting_standby(engine: docker.DockerClient, pool: str, other_than: str = "", image: str = LEAN) -> Any:
    """The pool's standby of `image` (the lean one, which the reply-only runs below take)."""
    found = wait_until(lambda: [c for c in waiting_standbys(engine, pool)
                                if c.id != other_than and c.attrs["Config"]["Image"] == image], 120,
                       f"a standby container of {pool} in {image}")
    assert len(found) == 1, [c.name for c in found]  # one per pool and image, not one per pass
    return found[0]


def pool_host_log(up: ArielUp) -> str:
    return (up.home / "logs" / "worker.log").read_text()


async def probe(chat: Client[Any], name: str) -> dict[str, Any]:
    slug = name.lower().replace(" ", "-")
    await ask(chat, "create_agent", name=name, instructions="Reply.", model="ariel/scripted",
              script=[{"reply": f"{name} done"}])
    await ask(chat, "update_agent", agent=slug, action="approve")
    return dict(await ask(chat, "get_agent", agent=slug))


async def run_to_the_end(chat: Client[Any], slug: str) -> dict[str, Any]:
    run = dict(await ask(chat, "run_agent", agent=slug, wait_seconds=180))
    assert run["state"] == "Completed", run
    return run


async def test_a_run_goes_to_the_standby_that_waited_for_it_and_the_next_standby_starts(
    stack: ArielUp, engine: docker.DockerClient, prefect_api: str
) -> None:
    async with Client(stack.mcp_url) as chat:
        agent = await probe(chat, "Warm")
        waited = waiting_standby(engine, agent["work_pool"])
        # Waiting, it has the least CPU weight: on a busy machine, runs under way go before its imports.
        assert waited.attrs["HostConfig"]["CpuShares"] == STANDBY_CPU_SHARES
        since = datetime.now(UTC) - timedelta(seconds=1)
        run = await run_to_the_end(chat, "warm")
        assert run["result"] == "Warm done", run
    assert f"Standby container {waited.name!r} took the run" in pool_host_log(stack)
    # Before its run it was given a run's weight (the engine's `update` of it: the container is gone by now).
    updates = list(engine.events(since=since, until=datetime.now(UTC) + timedelta(seconds=1), decode=True,
                                 filters={"container": waited.id, "event": "update"}))
    assert len(updates) == 1, updates
    waiting_standby(engine, agent["work_pool"], other_than=waited.id)
    wait_until(lambda: not _exists(engine, waited.id), 30, "the run's container to go")  # used once
    # Task runs' states reach Prefect as events, sent as the container exits: none may be lost on the way out.
    async with PrefectClient(prefect_api) as prefect:
        only_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run["id"])]))
        for _ in range(60):
            tasks = await prefect.read_task_runs(flow_run_filter=only_this_run)
            if tasks and all(task.state_type == StateType.COMPLETED for task in tasks):
                break
            await asyncio.sleep(0.5)
    assert tasks and all(task.state_type == StateType.COMPLETED for task in tasks), [
        (task.name, task.state_type) for task in tasks]


async def test_a_standby_that_died_is_replaced_by_a_container_started_for_the_run_and_no_run_is_lost(
    stack: ArielUp, engine: docker.DockerClient
) -> None:
    async with Client(stack.mcp_url) as chat:
        agent = await probe(chat, "Cold")
        killed = waiting_standby(engine, agent["work_pool"])
        killed.kill()
        # That one only: the pool may keep a standby of the full image too (a stdio run's, from another test).
        wait_until(lambda: killed.id not in {c.id for c in waiting_standbys(engine, agent["work_pool"])}, 30,
                   "the killed standby to go")
        before = pool_host_log(stack).count("No standby container fits; starting one for this run")
        run = await run_to_the_end(chat, "cold")
    assert run["result"] == "Cold done", run
    assert pool_host_log(stack).count("No standby container fits; starting one for this run") == before + 1
    waiting_standby(engine, agent["work_pool"])  # and the pool has a standby again


async def test_a_standby_of_an_older_image_is_removed_unused_and_the_run_takes_the_new_image(
    stack: ArielUp, engine: docker.DockerClient, image: str
) -> None:
    async with Client(stack.mcp_url) as chat:
        agent = await probe(chat, "Rebuilt")
        old = waiting_standby(engine, agent["work_pool"])
        # What `ariel build-image` does after a code change: the same tag names a new image.
        new, _ = engine.images.build(fileobj=io.BytesIO(f"FROM {LEAN}\nLABEL ariel.test=rebuilt\n".encode()),
                                     tag=LEAN, rm=True)
        assert new.id != old.image.id
        run = await run_to_the_end(chat, "rebuilt")
    assert run["result"] == "Rebuilt done", run
    assert f"Standby container {old.name!r} is stale; removing it" in pool_host_log(stack)
    assert not _exists(engine, old.id)
    assert waiting_standby(engine, agent["work_pool"]).image.id == new.id


async def test_a_run_no_chat_announced_is_fetched_by_the_workers_polling(
    stack: ArielUp, engine: docker.DockerClient, prefect_api: str
) -> None:
    # Made straight in Prefect, as a schedule or another app process would: nothing wakes the held poll.
    async with Client(stack.mcp_url) as chat:
        agent = await probe(chat, "Polled")
        async with PrefectClient(prefect_api) as prefect:
            deployment = await prefect.read_deployment_by_name(agent["deployment"])
            made = await prefect.create_flow_run_from_deployment(deployment.id)
            ended = await wait_for_run(prefect, made.id, timeout=180)
        assert ended.state is not None and ended.state.type.value == "COMPLETED", ended.state
        seen = await ask(chat, "get_run", run=str(made.id))
    assert seen["state"] == "Completed" and seen["result"] == "Polled done", seen
    assert UUID(seen["id"]) == made.id


async def test_runs_scheduled_together_each_find_a_standby_started_for_them_and_the_surplus_goes_after(
    stack: ArielUp, engine: docker.DockerClient, prefect_api: str
) -> None:
    # What a schedule does to a desktop with several per-minute agents: runs fall due in the same second.
    async with Client(stack.mcp_url) as chat:
        agent = await probe(chat, "Burst")
        first = waiting_standby(engine, agent["work_pool"])
        async with PrefectClient(prefect_api) as prefect:
            deployment = await prefect.read_deployment_by_name(agent["deployment"])
            due = datetime.now(UTC) + timedelta(seconds=BURST_LEAD_SECONDS)
            made = [await prefect.create_flow_run_from_deployment(deployment.id, state=Scheduled(scheduled_time=due))
                    for _ in range(BURST)]
            # Before they are due, the pool keeps a standby for each: the one it had and the others.
            ready = wait_until(lambda: (found := lean_standbys(engine, agent["work_pool"]))[BURST - 1:] and found,
                               BURST_LEAD_SECONDS - 15, f"{BURST} standbys before the runs are due")
            assert first.id in {standby.id for standby in ready}
            # Two are deleted before their time (their agent's schedule changed, say): their standbys are surplus.
            for run in made[2:]:
                await prefect.delete_flow_run(run.id)
            ended = [await wait_for_run(prefect, run.id, timeout=180) for run in made[:2]]
    assert [run.state.type.value if run.state else None for run in ended] == ["COMPLETED"] * 2, [
        (run.state.name, run.state.message) if run.state else None for run in ended]
    handed = standby_handoffs(pool_host_log(stack))
    assert {handed.get(standby.name) for standby in ready} >= {str(run.id) for run in made[:2]}, handed
    # Two standbys are left and no run is coming: the surplus one goes once it has waited its time.
    wait_until(lambda: len(lean_standbys(engine, agent["work_pool"])) == 1, 150, "the surplus standby to go")


def lean_standbys(engine: docker.DockerClient, pool: str) -> list[Any]:
    return [c for c in waiting_standbys(engine, pool) if c.attrs["Config"]["Image"] == LEAN]


async def test_a_pool_host_killed_has_the_standbys_it_left_removed_when_it_is_started_again(
    stack: ArielUp, engine: docker.DockerClient
) -> None:
    async with Client(stack.mcp_url) as chat:
        agent = await probe(chat, "Orphaned")
        orphan = waiting_standby(engine, agent["work_pool"])
        pid = child_pid(stack, "worker")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # no teardown: its standby is left waiting for a run
        wait_until(lambda: child_pid(stack, "worker") not in (None, pid), 60, "the pool host to be started again")
        wait_until(lambda: not _exists(engine, orphan.id), 60, "the orphaned standby to be removed")
        waiting_standby(engine, agent["work_pool"], other_than=orphan.id)
        run = await run_to_the_end(chat, "orphaned")
    assert run["result"] == "Orphaned done", run


def _exists(engine: docker.DockerClient, container_id: str) -> bool:
    try:
        engine.containers.get(container_id)
    except NotFound:
        return False
    return True


async def test_a_reply_only_run_takes_the_lean_image_and_a_run_with_a_stdio_server_the_full_one(
    stack: ArielUp, engine: docker.DockerClient, image: str
) -> None:
    async with Client(stack.mcp_url) as chat:
        agent = await probe(chat, "Lean")
        lean_run = await run_to_the_end(chat, "lean")
        assert lean_run["result"] == "Lean done", lean_run
        await ask(chat, "manage_tools", action="add", name="everything", transport="stdio", catalog="everything",
                  scope="org")
        await ask(chat, "create_agent", name="Full", instructions="Echo.", model="ariel/scripted",
                  mcp_tools=[{"server": "everything", "tools": ["echo"]}],
                  script=[{"tool": "everything__echo", "arguments": {"message": "from the full image"}},
                          {"reply": "Said: {last_tool_result}"}])
        await ask(chat, "update_agent", agent="full", action="approve")
        full_run = await run_to_the_end(chat, "full")
    assert "Echo: from the full image" in full_run["result"], full_run
    took = {run_id: found for run_id, found in
            re.findall(r"(?:took the run as|Docker container) '\S+-([0-9a-f-]{36})-[0-9a-f]{6}'.*?\(image (\S+)\)",
                       pool_host_log(stack))}
    assert (took[lean_run["id"]], took[full_run["id"]]) == (LEAN, image), took
    # The pool now keeps a standby of each image, and the next stdio run finds its own waiting.
    waiting_standby(engine, agent["work_pool"], image=image)
    waiting_standby(engine, agent["work_pool"], image=LEAN)
