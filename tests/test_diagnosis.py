"""diagnose_run names the cause of runs that really went wrong on a real worker, with the evidence and what to do.

A run whose configuration was changed in Prefect is refused as `tampered`
(tests/deployments/runs/test_diagnosis.py has each of its messages). Runs that
cannot start (no worker, paused pool, full pool, an unapproved manifest waiting)
and cancelled runs are in tests/mcp_server/tools/test_agent_lifecycle.py; a failing
LLM call is in tests/test_conversation.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from deployments.runs import wait_for_run
from tests.flows.support import Counting, Slow
from tests.mcp_server.callers import ask
from tests.support import ArielUp, ariel_up, free_port, http_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArielUp]:
    with ariel_up(tmp_path_factory.mktemp("diagnosis"), "process", prefect_api) as up:
        yield up


def fetch(host: str) -> dict[str, Any]:
    return {"tool": "http_request", "arguments": {"url": f"http://{host}/"}}


async def test_failed_runs_are_diagnosed_with_their_cause_step_and_next_action(
    stack: ArielUp, service_host: str, prefect_api: str
) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # a port nothing listens on
    with http_service(Slow) as slow:  # answers after 20 s: past any budget below
        agents: dict[str, dict[str, Any]] = {
            "step_limit": {"tools": ["http_request"], "allowed_hosts": [service_host], "limits": {"max_steps": 1},
                           "script": [fetch(service_host), {"reply": "never reached"}]},
            "time_budget": {"tools": ["http_request"], "allowed_hosts": [slow], "limits": {"timeout_seconds": 15},
                            "script": [fetch(slow), {"reply": "never reached"}]},
            "missing_secret": {"model": "openai/gpt-4o-mini", "provider": "doomed-provider", "script": None},
            "tool_failed_but_went_on": {"tools": ["http_request"], "allowed_hosts": [nobody],
                                        "limits": {"tool_retries": 0},
                                        "script": [fetch(nobody), {"reply": "the service is down"}]},
        }
        async with Client(stack.mcp_url) as chat:
            await ask(chat, "manage_secrets", action="set_provider", name="doomed-provider", api_key="sk-doomed-1")
            for name, fields in agents.items():
                spec = {"name": name, "instructions": "x", "model": "ariel/scripted", **fields}
                await ask(chat, "create_agent", **{k: v for k, v in spec.items() if v is not None})
                await ask(chat, "update_agent", agent=name.replace("_", "-"), action="approve")
            # The provider goes after the agent that names it was approved: its key is missing at run time.
            with pytest.raises(ToolError, match="'doomed-provider' is named by missing-secret: their runs fail"):
                await ask(chat, "manage_secrets", action="delete_provider", name="doomed-provider")
            await ask(chat, "manage_secrets", action="delete_provider", name="doomed-provider", confirm=True)
            runs = await asyncio.gather(*(
                ask(chat, "run_agent", agent=name.replace("_", "-"), wait_seconds=240) for name in agents))
            found = {
                name: await ask(chat, "diagnose_run", run=run["name"]) for name, run in zip(agents, runs, strict=True)
            }

    assert [run["state"] for run in runs] == ["Failed", "Failed", "Failed", "Completed"], runs

    assert found["step_limit"]["cause"] == "step_limit"
    assert "max_steps" in found["step_limit"]["next_action"]

    timed_out = found["time_budget"]
    assert timed_out["cause"] == "time_budget" and "timeout_seconds" in timed_out["next_action"]
    # The step the budget ran out in: the slow tool call, or on a loaded machine the first LLM call, or none when
    # the run's start alone (its imports, its key) took the whole budget.
    if timed_out["failed_step"] is not None:
        assert timed_out["failed_step"]["step"] in ("http_request · step 1", "llm · step 1"), timed_out["evidence"]

    missing = found["missing_secret"]
    assert missing["cause"] == "missing_secret", missing
    assert "provider 'doomed-provider' does not exist" in missing["summary"], missing
    # Before any step: the run fetches its key first, and there is none.
    assert missing["failed_step"] is None and "set_provider" in missing["next_action"]

    went_on = found["tool_failed_but_went_on"]
    assert went_on["cause"] == "completed" and went_on["failed_step"]["kind"] == "tool"
    assert "ConnectError" in went_on["failed_step"]["error"], went_on
    for diagnosis in found.values():
        assert diagnosis["evidence"][0].startswith("state: ")

    # The Prefect UI shows the same cause beside each failed run's name (a tag) and writes it up as an artifact.
    async with PrefectClient(prefect_api) as prefect:
        # The failed ones first: once they are written up, the control plane has passed over the completed one too.
        by_name = dict(zip(agents, runs, strict=True))
        marked = {name: await _failure_written(prefect, by_name[name]["id"], expected=True)
                  for name in ("step_limit", "time_budget", "missing_secret")}
        marked["tool_failed_but_went_on"] = await _failure_written(
            prefect, by_name["tool_failed_but_went_on"]["id"], expected=False)
    for name in ("step_limit", "time_budget", "missing_secret"):
        tags, artifacts = marked[name]
        assert f"failed:{found[name]['cause']}" in tags, tags
        [artifact] = artifacts
        assert artifact.key == f"failure-personal-{name.replace('_', '-')}" and artifact.type == "markdown"
        assert found[name]["cause"] in str(artifact.data) and "What to do" in str(artifact.data)
        assert "sk-doomed-1" not in str(artifact.data)
    tags, artifacts = marked["tool_failed_but_went_on"]  # completed: nothing to write up
    assert not [tag for tag in tags if tag.startswith("failed:")] and artifacts == []


async def _failure_written(prefect: PrefectClient, run_id: str, expected: bool) -> tuple[list[str], list[Any]]:
    """The run's tags and `failure` artifacts: once the control plane wrote them, or at once when not expected."""
    from uuid import UUID

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    for _ in range(120 if expected else 1):
        run = await prefect.read_flow_run(UUID(run_id))
        artifacts = await prefect.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(like_="failure-")))
        if expected and any(tag.startswith("failed:") for tag in run.tags):
            return run.tags, artifacts
        await asyncio.sleep(0.5)
    assert not expected, f"no failed: tag on {run.name} after 60 s: {run.tags}"
    return run.tags, artifacts


async def test_a_completed_run_whose_tool_call_was_refused_is_diagnosed_tool_refused(
    stack: ArielUp, service_host: str
) -> None:
    elsewhere = f"127.0.0.1:{free_port()}"  # not in allowed_hosts: refused before any connection
    async with Client(stack.mcp_url) as chat:
        await ask(chat, "create_agent", name="Fenced", instructions="x", model="ariel/scripted", tools=["http_request"],
                  allowed_hosts=[service_host], script=[fetch(elsewhere), {"reply": "done anyway"}])
        await ask(chat, "update_agent", agent="fenced", action="approve")
        run = await ask(chat, "run_agent", agent="fenced", wait_seconds=240)
        diagnosis = await ask(chat, "diagnose_run", run=run["name"])  # at once: its warning is already there
    assert run["state"] == "Completed", run
    assert diagnosis["cause"] == "tool_refused", diagnosis
    assert diagnosis["summary"].startswith("the run completed, but 1 tool call(s) was refused")
    assert elsewhere in diagnosis["summary"] and "allowed_hosts" in diagnosis["next_action"]


async def test_a_scripted_run_whose_script_ran_out_gets_no_provider_key_advice(
    stack: ArielUp, service_host: str
) -> None:
    async with Client(stack.mcp_url) as chat:
        await ask(chat, "create_agent", name="Short script", instructions="x", model="ariel/scripted",
                  tools=["http_request"], allowed_hosts=[service_host], script=[fetch(service_host)])
        await ask(chat, "update_agent", agent="short-script", action="approve")
        run = await ask(chat, "run_agent", agent="short-script", wait_seconds=240)
        diagnosis = await ask(chat, "diagnose_run", run=run["name"])
    assert run["state"] == "Failed", run
    assert diagnosis["cause"] == "llm_failed" and diagnosis["failed_step"]["step"] == "llm · step 2", diagnosis
    assert "provider" not in diagnosis["next_action"].replace("needs no provider or key", "")
    assert "key" not in diagnosis["next_action"].replace("needs no provider or key", "")
    assert "script" in diagnosis["next_action"]


async def test_a_version_awaiting_approval_that_an_operator_starts_is_refused_by_the_runtime(
    stack: ArielUp, prefect_api: str
) -> None:
    async with Client(stack.mcp_url) as chat:
        agent = await ask(chat, "create_agent", name="Unreviewed", instructions="x", model="ariel/scripted",
                          script=[{"reply": "I ran without approval"}])
        assert agent["status"] == "pending_approval"
        # The operator's Prefect UI can start any deployment, paused ones too; a worker picks the run up.
        async with PrefectClient(prefect_api) as prefect:
            deployment = await prefect.read_deployment_by_name(agent["deployment"])
            assert deployment.parameters["config"]["approved"] is False
            made = await prefect.create_flow_run_from_deployment(deployment.id)
            ended = await wait_for_run(prefect, made.id, timeout=180)
        diagnosis = await ask(chat, "diagnose_run", run=str(made.id))
        transcript = await ask(chat, "get_transcript", run=str(made.id))
    assert ended.state is not None and ended.state.type.value == "FAILED", ended.state
    assert diagnosis["cause"] == "unapproved" and "runtime refused" in diagnosis["summary"], diagnosis
    assert transcript["entries"] == []  # refused before any LLM or tool call


async def test_a_run_whose_configuration_was_changed_in_prefect_fails_at_once_as_tampered(
    stack: ArielUp, prefect_api: str, service_host: str
) -> None:
    Counting.hits = []
    with http_service(Counting) as elsewhere:
        async with Client(stack.mcp_url) as chat:
            await ask(chat, "create_agent", name="Approved fetcher", instructions="x", model="ariel/scripted",
                      tools=["http_request"], allowed_hosts=[service_host],
                      script=[fetch(service_host), {"reply": "fetched"}])
            agent = await ask(chat, "update_agent", agent="approved-fetcher", action="approve")
            assert agent["status"] == "active"
            # Whoever can create flow runs in Prefect (its UI or API) points the approved agent somewhere else.
            async with PrefectClient(prefect_api) as prefect:
                deployment = await prefect.read_deployment_by_name(agent["deployment"])
                config = deployment.parameters["config"]
                assert config["signature"] and config["allowed_hosts"] == [service_host]
                forged = {**config, "allowed_hosts": [elsewhere], "script": [fetch(elsewhere), {"reply": "got it"}]}
                made = await prefect.create_flow_run_from_deployment(deployment.id, parameters={"config": forged})
                ended = await wait_for_run(prefect, made.id, timeout=180)
                steps = await prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[made.id])))
            diagnosis = await ask(chat, "diagnose_run", run=str(made.id))
            transcript = await ask(chat, "get_transcript", run=str(made.id))
    assert ended.state is not None and ended.state.type.value == "FAILED", ended.state
    assert "ConfigTampered: tampered: the run's configuration does not match its signature" in (
        ended.state.message or ""), ended.state.message
    assert Counting.hits == [] and steps == []  # no tool call, no LLM call: refused before either
    # Refused at once, not after a retry's delays and a step's timeout (minutes); room left for a loaded machine.
    assert ended.start_time and ended.end_time and (ended.end_time - ended.start_time).total_seconds() < 60
    assert diagnosis["cause"] == "tampered", diagnosis
    assert "changed outside Ariel" in diagnosis["summary"] and "run_agent" in diagnosis["next_action"]
    assert "operator should check who edited" in diagnosis["next_action"]
    assert transcript["entries"] == []


async def run_on_image(image: str, home: Path, prefect_api: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a one-reply agent on a Docker pool whose containers use `image` (never built); returns (run, diagnosis)."""
    env = {"ARIEL_RUNTIME_IMAGE": image, "ARIEL_BUILD_IMAGE": "false"}
    with ariel_up(home, "docker", prefect_api, extra_env=env) as up:
        async with Client(up.mcp_url) as chat:
            await ask(chat, "create_agent", name="Probe", instructions="x", model="ariel/scripted",
                      script=[{"reply": "never"}])
            await ask(chat, "update_agent", agent="probe", action="approve")
            run = await ask(chat, "run_agent", agent="probe", wait_seconds=120)
            return run, await ask(chat, "diagnose_run", run=run["id"])


async def test_a_run_whose_image_the_worker_cannot_get_is_diagnosed_image_missing(
    docker_engine: None, prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A registry on a loopback port nobody listens on: the pull fails at once, as it would offline.
    image = f"127.0.0.1:{free_port()}/ariel-runtime:missing"
    run, diagnosis = await run_on_image(image, tmp_path_factory.mktemp("no-image"), prefect_api)
    assert run["state"] == "Crashed", run
    assert diagnosis["cause"] == "image_missing", diagnosis
    assert "ariel build-image" in diagnosis["next_action"]


async def test_a_run_whose_container_cannot_start_is_diagnosed_with_why(
    docker_engine: None, prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The bare base image has Python but no Prefect: the worker's command is not there to run.
    run, diagnosis = await run_on_image("ariel-base:bookworm", tmp_path_factory.mktemp("bare-image"), prefect_api)
    assert run["state"] == "Crashed", run
    assert diagnosis["cause"] == "container_exit", diagnosis
    assert "executable file not found" in diagnosis["summary"] and "ARIEL_RUNTIME_IMAGE" in diagnosis["next_action"]
