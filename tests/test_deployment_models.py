"""Deployment models, each started as its README section says and used through MCP as a person would.

SaaS shared: Prefect's server on PostgreSQL (not embedded SQLite), the store on
PostgreSQL, API keys; the app as two `ariel serve` replicas and the workers as
one `ariel pool-host` through replica A's gateway, every process with its own
ARIEL_HOME and the install's shared keys in its environment. A key made with
`ariel create-key`; an agent created and run through replica B, its logs read
through replica A; then everything stopped, and nothing of it left running.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import docker
import pytest

from deployments.pools.standby import POOL_LABEL
from tests.mcp_server.callers import call, client
from tests.support import (
    answers,
    fresh_postgres_database,
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
        wait_until(lambda: not engine.containers.list(all=True, filters={"label": f"{POOL_LABEL}={pool}"}), 30,
                   "the pool's containers to be gone")
    finally:
        engine.close()
