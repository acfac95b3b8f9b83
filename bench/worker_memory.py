"""Memory of serving many orgs' work pools: Ariel's one worker host vs a Prefect worker per pool.

Both sides serve the same N Docker pools on one Prefect server: (a) Ariel's
`deployments.pools.worker_host` (one process, a stock `DockerWorker` object per pool);
(b) the baseline, what Prefect's docs lead to: one `prefect worker start --pool P`
process per pool. Reported: resident memory (RSS, summed over each side's
processes and their children) once every worker has polled.

Usage: python bench/worker_memory.py [--pools 5]   (needs no Docker engine: workers only poll)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect.client.orchestration import PrefectClient  # noqa: E402 - after the path is set
from prefect.client.schemas.actions import WorkPoolCreate  # noqa: E402

from deployments.pools.work_pools import docker_job_template, install_prefix, pool_name  # noqa: E402
from tests.support import descendants, prefect_server, test_env  # noqa: E402

SETTLE_SECONDS = 20  # imports done, every worker registered and polling


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    total = 0
    for each in {pid, *descendants(pid)}:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


INSTALL_ID = "be9c4000000000000000000000000000"


async def make_pools(api_url: str, count: int, prefix: str) -> list[str]:
    names = []
    async with PrefectClient(api_url) as client:
        for index in range(count):
            org_id = f"{prefix}{index:04d}".ljust(32, "0")
            name = (pool_name(INSTALL_ID, f"org-{index:04d}", org_id, "docker") if prefix == "a"
                    else f"bench-{prefix}-{index}")
            template = docker_job_template("ariel-runtime:local", org_id)
            await client.create_work_pool(WorkPoolCreate(name=name, type="docker", base_job_template=template))
            names.append(name)
    return names


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        os.killpg(process.pid, signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pools", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ariel-bench-"))
    with prefect_server(home / "prefect") as api_url:
        env = {**test_env(home), "PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": "1"}
        # Ariel's pools carry the install's prefix; the baseline's are named otherwise so the host ignores them.
        asyncio.run(make_pools(api_url, args.pools, "a"))
        baseline_pools = asyncio.run(make_pools(api_url, args.pools, "b"))

        host = [start([sys.executable, "-m", "deployments.pools.worker_host", "--type", "docker",
                       "--prefix", install_prefix(INSTALL_ID)], env)]
        time.sleep(SETTLE_SECONDS)
        ariel = sum(rss_mib(p.pid) for p in host)
        stop(host)

        workers = [start([sys.executable, "-m", "prefect", "worker", "start", "--pool", name, "--type", "docker"], env)
                   for name in baseline_pools]
        time.sleep(SETTLE_SECONDS + args.pools)  # they start one after another on 2 cores
        baseline = sum(rss_mib(p.pid) for p in workers)
        stop(workers)

    print(f"| {args.pools} Docker pools, resident memory | Ariel worker host | a Prefect worker per pool "
          "| Ariel / baseline |")
    print("| --- | --- | --- | --- |")
    print(f"| total | {ariel:.0f} MiB | {baseline:.0f} MiB | {ariel / baseline:.2f} |")
    print(f"| per pool | {ariel / args.pools:.0f} MiB | {baseline / args.pools:.0f} MiB | |")


if __name__ == "__main__":
    main()
