"""The README's "Run agents on your own hardware", followed as a customer would, in a fresh virtualenv.

The commands are read from the README section itself, so the section and this
test cannot drift apart. A stack runs Ariel (its own Prefect server, Docker
pools, dev auth); an admin of org "initech" creates a worker key in chat; the
customer's side is a copy of the checkout with a new virtualenv, built and
started exactly as the section says, with the key in ARIEL_WORKER_KEY. The
agent's run must land on that worker's pool, run in a container whose
credential is the run's own token (the worker key appears nowhere in it), and
show in chat like any other run.

The same worker then lists an MCP server that only its network reaches: the
stack's control plane connects to no loopback or private address
(ARIEL_MCP_PRIVATE_NETWORKS=false), so `manage_tools add` reaches the server
only through the org's worker (network='own'), and the org's agents use its
tools from there.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import docker
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from prefect.states import Scheduled

from deployments.pools.standby import POOL_LABEL, run_containers, waiting_standbys
from deployments.runs import wait_for_run
from tests.flows.mcp.servers import serving, tool_server
from tests.mcp_server.callers import ask, call, client
from tests.support import ArielUp, ariel_up, http_service, standby_handoffs, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "dev:carol:initech:owner"
MEMBER = "dev:dave:initech:member"
INTRANET_TOKEN = "tok-intranet-5c1e9a7d03b2"
SECTION = "## Run agents on your own hardware"
SCHEDULED = 3
SCHEDULED_LEAD_SECONDS = 50  # time enough to start standbys on a loaded CI machine, before the worker takes the runs


def readme_commands() -> tuple[list[str], str]:
    """The section's setup commands (step 2, without the one for a machine with no Docker) and its start command."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2, "the section has a setup block and a start block"
    setup = [line.split("#")[0].strip() for line in blocks[0].splitlines()]
    setup = [line for line in setup if line and not line.startswith("sudo ")]
    (start,) = [line.strip() for line in blocks[1].splitlines() if line.strip()]
    return setup, start


def checkout_copy(destination: Path) -> Path:
    """What a customer has: the release's files (tracked and new ones, none of this machine's state)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


class Held(BaseHTTPRequestHandler):
    """A service the agent calls, which answers only once the test has looked at the run's container."""

    release: ClassVar[threading.Event] = threading.Event()
    called: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).called.set()
        type(self).release.wait(timeout=120)
        body = b'{"status": "on premises"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stack(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArielUp]:
    home = tmp_path_factory.mktemp("own-hardware-home")
    # The control plane reaches no loopback or private address: what only the customer's network reaches, it cannot.
    env = {"ARIEL_PROFILE": "dev", "ARIEL_AUTH_MODE": "dev", "ARIEL_MCP_PRIVATE_NETWORKS": "false"}
    with ariel_up(home, "docker", extra_env=env) as up:
        yield up


@dataclass(frozen=True)
class Customer:
    key: str
    worker: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def customer(stack: ArielUp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Customer]:
    """The customer's worker, set up and started by the README section's own commands, with a new worker key."""
    tmp_path = tmp_path_factory.mktemp("customer")
    setup, start = readme_commands()
    made = asyncio.run(call(stack.base_url, ADMIN, "manage_org", action="create_worker_key", name="office-server"))
    key = made["worker_keys"][0]["key"]
    assert made["start_worker"] == f"ARIEL_WORKER_KEY={key} ariel worker --server {stack.base_url}"

    customer = checkout_copy(tmp_path / "ariel")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("ARIEL_", "PREFECT_"))}
    env["HOME"] = str(tmp_path / "customer-home")  # nothing of this machine's Ariel or Prefect state
    for command in setup:
        done = subprocess.run(command, shell=True, cwd=customer, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"

    argv = shlex.split(start.replace("https://ariel.example.com", stack.base_url))
    assignment, argv = argv[0], argv[1:]
    assert assignment.startswith("ARIEL_WORKER_KEY=")
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(argv, cwd=customer, env={**env, "ARIEL_WORKER_KEY": key}, stdout=worker_log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log = tmp_path / "worker.log"
        wait_until(lambda: "Serving work pool" in log.read_text() or worker.poll() is not None, 120, "ariel worker")
        assert worker.poll() is None, log.read_text()[-3000:]
        # Runs come once the worker has its standby ready, as they do some time after a customer starts it.
        pool = re.search(r"Serving work pool (\S+) of", log.read_text())
        assert pool is not None, log.read_text()
        engine = docker.from_env()
        try:
            wait_until(lambda: waiting_standbys(engine, pool.group(1)), 120, "the worker's standby container")
        finally:
            engine.close()
        yield Customer(key, worker, log)
    finally:
        stop_process(worker, signal.SIGINT)
        worker_log.close()


def test_a_customer_follows_the_readme_and_its_worker_runs_the_orgs_agents(stack: ArielUp, customer: Customer) -> None:
    try:
        with http_service(Held) as service:
            _runs_there(stack, service, customer.key, customer.worker, customer.log)
    finally:
        Held.release.set()


def _runs_there(stack: ArielUp, service: str, key: str, worker: subprocess.Popen[bytes], log: Path) -> None:
    async def create_and_run() -> dict[str, Any]:
        await call(stack.base_url, ADMIN, "create_agent", name="Site check", instructions="Check the site.",
                   model="ariel/scripted", tools=["http_request"], allowed_hosts=[service],
                   script=[{"tool": "http_request", "arguments": {"url": f"http://{service}/status"}},
                           {"reply": "Site says {last_tool_result}"}])
        await call(stack.base_url, ADMIN, "update_agent", agent="site-check", action="approve")
        agent = await call(stack.base_url, ADMIN, "get_agent", agent="site-check")
        assert agent["work_pool"].endswith("-own"), agent
        return dict(await call(stack.base_url, ADMIN, "run_agent", agent="site-check"))

    run = asyncio.run(create_and_run())
    # The run is in its container, held at its tool call: look at what the container holds.
    wait_until(Held.called.is_set, 300, "the run's tool call")
    engine = docker.from_env()
    containers = run_containers(engine, run["id"])
    assert len(containers) == 1, [(c.name, c.labels) for c in engine.containers.list()]
    [container] = containers
    assert container.labels[POOL_LABEL].endswith("-own") and container.labels["ariel.role"] == "flow-run"
    # It was the worker's standby, handed the run over stdin: neither the worker key nor the run's token is in
    # anything `docker inspect` shows. (Its run completes through the gateway, which takes only a run token on a
    # run's routes, its journal and key among them: tests/mcp_server/gateway/test_probes.py.)
    wait_until(lambda: "took the run" in log.read_text(), 30, "the worker's word on the handover")
    assert f"as {container.name!r}" in log.read_text()
    inspected = json.dumps(container.attrs)
    assert key not in inspected, "the worker key reached the run's container"
    assert "ariel_rt_" not in inspected and "PREFECT_API_KEY" not in inspected
    Held.release.set()

    async def finished() -> tuple[dict[str, Any], dict[str, Any]]:
        for _ in range(120):
            got = await call(stack.base_url, ADMIN, "get_run", run=run["id"])
            if got["state"] in ("Completed", "Failed", "Crashed"):
                break
            await asyncio.sleep(1)
        logs = await call(stack.base_url, ADMIN, "get_run_logs", run=run["id"], contains="Reply")
        return dict(got), dict(logs)

    got, logs = asyncio.run(finished())
    assert got["state"] == "Completed", got
    assert "on premises" in (got["result"] or ""), got
    assert [line for line in logs["lines"] if "on premises" in line["message"]], logs
    assert "flow run" in log.read_text().lower()


def test_an_mcp_server_only_the_customers_network_reaches_is_listed_by_its_worker_and_its_agents_use_it(
    stack: ArielUp, customer: Customer
) -> None:
    with serving(tool_server(token=INTRANET_TOKEN)) as url:
        asyncio.run(_intranet_tools(stack, url))


async def _intranet_tools(stack: ArielUp, url: str) -> None:
    async with client(stack.base_url, ADMIN) as admin, client(stack.base_url, MEMBER) as member:
        await _intranet_tools_in(admin, member, url)


async def _intranet_tools_in(admin: Client[Any], member: Client[Any], url: str) -> None:
    async def tools(**arguments: Any) -> dict[str, Any]:
        return dict(await ask(admin, "manage_tools", **arguments))

    # Ariel's control plane cannot reach it, and says where it can be listed from.
    with pytest.raises(ToolError, match="network='own'"):
        await tools(action="add", name="intranet", transport="http", url=url, token=INTRANET_TOKEN, scope="org")
    added = await tools(action="add", name="intranet", transport="http", url=url, token=INTRANET_TOKEN,
                        scope="org", network="own")
    [server] = added["servers"]
    assert (server["network"], server["status"]) == ("own", "pending"), added
    assert "your own-hardware worker lists its tools now" in added["done"], added

    async def listed() -> dict[str, Any]:
        for _ in range(240):
            got = (await tools(action="get", name="intranet"))["servers"][0]
            if got["status"] != "pending" or "could not" in (got["listing"] or ""):
                return dict(got)
            await asyncio.sleep(1)
        raise AssertionError(f"the worker did not list the server: {got}")

    got = await listed()
    # An admin's add is approved once its worker has listed the tools, and screening holds none.
    assert (got["status"], got["tools"]) == ("approved", ["lookup", "forecast", "long", "nap"]), got
    assert (got["listing"] or "").startswith("listed by your own-hardware worker"), got

    await ask(admin, "create_agent", name="Intranet weather", instructions="Look it up.",
               model="ariel/scripted", mcp_tools=[{"server": "intranet", "tools": ["lookup"]}],
               script=[{"tool": "intranet__lookup", "arguments": {"city": "Lyon"}},
                       {"reply": "Intranet says: {last_tool_result}"}])
    await ask(admin, "update_agent", agent="intranet-weather", action="approve")
    finished = await ask(admin, "run_agent", agent="intranet-weather", wait_seconds=300)
    assert finished["state"] == "Completed", finished
    assert "Sunny in Lyon" in (finished["result"] or ""), finished

    # A member's own server on that network waits for an admin, who approves the listing the worker reported.
    mine = await ask(member, "manage_tools", action="add", name="intranet-mine", transport="http", url=url,
                     token=INTRANET_TOKEN, network="own")
    assert mine["servers"][0]["status"] == "pending", mine
    for _ in range(240):
        read = (await tools(action="get", name=mine["servers"][0]["id"]))["servers"][0]
        if (read["listing"] or "").startswith("listed"):
            break
        await asyncio.sleep(1)
    assert read["status"] == "pending" and read["tools"], read
    approved = await tools(action="approve", name=read["id"], digest=read["tools_digest"])
    assert approved["servers"][0]["status"] == "approved", approved

    # Nothing secret anywhere a person reads.
    seen = [added, got, finished, await tools(action="list"), await ask(admin, "list_runs", limit=50)]
    assert INTRANET_TOKEN not in json.dumps(seen)


def test_runs_scheduled_together_on_the_customers_worker_each_find_a_standby_started_for_them(
    stack: ArielUp, customer: Customer
) -> None:
    """Per-minute agents on the customer's hardware fall due in the same second: its worker keeps a standby for each
    run scheduled soon, as Ariel's pool host does, asking through the gateway, rather than one for them all."""
    asyncio.run(_scheduled_together(stack, customer))


async def _scheduled_together(stack: ArielUp, customer: Customer) -> None:
    await call(stack.base_url, ADMIN, "create_agent", name="Tick", instructions="Reply.", model="ariel/scripted",
               script=[{"reply": "tick done"}])
    await call(stack.base_url, ADMIN, "update_agent", agent="tick", action="approve")
    agent = await call(stack.base_url, ADMIN, "get_agent", agent="tick")
    pool = agent["work_pool"]
    assert pool.endswith("-own"), agent
    engine = docker.from_env()
    try:
        async with stack.prefect() as prefect:
            deployment = await prefect.read_deployment_by_name(agent["deployment"])
            due = datetime.now(UTC) + timedelta(seconds=SCHEDULED_LEAD_SECONDS)
            made = [await prefect.create_flow_run_from_deployment(deployment.id, state=Scheduled(scheduled_time=due))
                    for _ in range(SCHEDULED)]
            # Before they are due, the worker keeps a standby for each.
            ready = wait_until(lambda: (found := waiting_standbys(engine, pool))[SCHEDULED - 1:] and found,
                               SCHEDULED_LEAD_SECONDS - 15, f"{SCHEDULED} standbys before the runs are due")
            ended = [await wait_for_run(prefect, run.id, timeout=180) for run in made]
    finally:
        engine.close()
    assert [run.state.type.value if run.state else None for run in ended] == ["COMPLETED"] * SCHEDULED, [
        (run.state.name, run.state.message) if run.state else None for run in ended]
    handed = standby_handoffs(customer.log.read_text())
    assert {handed.get(standby.name) for standby in ready} >= {str(run.id) for run in made}, handed
