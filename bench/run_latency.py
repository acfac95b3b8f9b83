"""Latency from `run_agent` to the agent's first log line and to completion.

Measured in one run, on one Prefect server and one runtime image, for:
  (a) Ariel: `ariel up`'s Docker worker, the run started through MCP `run_agent`;
  (b) a default Prefect Docker worker (stock job template and settings, polling
      every 10 s), the same flow and parameters, started with the Prefect client.

Times come from the log line's own timestamp and the run's end time, both on
this machine's clock, so how often this script polls does not change them.

Usage: python bench/run_latency.py [--runs 5]   (needs Docker and the runtime image)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastmcp import Client  # noqa: E402 - after the path and environment are set
from prefect.client.orchestration import PrefectClient  # noqa: E402
from prefect.client.schemas.actions import WorkPoolCreate  # noqa: E402
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId  # noqa: E402
from prefect_docker.worker import DockerWorker  # noqa: E402

from deployments.agents.compiler import DeploymentTarget, apply, compile_agent  # noqa: E402
from deployments.agents.signing import Ed25519ConfigSigner  # noqa: E402
from deployments.agents.spec import AgentSpec  # noqa: E402
from flows.signing import VERIFY_KEY_ENV  # noqa: E402
from tests.support import ariel_up, prefect_server, test_env  # noqa: E402

AGENT = {
    "name": "Latency probe",
    "instructions": "Say done.",
    "model": "ariel/scripted",
    "script": [{"reply": "done"}],
}
FIRST_LINE = "Agent 'Latency probe'"
BASELINE_POOL = "bench-prefect-default"


async def measure(client: PrefectClient, run_id: UUID, started: datetime, timeout: float = 120) -> tuple[float, float]:
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


async def ariel_runs(mcp_url: str, api_url: str, runs: int) -> list[tuple[float, float]]:
    results = []
    async with Client(mcp_url) as mcp, PrefectClient(api_url) as client:
        await mcp.call_tool("create_agent", AGENT)
        await mcp.call_tool("update_agent", {"agent": "latency-probe", "action": "approve"})
        for _ in range(runs):
            started = datetime.now(UTC)
            run = (await mcp.call_tool("run_agent", {"agent": "latency-probe"})).structured_content
            results.append(await measure(client, UUID(run["id"]), started))
    return results


async def baseline_runs(api_url: str, image: str, runs: int) -> list[tuple[float, float]]:
    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    template["variables"]["properties"]["image"]["default"] = image  # the same code; all else stock
    # The runtime refuses a configuration it cannot check: sign with a key of this benchmark's own.
    signer = Ed25519ConfigSigner.generate()
    template["variables"]["properties"]["env"]["default"] = {VERIFY_KEY_ENV: signer.verify_key}
    results = []
    async with PrefectClient(api_url) as client:
        await client.create_work_pool(WorkPoolCreate(name=BASELINE_POOL, type="docker", base_job_template=template))
        spec = AgentSpec.parse({**AGENT, "name": "Latency probe baseline"})
        config = spec.to_run_config(agent_id="b" * 32, org_id="bench", version=1).model_copy(
            update={"name": "Latency probe", "approved": True}
        )
        target = DeploymentTarget(pool_name=BASELINE_POOL, org_id="bench")
        desired = compile_agent(config, "latency-probe-baseline", "bench", None, target, signer=signer)
        deployment_id = await apply(client, desired)
        for _ in range(runs):
            started = datetime.now(UTC)
            run = await client.create_flow_run_from_deployment(deployment_id)
            results.append(await measure(client, run.id, started))
    return results


def remove_baseline_containers() -> None:
    """The stock template keeps exited containers; remove the ones this benchmark made."""
    import docker

    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": f"io.prefect.work-pool-name={BASELINE_POOL}"}):
        container.remove(force=True)
    client.close()


def p50(values: list[float]) -> float:
    return statistics.median(values)


def table(ariel: list[tuple[float, float]], baseline: list[tuple[float, float]]) -> str:
    rows = [
        f"| measure (p50 of {len(ariel)} runs) | Ariel | default Prefect Docker worker | Ariel / default |",
        "| --- | --- | --- | --- |",
    ]
    for index, label in ((0, "run_agent → first agent log line"), (1, "run_agent → run completed")):
        a = p50([r[index] for r in ariel])
        b = p50([r[index] for r in baseline])
        rows.append(f"| {label} | {a:.2f} s | {b:.2f} s | {a / b:.2f} |")
    for name, values in (("Ariel", ariel), ("default", baseline)):
        completed = ", ".join(f"{r[1]:.2f}" for r in values)
        rows.append(f"\n{name} completion times (s): {completed}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each path (default 5)")
    parser.add_argument("--image", default="ariel-runtime:local", help="runtime image both paths run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ariel-bench-") as tmp:
        home = Path(tmp)
        with prefect_server(home / "prefect") as api_url, ariel_up(home / "ariel", "docker", api_url) as up:
            print(f"Prefect API {api_url}; Ariel MCP {up.mcp_url}", flush=True)
            print(f"(a) Ariel: {args.runs} runs ...", flush=True)
            ariel = asyncio.run(ariel_runs(up.mcp_url, api_url, args.runs))
            env = test_env(home / "worker")
            env["PREFECT_API_URL"] = api_url
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", BASELINE_POOL, "--type", "docker"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                print(f"(b) default Prefect Docker worker: {args.runs} runs ...", flush=True)
                baseline = asyncio.run(baseline_runs(api_url, args.image, args.runs))
            finally:
                os.killpg(worker.pid, 2)
                worker.wait(timeout=30)
                remove_baseline_containers()
    print()
    print(table(ariel, baseline))


if __name__ == "__main__":
    main()
