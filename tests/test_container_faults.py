"""diagnose_run names what the Docker engine says ended a run's container: out of memory only when it OOM-killed it.

Real `ariel up` stacks on Docker pools, real containers, a real Prefect API.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import docker
import pytest
from fastmcp import Client
from prefect.client.orchestration import PrefectClient

from deployments.pools.standby import run_containers
from deployments.runs import wait_for_run
from tests.flows.support import Slow
from tests.mcp_server.callers import ask
from tests.support import ariel_up, http_service

pytestmark = pytest.mark.slow


async def make_agent(chat: Client[Any], name: str, **fields: Any) -> str:
    slug = name.lower().replace(" ", "-")
    await ask(chat, "create_agent", name=name, instructions="x", model="ariel/scripted", **fields)
    await ask(chat, "update_agent", agent=slug, action="approve")
    return slug


async def test_a_run_container_killed_at_its_memory_limit_is_diagnosed_out_of_memory(
    docker_engine: None, prefect_api: str, tmp_path: Path
) -> None:
    # 20 MB: the runtime's interpreter allocates past it while it imports the run's code (~44 MB at its peak in
    # the lean image), and the kernel kills it.
    with ariel_up(tmp_path, "docker", prefect_api, extra_env={"ARIEL_RUN_MEMORY_LIMIT": "20m"}) as up:
        async with Client(up.mcp_url) as chat:
            slug = await make_agent(chat, "Hungry", script=[{"reply": "never reached"}])
            run = await ask(chat, "run_agent", agent=slug, wait_seconds=240)
            diagnosis = await diagnose_soon(chat, run["id"])
    assert run["state"] == "Crashed", run
    assert diagnosis["cause"] == "out_of_memory", diagnosis
    assert "OOM-killed" in diagnosis["summary"] and "ARIEL_RUN_MEMORY_LIMIT" in diagnosis["next_action"]
    assert any("State.OOMKilled" in fact for fact in diagnosis["evidence"]), diagnosis["evidence"]


async def test_a_run_container_docker_killed_mid_step_is_diagnosed_killed_from_outside_not_oom(
    docker_engine: None, prefect_api: str, tmp_path: Path
) -> None:
    engine = docker.from_env()
    # Not retried (ARIEL_RUN_RETRIES=0): the crash itself is what is diagnosed here (tests/test_durable_runs.py
    # retries and resumes such a run).
    with http_service(Slow) as slow, ariel_up(tmp_path, "docker", prefect_api,
                                              extra_env={"ARIEL_RUN_RETRIES": "0"}) as up:
        async with Client(up.mcp_url) as chat:
            slug = await make_agent(chat, "Patient", tools=["http_request"], allowed_hosts=[slow],
                                    script=[{"tool": "http_request", "arguments": {"url": f"http://{slow}/"}},
                                            {"reply": "never reached"}])
            run = await ask(chat, "run_agent", agent=slug)
            container = await running_container(engine, run["id"])
            container.kill()  # what `docker kill` does: SIGKILL through the engine's API, exit code 137
            async with PrefectClient(prefect_api) as prefect:
                ended = await wait_for_run(prefect, run["id"], timeout=120)
            diagnosis = await diagnose_soon(chat, run["id"])
    engine.close()
    assert ended.state is not None and ended.state.type.value == "CRASHED", ended.state
    assert "137" in (ended.state.message or "")
    assert diagnosis["cause"] == "killed_outside", diagnosis
    assert "docker kill" in diagnosis["summary"] and "not by its memory limit" in diagnosis["summary"]
    assert "memory" not in diagnosis["next_action"]


async def running_container(engine: docker.DockerClient, run_id: str, timeout: float = 120) -> Any:
    """The run's container once the run is in its tool call (the Slow service takes 20 s to answer)."""
    for _ in range(int(timeout)):
        found = run_containers(engine, run_id)
        if found and b"calling tool http_request" in found[0].logs():
            return found[0]
        await asyncio.sleep(1)
    raise AssertionError(f"run {run_id} never reached its tool call in a container")


async def diagnose_soon(chat: Client[Any], run_id: str) -> dict[str, Any]:
    """diagnose_run once the worker host has written how the container ended (just after the run ended)."""
    for _ in range(20):
        diagnosis: dict[str, Any] = await ask(chat, "diagnose_run", run=run_id)
        if any(fact.startswith("Docker: ") for fact in diagnosis["evidence"]):
            return diagnosis
        await asyncio.sleep(1)
    return diagnosis
