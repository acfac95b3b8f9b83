"""`diagnose` names infrastructure causes from what was recorded, never from an exit code alone.

Runs are made through the real Prefect API and put in the states a worker leaves them in, with the line the
worker host writes on a run when its container ends (`deployments.pools.container_exits`);
tests/test_container_faults.py plays the same on real containers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import LogCreate, WorkPoolCreate
from prefect.states import Crashed, Running

from deployments.pools.container_exits import LOGGER_NAME, ContainerExit
from deployments.runs.diagnosis import diagnose, unavailable
from deployments.runs.hosting import Hosting
from deployments.runs.silent_runs import SILENT_MARK, STUCK_MARK

# Prefect's own words for a container that ended with 137, whoever killed it.
KILLED_137 = ("Flow run infrastructure exited with non-zero status code 137. Process was killed, likely due to an "
              "out-of-memory (OOM) condition.")


@flow(name="diagnosis-infrastructure")
def probe() -> None:
    """Never run: only its runs are made."""


@pytest.fixture
async def client(prefect_api: str) -> AsyncIterator[PrefectClient]:
    async with PrefectClient(prefect_api) as opened:
        yield opened


async def crashed(client: PrefectClient, message: str, ended: ContainerExit | None = None,
                  logger: str = LOGGER_NAME) -> dict[str, str]:
    run = await client.create_flow_run(probe)
    if ended is not None:
        await client.create_logs([LogCreate(name=logger, level=30, message=ended.line(),
                                            timestamp=datetime.now(UTC), flow_run_id=run.id)])
    await client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return (await diagnose(client, await client.read_flow_run(run.id))).model_dump()


async def test_exit_137_without_the_engines_word_is_not_called_out_of_memory(client: PrefectClient) -> None:
    found = await crashed(client, KILLED_137)
    assert found["cause"] == "container_exit", found
    assert "nothing recorded whether by its memory limit or from outside" in found["summary"]


async def test_exit_137_the_engine_called_oom_killed_is_out_of_memory(client: PrefectClient) -> None:
    found = await crashed(client, KILLED_137, ContainerExit("digest-run", 137, oom_killed=True))
    assert found["cause"] == "out_of_memory", found
    assert "OOM-killed" in found["summary"] and "ARIEL_RUN_MEMORY_LIMIT" in found["next_action"]


async def test_a_line_like_the_worker_hosts_written_under_another_logger_is_not_believed(
    client: PrefectClient,
) -> None:
    # A run may log any text under its own loggers: an imitation of the worker host's line proves nothing.
    found = await crashed(client, KILLED_137, ContainerExit("digest-run", 137, oom_killed=True), logger="ariel.agent")
    assert found["cause"] == "container_exit", found


async def test_exit_137_from_a_docker_kill_is_killed_from_outside(client: PrefectClient) -> None:
    found = await crashed(client, KILLED_137, ContainerExit("digest-run", 137, kill_signal="9"))
    assert found["cause"] == "killed_outside", found
    assert "signal 9 sent through the Docker API" in found["summary"] and "memory" not in found["next_action"]


async def test_a_container_that_stopped_on_a_setting_it_lacks_says_so_and_that_it_was_not_retried(
    client: PrefectClient,
) -> None:
    found = await crashed(client, "Flow run infrastructure exited with non-zero status code 78.",
                          ContainerExit("digest-run", 78))
    assert found["cause"] == "container_exit", found
    assert "stopped before the run began (exit code 78)" in found["summary"]
    assert "PREFECT_API_SSL_CERT_FILE" in found["summary"] and "does not retry it" in found["summary"]
    assert "the run cannot start in this container" in found["next_action"]


async def test_a_run_that_could_not_reach_prefect_is_diagnosed_prefect_unavailable(client: PrefectClient) -> None:
    found = await crashed(client, "Execution was interrupted by an unexpected exception: ConnectError: All "
                          "connection attempts failed")
    assert found["cause"] == "prefect_unavailable", found
    assert found["next_action"].startswith("`ariel up` is running, but its Prefect server is not answering")


@pytest.mark.parametrize("mark", [SILENT_MARK, STUCK_MARK])
async def test_a_run_the_control_plane_crashed_for_silence_or_for_never_starting_is_worker_lost(
    client: PrefectClient, mark: str,
) -> None:
    found = await crashed(client, f"{mark} for 130 s: the machine or container running it is gone")
    assert found["cause"] == "worker_lost", found
    assert "ARIEL_RUN_RETRIES" in found["next_action"] and "run_agent" in found["next_action"], found


async def test_a_running_run_whose_worker_is_gone_is_worker_lost_without_run_ariel_up(
    client: PrefectClient,
) -> None:
    pool = f"ariel-{uuid.uuid4().hex[:8]}-0f3c9a1b2c3d-process"
    await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    flow_id = await client.create_flow(probe)
    deployment = await client.create_deployment(flow_id, "lost", work_pool_name=pool)
    run = await client.create_flow_run_from_deployment(deployment)
    await client.update_flow_run_labels(run.id, {"prefect.worker.name": f"{pool}@gone-host"})
    await client.set_flow_run_state(run.id, Running(), force=True)
    lost = await client.read_flow_run(run.id)

    desktop = (await diagnose(client, lost)).model_dump()
    assert desktop["cause"] == "worker_lost", desktop
    assert f"Prefect no longer knows its worker {pool}@gone-host" in desktop["evidence"]
    assert desktop["next_action"].startswith("`ariel up` is running, but its worker is not answering")
    assert "run `ariel up`" not in desktop["next_action"]

    saas = (await diagnose(client, lost, hosting=Hosting("saas"))).model_dump()
    assert saas["next_action"].startswith("the platform's worker is not answering: tell your Ariel operator")
    assert "ariel up" not in saas["next_action"]


def test_a_prefect_api_that_does_not_answer_is_a_diagnosis_that_names_no_run() -> None:
    found = unavailable("digest-20260101-0800-ab12", ConnectionRefusedError(), Hosting("onprem")).model_dump()
    assert found["cause"] == "prefect_unavailable" and found["run_name"] == "" and found["error_logs"] == []
    assert "tell your Ariel operator" in found["next_action"]
