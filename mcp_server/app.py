"""The HTTP app: MCP over streamable HTTP at /mcp, plus /health, /ready and docs at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Literal

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from deployments.work_pools import PoolType
from mcp_server.middleware.http_auth import AuthenticateHTTP
from mcp_server.server import build_mcp
from mcp_server.services import Services, open_services
from mcp_server.settings import ArielSettings


class Health(BaseModel):
    status: Literal["ok"] = Field(default="ok", description="Always 'ok' while the process serves requests.")


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    prefect: bool = Field(description="Whether the Prefect API answered its health check.")
    detail: str | None = Field(default=None, description="What is not ready, and why.")


def create_app(settings: ArielSettings, prefect_api_url: str, pool_type: PoolType) -> FastAPI:
    """A new app; nothing is shared between two apps made by this factory."""
    opened: list[Services] = []  # filled by the lifespan; this app's alone

    def services() -> Services:
        return opened[0]

    mcp_app = build_mcp(settings, prefect_api_url, pool_type, services=lambda: nullcontext(services())).http_app(
        path="/mcp"
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The services first: the auth middleware and the MCP server both use them.
        async with open_services(settings, prefect_api_url, pool_type) as ready:
            opened.append(ready)
            async with mcp_app.lifespan(app):
                yield
            opened.clear()

    app = FastAPI(
        title="Ariel",
        summary="Workflow orchestration for AI agents, on Prefect 3. MCP over streamable HTTP at /mcp.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(AuthenticateHTTP, services=services)

    @app.get("/health", response_model=Health, summary="Liveness: the process answers.")
    async def health() -> Health:
        return Health()

    @app.get(
        "/ready",
        response_model=Readiness,
        summary="Readiness: the Prefect API answers.",
        responses={503: {"model": Readiness, "description": "A dependency is not ready."}},
    )
    async def ready() -> JSONResponse:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                ok = (await client.get(f"{prefect_api_url}/health")).status_code == 200
            detail = None if ok else "the Prefect API answered its health check with an error"
        except httpx.HTTPError:
            ok, detail = False, f"the Prefect API at {prefect_api_url} did not answer"
        body = Readiness(status="ready" if ok else "not ready", prefect=ok, detail=detail)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    # Last: a mount at "/" shadows routes registered after it.
    app.mount("/", mcp_app)
    return app
