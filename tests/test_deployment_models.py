"""Deployment models, each started as its README section says and used through MCP as a person would.

SaaS shared: Prefect's server on PostgreSQL (not embedded SQLite), the store on
PostgreSQL, API keys; the app as two `ariel serve` replicas and the workers as
one `ariel pool-host` through replica A's gateway, every process with its own
ARIEL_HOME and the install's shared keys in its environment. A key made with
`ariel create-key`; an agent created and run through replica B, its logs read
through replica A; then everything stopped, and nothing of it left running.

Compose (profile core): the same install as `docker/compose.yaml` runs it, from the images
`ariel build-image compose` makes offline: PostgreSQL with the roles its init script makes, Prefect's
server on it, the app and the pool host, each in its container; up, a key, an agent run, down, nothing left.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # no stubs installed

from deployments.images.compose_images import ComposeImages
from deployments.pools.standby import POOL_LABEL
from mcp_server.settings import ArielSettings
from tests.mcp_server.callers import call, client
from tests.support import (
    answers,
    free_port,
    fresh_postgres_database,
    need,
    prefect_server,
    started_ariel,
    until_printed,
    wait_until,
)
from tests.support import (
    test_env as child_env,
)

pytestmark = pytest.mark.slow


def saas_environment(store_url: str, prefect_api_url: str, prefect_auth: str) -> dict[str, str]:
    """What every process of one SaaS install is given: the same store, Prefect, and keys."""
    return {
        "ARIEL_PROFILE": "saas",
        "ARIEL_AUTH_MODE": "api_key",
        "ARIEL_STORE_URL": store_url,
        "ARIEL_PREFECT_API_URL": prefect_api_url,
        "ARIEL_PREFECT_AUTH_STRING": prefect_auth,
        "ARIEL_POOL_HOST_KEY": secrets.token_urlsafe(32),
        "ARIEL_RUN_TOKEN_KEY": secrets.token_urlsafe(32),
        "ARIEL_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
        "ARIEL_CONFIG_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


@pytest.fixture
def prefect_on_postgresql(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Prefect server whose database is PostgreSQL and which requires an auth string: (API URL, auth string)."""
    auth = f"operator:{secrets.token_urlsafe(16)}"
    with fresh_postgres_database() as database:
        env = {"PREFECT_API_DATABASE_CONNECTION_URL": database.replace("+psycopg", "+asyncpg", 1),
               "PREFECT_SERVER_API_AUTH_STRING": auth}
        with prefect_server(tmp_path / "prefect", env) as api_url:
            yield api_url, auth


async def test_saas_shared_two_app_replicas_and_a_pool_host_run_an_agent_and_stop_clean(
    tmp_path: Path, docker_engine: None, prefect_on_postgresql: tuple[str, str]
) -> None:
    api_url, auth = prefect_on_postgresql
    with fresh_postgres_database() as store_url, ExitStack() as running:
        install = saas_environment(store_url, api_url, auth)
        replica_a = running.enter_context(started_ariel(tmp_path / "a", ["serve"], install))
        replica_b = running.enter_context(started_ariel(tmp_path / "b", ["serve"], install))
        for replica in (replica_a, replica_b):
            until_printed(replica, "Press Ctrl-C to stop.")
            wait_until(lambda r=replica: answers(f"{r.base_url}/health"), 30, "the HTTP app")  # type: ignore[misc]
        # The pool host is given the app's address and the pool host key, and no other part of the install.
        pool_host = running.enter_context(started_ariel(tmp_path / "c", ["pool-host", "--server", replica_a.base_url],
                                                        {"ARIEL_POOL_HOST_KEY": install["ARIEL_POOL_HOST_KEY"]}))
        until_printed(pool_host, "Serving the docker work pools")

        made = subprocess.run([sys.executable, "-m", "mcp_server.cli", "create-key", "acme", "--owner",
                               "ann@example.com"], env={**child_env(tmp_path / "d"), **install,
                                                        "ARIEL_HOME": str(tmp_path / "d")},
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]

        created = await call(replica_b.base_url, key, "create_agent", name="Greeter", instructions="Greet.",
                             model="ariel/scripted", script=[{"reply": "hello from saas"}])
        await call(replica_b.base_url, key, "update_agent", agent="greeter", action="approve")
        run = await call(replica_b.base_url, key, "run_agent", agent="greeter", wait_seconds=180)
        assert (run["state"], run["result"]) == ("Completed", "hello from saas"), run
        async with client(replica_a.base_url, key) as session:
            logs = (await session.call_tool("get_run_logs", {"run": run["name"]})).structured_content
        assert "Reply: hello from saas" in [line["message"] for line in logs["lines"]]

        # Behind a load balancer one client's requests reach any replica: a session begun at A goes on at B.
        # (As a client of the 2025-06-18 revision speaks, which the MCP Inspector and most clients do.)
        mcp = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-06-18"}
        began = httpx.post(f"{replica_a.base_url}/mcp", headers=mcp, timeout=30, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "load-balanced", "version": "1"}}})
        assert began.status_code == 200, began.text
        session_id = {"Mcp-Session-Id": began.headers["mcp-session-id"]} if "mcp-session-id" in began.headers else {}
        went_on = httpx.post(f"{replica_b.base_url}/mcp", headers={**mcp, **session_id}, timeout=30, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_agents", "arguments": {}}})
        assert went_on.status_code == 200 and '\\"slug\\":\\"greeter\\"' in went_on.text, went_on.text

        # SaaS: no personal org or pool was made for a local user; the one pool is acme's, made with its agent.
        assert created["work_pool"].endswith("-docker")
        for replica in (replica_a, replica_b):
            printed = replica.printed()
            assert "Work pools: one per org (docker), made with its first agent" in printed
            assert '"Authorization": "Bearer <an API key' in printed and "ariel-stdio" not in printed
            for secret in (auth.split(":")[1], install["ARIEL_POOL_HOST_KEY"], install["ARIEL_RUN_TOKEN_KEY"]):
                assert secret not in printed

        pool = created["work_pool"]
        for process in (replica_a, pool_host, replica_b):
            stopped = process.stop()
            assert stopped.left == frozenset(), process.printed()
        for replica in (replica_a, replica_b):  # stopped in order, with nothing to say but that
            assert "Traceback" not in replica.printed(), replica.printed()
    engine = docker.from_env()
    try:  # the pool host removed its standby; the run's own container ended with its run
        wait_until(lambda: not engine.containers.list(all=True, filters={"label": f"{POOL_LABEL}={pool}"},
                                                      ignore_removed=True), 30,
                   "the pool's containers to be gone")
    finally:
        engine.close()


COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker" / "compose.yaml"


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`) where the plugin is installed, else Debian's docker-compose 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    need(shutil.which("docker-compose") is not None, "no compose tool (docker/setup-host.sh installs docker-compose)")
    return ["docker-compose"]


def compose_env(folder: Path) -> Path:
    """An env file for one compose install, secrets made as the README says, ports free on this host."""
    values = {
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "ARIEL_STORE_PASSWORD": secrets.token_hex(16),
        "PREFECT_DB_PASSWORD": secrets.token_hex(16),
        "ARIEL_PREFECT_AUTH_STRING": f"operator:{secrets.token_hex(16)}",
        "ARIEL_POOL_HOST_KEY": secrets.token_hex(32),
        "ARIEL_RUN_TOKEN_KEY": secrets.token_hex(32),
        "ARIEL_CONFIG_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "ARIEL_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
        "ARIEL_POSTGRES_PORT": str(free_port()),
        "ARIEL_PREFECT_PORT": str(free_port()),
        "ARIEL_PORT": str(free_port()),
    }
    path = folder / "ariel.env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def env_values(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


async def test_compose_core_profile_runs_an_agent_and_down_leaves_nothing(tmp_path: Path, docker_engine: None) -> None:
    compose = compose_command()
    ComposeImages(base_image=ArielSettings().runtime_base_image).ensure_all(progress=lambda _: None)
    env_file = compose_env(tmp_path)
    values = env_values(env_file)
    project = f"ariel-smoke-{uuid.uuid4().hex[:8]}"
    base = [*compose, "--project-name", project, "--file", str(COMPOSE_FILE), "--env-file", str(env_file)]
    tool_env = {name: value for name, value in os.environ.items() if not name.startswith(("ARIEL_", "PREFECT_"))}

    def run(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *arguments], capture_output=True, text=True, timeout=timeout, env=tool_env,
                              check=False)

    engine = docker.from_env()
    try:
        up = run("--profile", "core", "up", "--detach")
        assert up.returncode == 0, up.stdout + up.stderr + run("logs", "--no-color").stdout[-5000:]
        app = f"http://127.0.0.1:{values['ARIEL_PORT']}"
        wait_until(lambda: "Serving the docker work pools" in run("logs", "--no-color", "pool-host").stdout, 120,
                   "the pool host to serve")

        made = run("exec", "-T", "app", "ariel", "create-key", "acme", "--owner", "ann@example.com", timeout=120)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        created = await call(app, key, "create_agent", name="Greeter", instructions="Greet.", model="ariel/scripted",
                             script=[{"reply": "hello from compose"}])
        await call(app, key, "update_agent", agent="greeter", action="approve")
        ran = await call(app, key, "run_agent", agent="greeter", wait_seconds=180)
        assert (ran["state"], ran["result"]) == ("Completed", "hello from compose"), ran
        async with client(app, key) as session:
            logs = (await session.call_tool("get_run_logs", {"run": ran["name"]})).structured_content
        assert "Reply: hello from compose" in [line["message"] for line in logs["lines"]]

        printed = run("logs", "--no-color").stdout
        # What operators read of each run in the pool host's log: no refusal of the run's event subscription
        # (its suspension observer), and no traceback when the run ends.
        pool_host_log = run("logs", "--no-color", "pool-host").stdout
        assert "Reply: hello from compose" in pool_host_log
        assert "Traceback" not in pool_host_log and "FlowRunSuspendingObserver" not in pool_host_log, pool_host_log
        assert '"Authorization": "Bearer <an API key' in printed, printed[-3000:]
        for name in ("POSTGRES_PASSWORD", "ARIEL_STORE_PASSWORD", "PREFECT_DB_PASSWORD", "ARIEL_POOL_HOST_KEY",
                     "ARIEL_RUN_TOKEN_KEY", "ARIEL_KEK", "ARIEL_CONFIG_SIGNING_KEY"):
            assert values[name] not in printed, f"{name} was printed"
        assert values["ARIEL_PREFECT_AUTH_STRING"].split(":")[1] not in printed
        assert key not in printed

        # Runs share the host's network with PostgreSQL: the pool's job template tells them to refuse its port.
        operator, password = values["ARIEL_PREFECT_AUTH_STRING"].split(":")
        pool_template = httpx.get(f"http://127.0.0.1:{values['ARIEL_PREFECT_PORT']}/api/work_pools/"
                                  f"{created['work_pool']}", auth=(operator, password),
                                  timeout=30).json()["base_job_template"]
        protected = pool_template["job_configuration"]["env"]["ARIEL_PROTECTED_ENDPOINTS"].split(",")
        assert f"127.0.0.1:{values['ARIEL_POSTGRES_PORT']}" in protected, protected

        down = run("down", "--volumes", timeout=120)
        assert down.returncode == 0, down.stderr
        project_label = f"com.docker.compose.project={project}"
        assert engine.containers.list(all=True, filters={"label": project_label}) == []
        assert engine.volumes.list(filters={"label": project_label}) == []
        # The pool host removed its standby at its stop; the run's own container ended with its run.
        pool: dict[str, str | list[str] | bool] = {"label": f"{POOL_LABEL}={created['work_pool']}"}
        wait_until(lambda: not engine.containers.list(all=True, filters=pool, ignore_removed=True), 30,
                   "the pool's containers to be gone")
    finally:
        run("down", "--volumes", "--remove-orphans", timeout=120)
        engine.close()


def test_the_compose_full_profile_adds_minio_and_a_collector_that_the_app_is_pointed_at(tmp_path: Path) -> None:
    """Its registry images cannot be pulled here: what runs is checked up to them (the file as compose reads it);
    the app's use of a bucket and a collector is tested on loopback (tests/test_transcripts.py, test_telemetry.py)."""
    compose = compose_command()
    env_file = compose_env(tmp_path)
    secret = secrets.token_hex(24)
    env_file.write_text(env_file.read_text() + "ARIEL_OBJECT_STORE_URL=http://127.0.0.1:9000/ariel-transcripts\n"
                        "ARIEL_OBJECT_STORE_ACCESS_KEY=ariel\n"
                        f"ARIEL_OBJECT_STORE_SECRET_KEY={secret}\nARIEL_OTLP_ENDPOINT=http://127.0.0.1:4318\n")
    tool_env = {name: value for name, value in os.environ.items() if not name.startswith(("ARIEL_", "PREFECT_"))}

    def config(profile: str) -> dict[str, Any]:
        # Compose v1 lists every service with its profiles; v2 only those the profile starts, with theirs.
        done = subprocess.run([*compose, "--project-name", "ariel-config", "--file", str(COMPOSE_FILE), "--env-file",
                               str(env_file), "--profile", profile, "config"], capture_output=True, text=True,
                              timeout=60, env=tool_env, check=False)
        assert done.returncode == 0, done.stderr
        return dict(yaml.safe_load(done.stdout))

    full = config("full")
    profiles = {name: set(service["profiles"]) for name, service in full["services"].items()}
    assert profiles == {"postgres": {"core", "full"}, "prefect": {"core", "full"}, "app": {"core", "full"},
                        "pool-host": {"core", "full"}, "minio": {"full"}, "otel-collector": {"full"}}
    app = full["services"]["app"]["environment"]
    assert (app["ARIEL_OBJECT_STORE_URL"], app["ARIEL_OTLP_ENDPOINT"]) == (
        "http://127.0.0.1:9000/ariel-transcripts", "http://127.0.0.1:4318")
    minio = full["services"]["minio"]
    assert (minio["environment"]["MINIO_ROOT_USER"], minio["environment"]["MINIO_ROOT_PASSWORD"]) == ("ariel", secret)
    assert "127.0.0.1:9000" in minio["command"]  # loopback only, as every service of the file
    collector = yaml.safe_load((COMPOSE_FILE.parent / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "127.0.0.1:4318"
