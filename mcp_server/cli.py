"""The `ariel` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from pydantic import ValidationError

from mcp_server.settings import ArielSettings


def main(argv: list[str] | None = None) -> int:
    # Before anything imports litellm: it otherwise fetches a price map from the internet.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    parser = argparse.ArgumentParser(prog="ariel", description="Workflow orchestration for AI agents, on Prefect 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start Prefect, a worker and the MCP server; Ctrl-C stops all")
    up.add_argument("--port", type=int, help="port of the HTTP app (MCP at /mcp); default ARIEL_PORT or 8765")
    up.add_argument("--worker-type", choices=["auto", "docker", "process"], help="work pool type; default auto")
    commands.add_parser("mcp", help="serve MCP over stdio, for desktop MCP clients")
    commands.add_parser("migrate", help="apply the store's pending migrations")
    commands.add_parser("build-image", help="build the runtime image if it is missing or older than the code")
    args = parser.parse_args(argv)

    overrides = {key: value for key, value in (("port", getattr(args, "port", None)),
                                                ("worker_type", getattr(args, "worker_type", None))) if value}
    try:
        settings = ArielSettings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            name = f"ARIEL_{str(error['loc'][0]).upper()}" if error["loc"] else "settings"
            print(f"ariel: {name}: {str(error['msg']).removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    try:
        return _run(args.command, settings)
    except KeyboardInterrupt:
        return 130


def _run(command: str, settings: ArielSettings) -> int:
    from deployments.exceptions import DeploymentError
    from mcp_server.exceptions import ArielError
    from mcp_server.stack import StartupFailed

    try:
        if command == "up":
            from mcp_server.stack import up

            up(settings)
        elif command == "mcp":
            _serve_stdio(settings)
        elif command == "migrate":
            asyncio.run(_migrate(settings))
            print(f"store at {settings.resolved_store_url} is up to date")
        elif command == "build-image":
            from deployments.runtime_image import RuntimeImageBuilder

            built = RuntimeImageBuilder(tag=settings.runtime_image, base_image=settings.runtime_base_image).ensure()
            if not built:
                print(f"{settings.runtime_image} is up to date")
    except (StartupFailed, ArielError, DeploymentError) as exc:
        print(f"ariel {command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_stdio(settings: ArielSettings) -> None:
    from mcp_server.server import build_mcp
    from mcp_server.stack import Runtime

    runtime = Runtime.load(settings.home)
    api_url = settings.prefect_api_url or (runtime.prefect_api_url if runtime else None)
    if api_url is None or runtime is None:
        raise SystemExit("ariel mcp: start Ariel first with `ariel up` (it records the Prefect API and work pool to use)")
    build_mcp(settings, api_url, runtime.pool_type).run(transport="stdio", show_banner=False)


async def _migrate(settings: ArielSettings) -> None:
    from mcp_server.store import Store

    store = await Store.open(settings.resolved_store_url)
    await store.close()


if __name__ == "__main__":
    raise SystemExit(main())
