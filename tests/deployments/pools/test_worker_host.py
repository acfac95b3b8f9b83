"""One worker-host process serves every org's pool, including pools made after it started."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate

from deployments.pools.work_pools import install_prefix
from mcp_server.settings import ArielSettings
from mcp_server.store import Store
from tests.mcp_server.callers import call
from tests import support
from tests.support import serve_app, wait_until


@pytest.fixture
def worker_host(prefect_api: str, tmp_path: Path) -> Iterator[list[str]]:
    install = asyncio.run(install_id(tmp_path / "home"))
    env = {**support.test_env(tmp_path), "PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PYTHONPATH": os.getcwd()}
    log = tmp_path / "worker-host.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "deployments.pools.worker_host", "--type", "process",
                                    "--prefix", install_prefix(install)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    try:
        yield lines
    finally:
        os.killpg(process.pid, 2)  # SIGINT: Prefect workers stop on it
        process.wait(timeout=60)
        lines.extend(log.read_text().splitlines())


async def test_pools_of_new_orgs_are_served_and_deleted_ones_let_go(
    worker_host: list[str], prefect_api: str, tmp_path: Path
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


async def install_id(home: Path) -> str:
    home.mkdir()
    store = await Store.open(ArielSettings(home=home).resolved_store_url)
    try:
        return await store.installation_id()
    finally:
        await store.close()


def _read(tmp_path: Path) -> list[str]:
    return (tmp_path / "worker-host.log").read_text().splitlines()
