"""Latency from `run_agent` to the agent's first log line and to completion.

Measured in one run, on one Prefect server and one runtime image, for:
  (a) Ariel, warm: `ariel up`'s Docker worker, the run started through MCP
      `run_agent` once the pool's standby container is ready (imported);
  (b) Ariel, cold: the same, with the pool's standby removed just before, so
      the run gets a container started for it (a pool idle for 10 minutes, a
      burst of runs, a rebuilt image);
  (c) a default Prefect Docker worker (stock job template and settings, polling
      every 10 s), the same flow and parameters, started with the Prefect client.

Runs alternate between the three, so a busy spell of a shared machine falls on
all. Times come from the log line's own timestamp and the run's end time, both
on this machine's clock, so how often this script polls does not change them.
A run that times out or fails is counted as such and left out of the
percentiles; the table prints whatever happened. The benchmark stops its own
worker and removes the containers of its own pools only (pool names unique to
this benchmark run).

Usage: python bench/run_latency.py [--runs 5]   (needs Docker and the runtime image)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402 - after the path and environment are set
from fastmcp import Client  # noqa: E402
from prefect.client.orchestration import PrefectClient  # noqa: E402
from prefect.client.schemas.actions import WorkPoolCreate  # noqa: E402
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId  # noqa: E402
from prefect_docker.worker import DockerWorker  # noqa: E402

from bench.cleanup import remove_containers, stop_group  # noqa: E402
from bench.samples import Samples  # noqa: E402
from deployments.agents.compiler import DeploymentTarget, apply, compile_agent  # noqa: E402
from deployments.agents.signing import Ed25519ConfigSigner  # noqa: E402
from deployments.agents.spec import AgentSpec  # noqa: E402
from deployments.pools.standby import run_containers, waiting_standbys  # noqa: E402
from flows.signing import VERIFY_KEY_ENV  # noqa: E402
from flows.standby import READY_LINE  # noqa: E402
from tests.support import ariel_up, prefect_server, test_env  # noqa: E402

AGENT = {
    "name": "Latency probe",
    "instructions": "Say done.",
    "model": "ariel/scripted",
    "script": [{"reply": "done"}],
}
FIRST_LINE = "Agent 'Latency probe'"
RUN_TIMEOUT = 120.0


@dataclass
class RunPath:
    """One way of starting a run, and what its runs measured."""

    name: str
    first_line: Samples = field(default_factory=Samples)
    completed: Samples = field(default_factory=Samples)
    exited: Samples = field(default_factory=Samples)  # the run's end → its container no longer running

    async def record(self, client: PrefectClient, run_id: UUID, started: datetime) -> None:
        try:
            first, done = await measure(client, run_id, started)
        except TimeoutError:
            self.first_line.timeouts += 1
            self.completed.timeouts += 1
            print(f"  {self.name}: run {run_id} timed out after {RUN_TIMEOUT:.0f} s", flush=True)
            return
        except RuntimeError as exc:
            self.first_line.errors += 1
            self.completed.errors += 1
            print(f"  {self.name}: {exc}", flush=True)
            return
        self.first_line.seconds.append(first)
        self.completed.seconds.append(done)
        lingered = await container_exit(run_id, started.timestamp() + done)
        if lingered is None:
            self.exited.timeouts += 1
        else:
            self.exited.seconds.append(lingered)
        shown = "timed out" if lingered is None else f"{lingered:.2f} s"
        print(f"  {self.name}: first line {first:.2f} s, completed {done:.2f} s, container ended {shown} after",
              flush=True)


async def container_exit(run_id: UUID, ended_at: float, timeout: float = 60) -> float | None:
    """Seconds from the run's end (epoch `ended_at`) until its container no longer runs (exited or removed)."""
    engine = docker.from_env()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = run_containers(engine, run_id)
            if not running:
                return max(0.0, time.time() - ended_at)
            await asyncio.sleep(0.05)
        return None
    finally:
        engine.close()


async def measure(client: PrefectClient, run_id: UUID, started: datetime,
                  timeout: float = RUN_TIMEOUT) -> tuple[float, float]:
    """Seconds from `started` to the agent's first log line, and to the run's end."""
    deadline = time.monotonic() + timeout
    first: float | None = None
    while time.monotonic() < deadline:
        if first is None:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
            hits = [log.timestamp for log in logs if log.message.startswith(FIRST_LINE)]
            if hits:
                first = min(hits).timestamp() - started.timestamp()
        run = await client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            if not run.state.is_completed():
                raise RuntimeError(f"run {run.name} ended {run.state.name}: {run.state.message}")
            if first is not None:
                assert run.end_time is not None  # a completed run has an end time
                return first, run.end_time.timestamp() - started.timestamp()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"run {run_id} did not finish in {timeout} s")


async def baseline_deployment(client: PrefectClient, pool: str, image: str) -> UUID:
    """The same agent on a pool of the stock Docker worker: its default template, only the image changed."""
    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    template["variables"]["properties"]["image"]["default"] = image
    # The runtime refuses a configuration it cannot check: sign with a key of this benchmark's own.
    signer = Ed25519ConfigSigner.generate()
    template["variables"]["properties"]["env"]["default"] = {VERIFY_KEY_ENV: signer.verify_key}
    await client.create_work_pool(WorkPoolCreate(name=pool, type="docker", base_job_template=template))
    spec = AgentSpec.parse({**AGENT, "name": "Latency probe baseline"})
    config = spec.to_run_config(agent_id="b" * 32, org_id="bench", version=1).model_copy(
        update={"name": "Latency probe", "approved": True}
    )
    desired = compile_agent(config, "latency-probe-baseline", "bench", None,
                            DeploymentTarget(pool_name=pool, org_id="bench"), signer=signer)
    return await apply(client, desired)


def ready_standby(pool: str, timeout: float = 90) -> Any | None:
    """The pool's standby container once it has imported everything; None if none is ready within `timeout`."""
    engine = docker.from_env()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for container in waiting_standbys(engine, pool):
                if READY_LINE.encode() in container.logs():
                    return container
            time.sleep(0.2)
        return None
    finally:
        engine.close()


async def alternate(mcp_url: str, api_url: str, pool: str, image: str, runs: int, paths: list[RunPath],
                    pools: list[str]) -> None:
    """`runs` rounds of a warm and a cold Ariel run and a default-worker run; `pools` gets Ariel's pool when known."""
    warm, cold, baseline = paths
    async with Client(mcp_url) as mcp, PrefectClient(api_url) as client:
        await mcp.call_tool("create_agent", AGENT)
        await mcp.call_tool("update_agent", {"agent": "latency-probe", "action": "approve"})
        ariel_pool = (await mcp.call_tool("get_agent", {"agent": "latency-probe"})).structured_content["work_pool"]
        pools.append(ariel_pool)
        deployment_id = await baseline_deployment(client, pool, image)
        for index in range(runs):
            print(f"round {index + 1} of {runs}", flush=True)
            for path in (warm, cold):
                standby = await asyncio.to_thread(ready_standby, ariel_pool)
                if standby is None:
                    print(f"  {path.name}: no standby became ready within 90 s", flush=True)
                elif path is cold:
                    standby.remove(force=True)
                started = datetime.now(UTC)
                run = (await mcp.call_tool("run_agent", {"agent": "latency-probe"})).structured_content
                await path.record(client, UUID(run["id"]), started)
            started = datetime.now(UTC)
            made = await client.create_flow_run_from_deployment(deployment_id)
            await baseline.record(client, made.id, started)


def cell(samples: Samples, fraction: float) -> str:
    value = samples.percentile(fraction)
    return "—" if value is None else f"{value:.2f} s"


def ratio(a: Samples, b: Samples, fraction: float) -> str:
    x, y = a.percentile(fraction), b.percentile(fraction)
    return "—" if x is None or y is None or y == 0 else f"{x / y:.2f}"


def table(warm: RunPath, cold: RunPath, baseline: RunPath) -> str:
    good = " + ".join(str(len(path.completed.seconds)) for path in (warm, cold, baseline))
    rows = [
        f"| measure ({good} good runs) | Ariel warm | Ariel cold | default Prefect Docker worker "
        "| warm / default | cold / default |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, attribute in (("run_agent → first agent log line", "first_line"),
                             ("run_agent → run completed", "completed"),
                             ("run completed → its container ended", "exited")):
        a, c, b = (getattr(path, attribute) for path in (warm, cold, baseline))
        for name, fraction in (("p50", 0.5), ("p95", 0.95)):
            rows.append(f"| {label}, {name} | {cell(a, fraction)} | {cell(c, fraction)} | {cell(b, fraction)} | "
                        f"{ratio(a, b, fraction)} | {ratio(c, b, fraction)} |")
    for path in (warm, cold, baseline):
        completed = ", ".join(f"{value:.2f}" for value in path.completed.seconds) or "none"
        rows.append(f"\n{path.name}: completion times (s) {completed}; timed out {path.completed.timeouts}, "
                    f"failed {path.completed.errors}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each path (default 5)")
    parser.add_argument("--image", default="ariel-runtime:local", help="runtime image both paths run")
    args = parser.parse_args()
    baseline_pool = f"bench-latency-{uuid.uuid4().hex[:8]}"  # its containers' label is this run's alone
    paths = [RunPath("Ariel warm"), RunPath("Ariel cold"), RunPath("default")]
    pools = [baseline_pool]
    with tempfile.TemporaryDirectory(prefix="ariel-bench-") as tmp:
        home = Path(tmp)
        with prefect_server(home / "prefect") as api_url, ariel_up(home / "ariel", "docker", api_url) as up:
            print(f"Prefect API {api_url}; Ariel MCP {up.mcp_url}", flush=True)
            env = test_env(home / "worker")
            env["PREFECT_API_URL"] = api_url
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", baseline_pool, "--type", "docker"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                print(f"{args.runs} runs each, alternating Ariel warm, Ariel cold and the default Prefect Docker "
                      "worker", flush=True)
                asyncio.run(alternate(up.mcp_url, api_url, baseline_pool, args.image, args.runs, paths, pools))
            except KeyboardInterrupt:
                print("interrupted: stopping what the benchmark started", flush=True)
            except Exception as exc:  # the table still prints with what was measured
                print(f"the benchmark stopped early: {type(exc).__name__}: {exc}", flush=True)
            finally:
                stop_group(worker)
                for pool in pools:
                    remove_containers(pool)
    print()
    print(table(*paths))


if __name__ == "__main__":
    main()
