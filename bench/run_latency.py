"""Latency from `run_agent` to the agent's first log line and to completion.

Measured in one run, on one Prefect server, for:
  (a) Ariel, warm: `ariel up`'s Docker worker, the run started through MCP
      `run_agent` once the pool's standby container is ready (imported);
  (b) Ariel, cold: the same, with the pool's standby removed just before, so
      the run gets a container started for it (a pool idle for 10 minutes, a
      burst of runs, a rebuilt image);
  (c) a default Prefect Docker worker (stock job template and settings, polling
      every 10 s), the same flow and parameters, started with the Prefect client,
      in the full runtime image (its runs reach Prefect directly, not through
      Ariel's gateway, so they call the model themselves, with litellm).

The runtime images' sizes print under the table.

Per run, also the CPU time its container used, from the container's cgroup on
this machine (cpuacct for cgroup v1, cpu.stat for v2), read every 20 ms until
the cgroup is gone: in total (imports included), and for a warm run what it
used after it was handed the run. Then a burst: `--burst` runs asked for at
once through each path (Ariel's runs through run_agent, the default worker's
through the Prefect client), timed from the first ask to the last end, printed
as runs per minute, with the CPU per run spent meanwhile outside the runs'
containers: by each side's own processes (Ariel's app, which makes the runs'
model calls, and pool host; the default worker) and by the Prefect server.

Runs alternate between the three, so a busy spell of a shared machine falls on
all. Times come from the log line's own timestamp and the run's end time, both
on this machine's clock, so how often this script polls does not change them.
A run that times out or fails is counted as such and left out of the
percentiles; the table prints whatever happened. The benchmark stops its own
worker and removes the containers of its own pools only (pool names unique to
this benchmark run).

Usage: python bench/run_latency.py [--runs 5] [--burst 20]   (needs Docker and the runtime image)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
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
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate  # noqa: E402
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId  # noqa: E402
from prefect_docker.worker import DockerWorker  # noqa: E402

from bench.cleanup import remove_containers, stop_group  # noqa: E402
from bench.samples import Samples  # noqa: E402
from deployments.agents.compiler import DeploymentTarget, apply, compile_agent  # noqa: E402
from deployments.agents.signing import Ed25519ConfigSigner  # noqa: E402
from deployments.agents.spec import AgentSpec  # noqa: E402
from deployments.pools.run_images import lean_image_of  # noqa: E402
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
    cpu: Samples = field(default_factory=Samples)  # CPU-seconds the run's container used, in all
    cpu_in_run: Samples = field(default_factory=Samples)  # of which after a standby was handed the run
    burst: Burst | None = None

    async def record(self, client: PrefectClient, run_id: UUID, started: datetime,
                     before: float | None = None) -> None:
        """Measure run `run_id`, asked for at `started`; `before`: the CPU its standby had used when it was asked."""
        stop = threading.Event()  # set when the run failed: its container may never come
        tracker = asyncio.create_task(asyncio.to_thread(track_cpu, run_id, stop))
        try:
            first, done = await measure(client, run_id, started)
        except TimeoutError:
            stop.set()
            self.first_line.timeouts += 1
            self.completed.timeouts += 1
            print(f"  {self.name}: run {run_id} timed out after {RUN_TIMEOUT:.0f} s", flush=True)
            return
        except RuntimeError as exc:
            stop.set()
            self.first_line.errors += 1
            self.completed.errors += 1
            print(f"  {self.name}: {exc}", flush=True)
            return
        finally:
            used = await tracker  # ends when the container's cgroup is gone, or after its own timeout
        self.first_line.seconds.append(first)
        self.completed.seconds.append(done)
        lingered = await container_exit(run_id, started.timestamp() + done)
        if lingered is None:
            self.exited.timeouts += 1
        else:
            self.exited.seconds.append(lingered)
        cpu = "not read"
        if used is None:
            self.cpu.errors += 1
        else:
            self.cpu.seconds.append(used)
            cpu = f"{used:.2f} CPU-s"
            if before is not None:
                self.cpu_in_run.seconds.append(used - before)
                cpu += f" ({used - before:.2f} after the handoff)"
        shown = "timed out" if lingered is None else f"{lingered:.2f} s"
        print(f"  {self.name}: first line {first:.2f} s, completed {done:.2f} s, container ended {shown} after, "
              f"{cpu}", flush=True)


@dataclass
class Burst:
    """`runs` runs asked for at once: how many completed, and the time from the first ask to the last end.

    `platform_cpu`: CPU-seconds meanwhile of the side's own processes outside the runs' containers (Ariel: `ariel
    up`, whose app now makes the runs' model calls, and its pool host; the default: its worker); `prefect_cpu`: the
    Prefect server's, which both sides share (None where unread).
    """

    runs: int
    completed: int = 0
    failed: int = 0
    seconds: float | None = None
    platform_cpu: float | None = None
    prefect_cpu: float | None = None

    def per_run(self, cpu: float | None) -> str:
        return "—" if cpu is None or not self.completed else f"{cpu / self.completed:.2f} CPU-s"

    def __str__(self) -> str:
        took = "—" if self.seconds is None else f"{self.seconds:.1f} s"
        return (f"{self.completed} of {self.runs} completed, {self.failed} failed, first ask → last end {took}, "
                f"{self.per_minute()} runs/min")

    def per_minute(self) -> str:
        return "—" if not self.seconds or not self.completed else f"{self.completed / self.seconds * 60:.1f}"


def tree_cpu(pid: int | None) -> float | None:
    """CPU-seconds used so far by process `pid` and its descendants alive now, with the children they reaped (user
    and system, from /proc); None when it is gone or unknown."""
    if pid is None:
        return None
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        # Its own user and system time, and its children's that it has reaped (processes that ended meanwhile).
        used[int(entry)] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks
    if pid not in used:
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(used[member] for member in tree)


def server_pid(api_url: str) -> int | None:
    """The pid of the `prefect server start` serving `api_url` (this benchmark's own, by its port)."""
    port = api_url.split(":")[-1].split("/")[0]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except OSError:
            continue
        if b"server" in argv and b"start" in argv and port.encode() in argv:
            return int(entry)
    return None


def spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def cpu_seconds(container_id: str) -> float | None:
    """CPU time a running container used so far, from its cgroup; None once the cgroup is gone (or unknown)."""
    for path, scale in ((f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage", 1e-9),
                        (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat", 1e-6),
                        (f"/sys/fs/cgroup/docker/{container_id}/cpu.stat", 1e-6)):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpu.stat"):  # cgroup v2: "usage_usec N" among others
            text = next(line.split()[1] for line in text.splitlines() if line.startswith("usage_usec"))
        return int(text) * scale
    return None


def track_cpu(run_id: UUID, stop: threading.Event, timeout: float = RUN_TIMEOUT + 30,
              no_cgroup_seconds: float = 5.0) -> float | None:
    """The CPU time of run `run_id`'s container, read every 20 ms until its cgroup goes: the last reading.
    None when `stop` is set first, or no cgroup of it is found where this machine keeps them."""
    engine = docker.from_env()
    try:
        deadline = time.monotonic() + timeout
        container_id = None
        while container_id is None and time.monotonic() < deadline and not stop.is_set():
            found = run_containers(engine, run_id, running_only=False)
            if found:
                container_id = str(found[0].id)
            else:
                # Two container listings a pass load the engine that is handing the run over: not every 20 ms.
                # A container's cgroup outlives the run it holds, so its CPU is still read to the end.
                time.sleep(0.25)
    finally:
        engine.close()
    last = None
    give_up = time.monotonic() + no_cgroup_seconds  # a created container gets its cgroup when it starts
    while container_id is not None and time.monotonic() < deadline and not stop.is_set():
        reading = cpu_seconds(container_id)
        if reading is None and (last is not None or time.monotonic() > give_up):
            break  # its cgroup is gone (it ended), or was never where this looks
        last = reading if reading is not None else last
        time.sleep(0.02)
    return last


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
        # The figures are Prefect's own timestamps, not when this loop sees them: it polls gently, so as
        # not to load the server the run itself is talking to.
        await asyncio.sleep(0.5)
    raise TimeoutError(f"run {run_id} did not finish in {timeout} s")


BENCH_DIR = Path(__file__).resolve().parent
BENCH_MOUNT = "/opt/ariel/bench"
BASELINE_ENTRYPOINT = "prefect_agent.agent_on_prefect"  # bench/prefect_agent.py, in the container's path


async def baseline_deployment(client: PrefectClient, pool: str, image: str) -> UUID:
    """The same agent on a pool of the stock Docker worker: its default template, only the image changed, under
    Prefect's engine (`prefect flow-run execute`, the stock command) with each step a Prefect task
    (`bench/prefect_agent.py`, mounted into the container)."""
    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    template["variables"]["properties"]["image"]["default"] = image
    template["variables"]["properties"]["volumes"]["default"] = [f"{BENCH_DIR}:{BENCH_MOUNT}:ro"]
    # The runtime refuses a configuration it cannot check: sign with a key of this benchmark's own.
    signer = Ed25519ConfigSigner.generate()
    template["variables"]["properties"]["env"]["default"] = {VERIFY_KEY_ENV: signer.verify_key,
                                                            "PYTHONPATH": f"/opt/ariel/app:{BENCH_MOUNT}"}
    # Overwrite: the stock worker, started just before, may have made the pool already (with the stock image).
    await client.create_work_pool(WorkPoolCreate(name=pool, type="docker", base_job_template=template), overwrite=True)
    spec = AgentSpec.parse({**AGENT, "name": "Latency probe baseline"})
    config = spec.to_run_config(agent_id="b" * 32, org_id="bench", version=1).model_copy(
        update={"name": "Latency probe", "approved": True}
    )
    desired = compile_agent(config, "latency-probe-baseline", "bench", None,
                            DeploymentTarget(pool_name=pool, org_id="bench"), signer=signer)
    deployment_id = await apply(client, desired)
    await client.update_deployment(deployment_id, DeploymentUpdate(entrypoint=BASELINE_ENTRYPOINT))
    return deployment_id


def ready_standby(pool: str, timeout: float = 90) -> Any | None:
    """The pool's standby container once it has imported everything; None if none is ready within `timeout`."""
    engine = docker.from_env()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for container in waiting_standbys(engine, pool):
                try:
                    if READY_LINE.encode() in container.logs():
                        return container
                except docker.errors.NotFound:  # handed a run or retired since the listing
                    continue
            time.sleep(0.2)
        return None
    finally:
        engine.close()


async def alternate(mcp_url: str, api_url: str, pool: str, image: str, runs: int, paths: list[RunPath],
                    pools: list[str], burst: int = 0, pids: tuple[int | None, int | None] = (None, None)) -> None:
    """`runs` rounds of a warm and a cold Ariel run and a default-worker run; `pools` gets Ariel's pool when known.

    `pids`: `ariel up`'s and the default worker's, whose CPU the burst reads."""
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
                    with suppress(docker.errors.NotFound):  # gone already: the run finds no standby either way
                        standby.remove(force=True)
                before = cpu_seconds(str(standby.id)) if standby is not None and path is warm else None
                started = datetime.now(UTC)
                run = (await mcp.call_tool("run_agent", {"agent": "latency-probe"})).structured_content
                await path.record(client, UUID(run["id"]), started, before)
            started = datetime.now(UTC)
            made = await client.create_flow_run_from_deployment(deployment_id)
            await baseline.record(client, made.id, started)
        if burst:
            print(f"burst: {burst} runs at once, Ariel then the default worker", flush=True)
            await asyncio.to_thread(ready_standby, ariel_pool)
            prefect = server_pid(api_url)
            for path, ask, pid in ((warm, lambda: ask_run(mcp), pids[0]),
                                   (baseline, lambda: make_run(client, deployment_id), pids[1])):
                platform, server = tree_cpu(pid), tree_cpu(prefect)
                path.burst = await run_burst(client, burst, ask)
                path.burst.platform_cpu, path.burst.prefect_cpu = spent(platform, tree_cpu(pid)), spent(
                    server, tree_cpu(prefect))
                print(f"  {'Ariel' if path is warm else 'default'}: {path.burst}; per run, outside its container: "
                      f"{path.burst.per_run(path.burst.platform_cpu)} (own processes), "
                      f"{path.burst.per_run(path.burst.prefect_cpu)} (Prefect server)", flush=True)


async def ask_run(mcp: Client[Any]) -> UUID:
    run = (await mcp.call_tool("run_agent", {"agent": "latency-probe"})).structured_content
    assert run is not None  # run_agent answers a run or raises
    return UUID(run["id"])


async def make_run(client: PrefectClient, deployment_id: UUID) -> UUID:
    return (await client.create_flow_run_from_deployment(deployment_id)).id


async def run_burst(client: PrefectClient, runs: int, ask: Callable[[], Awaitable[UUID]],
                    timeout: float = 600) -> Burst:
    """Ask for `runs` runs at once, wait for all to end: the time from the first ask to the last end."""
    burst = Burst(runs)
    started = time.time()
    asked = await asyncio.gather(*(ask() for _ in range(runs)), return_exceptions=True)
    ids = [run_id for run_id in asked if isinstance(run_id, UUID)]
    burst.failed = runs - len(ids)
    ends: list[float] = []
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for run_id in list(pending):
            run = await client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                pending.discard(run_id)
                if run.state.is_completed() and run.end_time is not None:
                    burst.completed += 1
                    ends.append(run.end_time.timestamp())
                else:
                    burst.failed += 1
        await asyncio.sleep(0.5)
    if ends:
        burst.seconds = max(ends) - started
        # Each run's end, so that one run far behind the others shows as such.
        print("  ends after the first ask (s): " + ", ".join(f"{end - started:.1f}" for end in sorted(ends)),
              flush=True)
    if pending:
        print(f"  {len(pending)} of the burst's runs did not end within {timeout:.0f} s", flush=True)
    return burst


def cell(samples: Samples, fraction: float, unit: str = "s") -> str:
    value = samples.percentile(fraction)
    return "—" if value is None else f"{value:.2f} {unit}"


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
    for label, attribute, unit in (("run_agent → first agent log line", "first_line", "s"),
                                   ("run_agent → run completed", "completed", "s"),
                                   ("run completed → its container ended", "exited", "s"),
                                   ("CPU in the run's container, in all", "cpu", "CPU-s"),
                                   ("CPU in the container after the handoff", "cpu_in_run", "CPU-s")):
        a, c, b = (getattr(path, attribute) for path in (warm, cold, baseline))
        for name, fraction in (("p50", 0.5), ("p95", 0.95)):
            rows.append(f"| {label}, {name} | {cell(a, fraction, unit)} | {cell(c, fraction, unit)} | "
                        f"{cell(b, fraction, unit)} | {ratio(a, b, fraction)} | {ratio(c, b, fraction)} |")
    if warm.burst is not None or baseline.burst is not None:
        ariel, default = warm.burst or Burst(0), baseline.burst or Burst(0)
        per_minute = "—"
        if ariel.seconds and default.seconds and ariel.completed and default.completed:
            per_minute = f"{(ariel.completed / ariel.seconds) / (default.completed / default.seconds):.2f}"
        rows.append(f"| runs per minute, a burst of {ariel.runs} at once | {ariel.per_minute()} | | "
                    f"{default.per_minute()} | {per_minute} (higher is better) | |")
        rows.append(f"| CPU per run of the burst, its side's processes (Ariel: app and pool host; default: worker) | "
                    f"{ariel.per_run(ariel.platform_cpu)} | | {default.per_run(default.platform_cpu)} | | |")
        rows.append(f"| CPU per run of the burst, Prefect's server | {ariel.per_run(ariel.prefect_cpu)} | | "
                    f"{default.per_run(default.prefect_cpu)} | | |")
    for path in (warm, cold, baseline):
        completed = ", ".join(f"{value:.2f}" for value in path.completed.seconds) or "none"
        rows.append(f"\n{path.name}: completion times (s) {completed}; timed out {path.completed.timeouts}, "
                    f"failed {path.completed.errors}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each path (default 5)")
    parser.add_argument("--burst", type=int, default=20, help="runs asked for at once per path (0: none)")
    parser.add_argument("--image", default="ariel-runtime:local",
                        help="the full runtime image: the default worker's runs take it; Ariel's take its lean twin")
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
                asyncio.run(alternate(up.mcp_url, api_url, baseline_pool, args.image, args.runs, paths,
                                      pools, args.burst, (up.process.pid, worker.pid)))
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
    print(image_sizes(args.image))


def image_sizes(full: str) -> str:
    """The runtime images' sizes as the engine reports them (what `docker images` shows)."""
    client = docker.from_env()
    try:
        sizes = []
        for name in (lean_image_of(full) or full, full):
            try:
                sizes.append(f"{name} {int(client.images.get(name).attrs['Size']) / 1e6:.0f} MB")
            except (docker.errors.ImageNotFound, TypeError):
                sizes.append(f"{name} missing")
        return "runtime images: " + ", ".join(sizes) + " (Ariel's pools run the first unless a run needs the second)"
    finally:
        client.close()


if __name__ == "__main__":
    main()
