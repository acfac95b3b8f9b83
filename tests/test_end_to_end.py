"""End to end, as a user: `ariel up`, then a real MCP client over streamable HTTP.

An agent that calls `http_request` against a loopback service is created, run
and read back through MCP; it runs in a Docker container (docker pool) or as a
host process (process pool), on a real Prefect server.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.exceptions import ToolError
from prefect.client.orchestration import PrefectClient

from tests.support import ArielUp, ariel_up, fresh_postgres_database, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["docker", "process"])
def stack(
    request: pytest.FixtureRequest, prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ArielUp]:
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    with ariel_up(tmp_path_factory.mktemp(f"home-{request.param}"), request.param, prefect_api) as up:
        up.pool_type = request.param  # type: ignore[attr-defined]  # test-only annotation
        yield up


def checker(service_host: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "instructions": "Fetch the service status and report it.",
        "model": "ariel/scripted",
        "tools": ["http_request"],
        "allowed_hosts": [service_host],
        "script": [
            {"tool": "http_request", "arguments": {"url": f"http://{service_host}/status"}},
            {"reply": "Status report: {last_tool_result}"},
        ],
    }


async def read_all_logs(client: Client[Any], run: str, contains: str, timeout: float = 30) -> list[str]:
    # Flow logs reach the API a moment after the run's final state.
    deadline = time.monotonic() + timeout
    while True:
        result = await client.call_tool("get_run_logs", {"run": run, "limit": 1000})
        assert result.structured_content is not None  # get_run_logs has an output schema
        messages = [line["message"] for line in result.structured_content["lines"]]
        if any(contains in m for m in messages) or time.monotonic() > deadline:
            return messages
        await asyncio.sleep(0.5)


async def test_an_agent_created_in_chat_runs_on_its_pool_and_its_logs_hold_the_reply(
    stack: ArielUp, service_host: str, prefect_api: str
) -> None:
    async with Client(stack.mcp_url) as client:
        created = (await client.call_tool("create_agent", checker(service_host, "Status checker"))).structured_content
        assert len(created["id"]) == 32 and int(created["id"], 16) >= 0
        assert (created["slug"], created["version"], created["status"]) == ("status-checker", 1, "pending_approval")
        await client.call_tool("update_agent", {"agent": "status-checker", "action": "approve"})

        run = (await client.call_tool("run_agent", {"agent": "status-checker", "wait_seconds": 180})).structured_content
        assert run["state"] == "Completed", run
        assert run["version"] == 1
        assert run["result"].startswith("Status report: ") and '\\"answer\\": 42' in run["result"]

        logs = await read_all_logs(client, run["name"], "Reply: Status report")
        assert any(m.startswith("Reply: Status report: ") and "answer" in m for m in logs), logs
        # The runtime image carries the code at /opt/ariel/app; a process worker runs this checkout's.
        where = "/opt/ariel/app/flows" if stack.pool_type == "docker" else str(Path(__file__).parent.parent / "flows")  # type: ignore[attr-defined]
        assert any(m.startswith("Runtime: Python") and m.endswith(f"code at {where}") for m in logs), logs

        by_agent = (await client.call_tool("list_runs", {"agent": created["id"]})).structured_content["runs"]
        assert [r["id"] for r in by_agent] == [run["id"]]
        completed = (await client.call_tool("list_runs", {"state": "completed"})).structured_content["runs"]
        assert run["id"] in [r["id"] for r in completed]
        assert (await client.call_tool("list_runs", {"state": "failed"})).structured_content["runs"] == []

    async with PrefectClient(prefect_api) as prefect:
        flow_run = await prefect.read_flow_run(run["id"])
        assert flow_run.deployment_id is not None  # a run of an agent's deployment
        deployment = await prefect.read_deployment(flow_run.deployment_id)
        assert deployment.work_pool_name is not None  # every agent's deployment names its org's pool
        pool = await prefect.read_work_pool(deployment.work_pool_name)
        flow = await prefect.read_flow(deployment.flow_id)
    assert flow.name == "status-checker"
    assert pool.type == stack.pool_type  # type: ignore[attr-defined]
    assert any(tag.startswith("org:") for tag in deployment.tags)
    assert set(deployment.tags) <= set(flow_run.tags)


async def test_an_agent_cannot_call_the_control_plane_under_another_loopback_name(
    stack: ArielUp, prefect_api: str
) -> None:
    # 127.0.0.2 is this machine too: only the runtime's address check (not the spec's names) can refuse it.
    prefect_port, ariel_port = urlsplit(prefect_api).port, stack.port
    hosts = [f"127.0.0.2:{prefect_port}", f"127.0.0.2:{ariel_port}"]
    script = [{"tool": "http_request", "arguments": {"url": f"http://{host}/api/flow_runs/filter", "method": "POST"}}
              for host in hosts]
    async with Client(stack.mcp_url) as client:
        await client.call_tool("create_agent", {
            "name": "Snoop", "instructions": "Read every org's runs.", "model": "ariel/scripted",
            "tools": ["http_request"], "allowed_hosts": hosts, "script": [*script, {"reply": "{last_tool_result}"}],
        })
        await client.call_tool("update_agent", {"agent": "snoop", "action": "approve"})
        run = (await client.call_tool("run_agent", {"agent": "snoop", "wait_seconds": 180})).structured_content
        assert run["state"] == "Completed", run
        refused = [m for m in await read_all_logs(client, run["name"], f"127.0.0.2:{ariel_port} is Ariel")
                   if m.startswith("Tool call refused")]
    assert len(refused) == 2, refused
    assert f"127.0.0.2:{prefect_port} is Ariel's control plane" in refused[0]
    # The app serves the Prefect gateway, which is the Prefect API as the run knows it.
    assert f"127.0.0.2:{ariel_port} is Ariel's control plane (the Prefect API)" in refused[1]
    assert "control plane" in run["result"] and '"status"' not in run["result"]


async def test_agents_are_listed_and_read_by_id_or_slug(stack: ArielUp, service_host: str) -> None:
    async with Client(stack.mcp_url) as client:
        created = (
            await client.call_tool(
                "create_agent",
                {
                    **checker(service_host, "Morning digest"),
                    "schedule": {"cron": "0 8 * * 1-5", "timezone": "Europe/Paris"},
                },
            )
        ).structured_content
        listed = (await client.call_tool("list_agents", {})).structured_content["agents"]
        assert "morning-digest" in [agent["slug"] for agent in listed]
        by_slug = (await client.call_tool("get_agent", {"agent": "morning-digest"})).structured_content
        by_id = (await client.call_tool("get_agent", {"agent": created["id"]})).structured_content
    assert by_slug == by_id
    assert by_slug["schedule"] == {"cron": "0 8 * * 1-5", "timezone": "Europe/Paris"}
    assert by_slug["spec"]["instructions"] == "Fetch the service status and report it."
    assert by_slug["recent_runs"] == []


async def test_bad_input_names_the_field_and_creates_nothing(stack: ArielUp, service_host: str) -> None:
    async with Client(stack.mcp_url) as client:
        before = (await client.call_tool("list_agents", {})).structured_content["agents"]
        with pytest.raises(ToolError) as bad_cron:
            await client.call_tool(
                "create_agent", {**checker(service_host, "Bad cron"), "schedule": {"cron": "99 * * * *"}}
            )
        with pytest.raises(ToolError) as bad_tool:
            await client.call_tool("create_agent", {**checker(service_host, "Bad tool"), "tools": ["shell"]})
        with pytest.raises(ToolError) as empty_name:
            await client.call_tool("create_agent", {**checker(service_host, ""), "name": ""})
        after = (await client.call_tool("list_agents", {})).structured_content["agents"]
    assert str(bad_cron.value).startswith("invalid arguments: schedule.cron: '99 * * * *' is not a cron line Prefect "
                                          "accepts; for example '0 8 * * 1-5'")
    assert "unknown tool 'shell'; available tools: http_request" in str(bad_tool.value)
    assert str(empty_name.value) == "the agent was not created: name: String should have at least 1 character"
    assert after == before


async def test_a_second_agent_with_the_same_slug_is_refused(stack: ArielUp, service_host: str) -> None:
    async with Client(stack.mcp_url) as client:
        await client.call_tool("create_agent", checker(service_host, "Twin"))
        with pytest.raises(ToolError, match="an agent with slug 'twin' already exists; choose another name"):
            await client.call_tool("create_agent", checker(service_host, "TWIN!"))


async def test_unknown_agents_and_runs_are_answered_plainly(stack: ArielUp) -> None:
    async with Client(stack.mcp_url) as client:
        with pytest.raises(ToolError, match="no agent 'nope'; list_agents shows"):
            await client.call_tool("run_agent", {"agent": "nope"})
        with pytest.raises(ToolError, match="no run 'no-such-run'; list_runs shows"):
            await client.call_tool("get_run_logs", {"run": "no-such-run"})
        with pytest.raises(ToolError, match="no run '00000000-0000-0000-0000-000000000000'"):
            await client.call_tool("get_run_logs", {"run": "00000000-0000-0000-0000-000000000000"})


async def test_the_stdio_transport_serves_the_same_agents_as_http(stack: ArielUp, service_host: str) -> None:
    async with Client(stack.mcp_url) as http:
        await http.call_tool("create_agent", checker(service_host, "Seen over stdio"))
        await http.call_tool("update_agent", {"agent": "seen-over-stdio", "action": "approve"})
    env = {**os.environ, "ARIEL_HOME": str(stack.home), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    async with Client(StdioTransport(sys.executable, ["-m", "mcp_server.cli", "mcp"], env=env)) as stdio:
        listed = (await stdio.call_tool("list_agents", {})).structured_content["agents"]
        run = (await stdio.call_tool("run_agent", {"agent": "seen-over-stdio", "wait_seconds": 180})).structured_content
    assert "seen-over-stdio" in [agent["slug"] for agent in listed]
    assert run["state"] == "Completed"


@pytest.mark.slow  # the CLI's interpreter imports Prefect: seconds
def test_ariel_mcp_before_ariel_up_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "ARIEL_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "mcp_server.cli", "mcp"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "ariel mcp: start Ariel first with `ariel up` (it records the Prefect API and work pool to use)"
    )


def test_health_and_readiness_answer(stack: ArielUp) -> None:
    import httpx

    assert httpx.get(f"{stack.base_url}/health").json() == {"status": "ok"}
    # Ready once the worker host's first heartbeat reached Prefect, a moment after `ariel up` says it is up:
    # run first, this test meets that moment.
    wait_until(lambda: httpx.get(f"{stack.base_url}/ready").json()["status"] == "ready", 60, "/ready to say ready")
    assert httpx.get(f"{stack.base_url}/docs").status_code == 200


def test_ariel_up_prints_the_urls_and_a_client_config(stack: ArielUp) -> None:
    printed = stack.printed()
    assert f"MCP (streamable HTTP): {stack.mcp_url}" in printed
    assert "Prefect UI:" in printed
    assert '"args": [\n        "mcp"\n      ]' in printed


def test_ctrl_c_on_ariel_up_with_its_own_prefect_server_leaves_nothing_running(tmp_path: Path) -> None:
    with ariel_up(tmp_path / "home", "process") as up:
        assert "Starting the Prefect server" in up.printed()
        stopped = up.stop()
    assert stopped.by is signal.SIGINT, up.printed()  # within 10 s of it
    assert stopped.left == frozenset()
    assert "Stopped." in up.printed()


async def test_past_the_desktops_sqlite_limit_ariel_ups_own_prefect_server_keeps_its_runs_in_postgresql(
    tmp_path: Path,
) -> None:
    """The README's Desktop section: Prefect's own setting in `ariel up`'s environment moves its server's data."""
    # A database each: both keep their schema's version in the same table name.
    with fresh_postgres_database() as database, fresh_postgres_database() as store:
        prefect_db = database.replace("+psycopg", "+asyncpg", 1)
        with ariel_up(tmp_path / "home", "process", extra_env={"PREFECT_API_DATABASE_CONNECTION_URL": prefect_db,
                                                                 "ARIEL_STORE_URL": store}) as up:
            async with Client(up.mcp_url) as client:
                await client.call_tool("create_agent", {"name": "Greeter", "instructions": "Greet.",
                                                        "model": "ariel/scripted", "script": [{"reply": "hello"}]})
                await client.call_tool("update_agent", {"agent": "greeter", "action": "approve"})
                ran = await client.call_tool("run_agent", {"agent": "greeter", "wait_seconds": 120})
                run = ran.structured_content
            stopped = up.stop()
        with psycopg.connect(database.replace("+psycopg", "", 1)) as conn:
            kept = conn.execute("SELECT state_type FROM flow_run WHERE id = %s", (run["id"],)).fetchone()
    assert run["state"] == "Completed" and run["result"] == "hello", run
    assert kept == ("COMPLETED",)
    printed = up.printed()
    assert re.search(r"Starting the Prefect server on port \d+ \(its database: PostgreSQL at 127\.0\.0\.1:5432/"
                     r"ariel_t_[0-9a-f]{12}\)", printed), printed
    assert "ariel_test:ariel_test" not in printed  # the URL's password, never printed
    assert stopped.by is signal.SIGINT and stopped.left == frozenset()


def test_without_a_docker_engine_ariel_up_says_so_and_uses_a_process_pool(prefect_api: str, tmp_path: Path) -> None:
    with ariel_up(tmp_path / "home", "auto", prefect_api, extra_env={"DOCKER_HOST": "unix:///nonexistent.sock"}) as up:
        printed = up.printed()
    assert "No Docker engine answers, so agents will run as local processes (a process work pool)." in printed
    assert re.search(r"Work pool: ariel-[0-9a-f]{8}-personal-process \(process\)", printed), printed


@pytest.mark.slow  # its own `ariel up`
async def test_a_users_tool_calls_count_once_across_ariel_up_and_an_ariel_mcp_beside_it(
    tmp_path: Path, prefect_api: str
) -> None:
    # Two app processes of one install: the HTTP app of `ariel up`, and `ariel mcp` over stdio, on one store.
    limit = {"ARIEL_RATE_LIMIT_PER_MINUTE": "4"}
    with ariel_up(tmp_path / "home", "process", prefect_api, extra_env=limit) as up:
        env = {**os.environ, **limit, "ARIEL_HOME": str(up.home), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        async with Client(up.mcp_url) as http, \
                Client(StdioTransport(sys.executable, ["-m", "mcp_server.cli", "mcp"], env=env)) as stdio:
            for session in (http, stdio, http, stdio):
                await session.call_tool("whoami", {})
            with pytest.raises(ToolError, match="^rate limited: more than 4 tool calls in a minute from your user"):
                await stdio.call_tool("whoami", {})
            with pytest.raises(ToolError, match="^rate limited: more than 4 tool calls in a minute from your user"):
                await http.call_tool("whoami", {})
