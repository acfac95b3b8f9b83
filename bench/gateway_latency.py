"""Latency the Prefect gateway adds to a proxied call, beside the same call made to Prefect directly.

One Prefect server, Ariel's gateway in front of it (served by uvicorn on
loopback, as the HTTP app serves it), one deployment and flow run in an
install's pool. The same reads alternate, call by call, between Prefect
directly and the gateway with each kind of credential: a run token reading
its run, the pool host's key reading the run and its deployment (scope checks
read Prefect once, then from the gateway's cache). Reported per route: p50
and p95 of each side, the added milliseconds and the ratio. A call past its
timeout is counted as such and left out of the percentiles; the table prints
whatever happened, and everything started is stopped.

Usage: python bench/gateway_latency.py [--calls 200]   (needs no Docker engine)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402 - after the path is set
from prefect import flow  # noqa: E402
from prefect.client.orchestration import PrefectClient  # noqa: E402
from prefect.client.schemas.actions import WorkPoolCreate  # noqa: E402

from bench.samples import Samples  # noqa: E402
from deployments.pools.work_pools import install_prefix, org_tag, pool_name  # noqa: E402
from mcp_server.gateway import Gateway  # noqa: E402
from mcp_server.gateway.run_tokens import RunTokens  # noqa: E402
from mcp_server.gateway.scopes import PoolScope, Scope  # noqa: E402
from tests.support import prefect_server, serve_asgi  # noqa: E402

INSTALL_ID = "9a7e0000000000000000000000000000"
ORG_ID = "0f3c9a1b2c3d4e5f60718293a4b5c6d7"
HOST_KEY = "ariel_ph_bench"
TIMEOUT_SECONDS = 10.0


@flow(name="gateway-bench")
def bench_flow() -> None:
    """Never run: it only gives the deployment a flow."""


def timed(client: httpx.Client, path: str, headers: dict[str, str], samples: Samples) -> None:
    started = time.perf_counter()
    try:
        answer = client.get(path, headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.TimeoutException:
        samples.timeouts += 1
        return
    except httpx.HTTPError:
        samples.errors += 1
        return
    if answer.status_code != 200:
        samples.errors += 1
        return
    samples.seconds.append(time.perf_counter() - started)


async def make_run(api_url: str) -> tuple[UUID, UUID]:
    async with PrefectClient(api_url) as client:
        pool = pool_name(INSTALL_ID, "bench", ORG_ID, "process")
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow_from_name(bench_flow.name)
        deployment_id = await client.create_deployment(flow_id=flow_id, name="bench", work_pool_name=pool,
                                                       tags=[org_tag(ORG_ID)], entrypoint="bench.py:bench_flow")
        run = await client.create_flow_run_from_deployment(deployment_id, tags=[org_tag(ORG_ID)])
        return run.id, deployment_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=200, help="calls per route and side")
    calls = parser.parse_args().calls
    tokens = RunTokens(os.urandom(32))
    host_scope = PoolScope.pool_host(install_prefix(INSTALL_ID))

    async def authenticate(token: str) -> Scope | None:
        return host_scope if token == HOST_KEY else None

    async def no_provider(_org: str, _name: str) -> None:
        return None

    results: dict[str, tuple[Samples, Samples]] = {}
    with tempfile.TemporaryDirectory() as home, prefect_server(Path(home)) as api_url:
        run_id, deployment_id = asyncio.run(make_run(api_url))
        token = tokens.mint(run_id, ORG_ID, attempt=0, ttl_seconds=3600)
        gateway = Gateway(api_url, None, tokens, authenticate=authenticate, verify_key=lambda: "",
                          open_provider=no_provider)
        with serve_asgi(gateway) as gateway_url, httpx.Client(base_url=api_url) as direct, \
                httpx.Client(base_url=f"{gateway_url}/api") as proxied:
            routes = {
                "run token: GET /flow_runs/{own}": (f"/flow_runs/{run_id}", {"Authorization": f"Bearer {token}"}),
                "pool host: GET /flow_runs/{id}": (f"/flow_runs/{run_id}", {"Authorization": f"Bearer {HOST_KEY}"}),
                "pool host: GET /deployments/{id}": (f"/deployments/{deployment_id}",
                                                     {"Authorization": f"Bearer {HOST_KEY}"}),
            }
            for name, (path, headers) in routes.items():
                straight, through = Samples(), Samples()
                for _ in range(5):  # warm both connections and the gateway's cache
                    timed(direct, path, {}, Samples())
                    timed(proxied, path, headers, Samples())
                for _ in range(calls):
                    timed(direct, path, {}, straight)
                    timed(proxied, path, headers, through)
                results[name] = (straight, through)
    print_table(results, calls)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def print_table(results: dict[str, tuple[Samples, Samples]], calls: int) -> None:
    print(f"\nGateway latency: {calls} calls per route and side, alternating (ms)\n")
    print(f"{'route':36} {'direct p50':>10} {'p95':>7} {'gateway p50':>11} {'p95':>7} {'added p50':>9} "
          f"{'ratio':>6} {'timeouts':>8} {'errors':>6}")
    for name, (straight, through) in results.items():
        d50, d95, g50, g95 = (straight.percentile(0.5), straight.percentile(0.95), through.percentile(0.5),
                              through.percentile(0.95))
        added = None if d50 is None or g50 is None else g50 - d50
        ratio = "-" if d50 is None or g50 is None else f"{g50 / d50:.2f}"
        print(f"{name:36} {ms(d50):>10} {ms(d95):>7} {ms(g50):>11} {ms(g95):>7} {ms(added):>9} {ratio:>6} "
              f"{straight.timeouts + through.timeouts:>8} {straight.errors + through.errors:>6}")
    medians = [statistics.median(t.seconds) - statistics.median(s.seconds)
               for s, t in results.values() if s.seconds and t.seconds]
    if medians:
        print(f"\nAdded by the gateway, median over routes: {statistics.median(medians) * 1000:.1f} ms "
              "(aim: 5 ms or less at p50)")


if __name__ == "__main__":
    main()
