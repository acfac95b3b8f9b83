"""The HTTP app: MCP over streamable HTTP at /mcp, plus /health, /ready, docs at /docs and the sign-in pages /oauth/*.

Every request passes, outermost first: security headers, the unhandled-error
guard, CORS, the per-address limit of requests without valid credentials, the
body limit, authentication (see `mcp_server.http.hardening`, `.rate_limit`).
MCP keeps no session: each request is its own caller's. Tool calls are
limited per user inside the MCP server (`mcp_server.tools.middleware`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, nullcontext, suppress
from datetime import timedelta
from typing import Literal

import httpx
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pydantic import BaseModel, Field
from starlette.middleware.cors import CORSMiddleware

from deployments.pools.readiness import polling_workers
from deployments.pools.work_pools import PoolType, install_prefix
from deployments.runs.recovery import keep_recovering
from mcp_server.gateway import Gateway
from mcp_server.gateway.models import ModelCalls, leaking_settings
from mcp_server.gateway.run_tokens import RunTokens
from mcp_server.gateway.telemetry import Collector
from mcp_server.http.authenticate import AuthenticateHTTP
from mcp_server.http.gateway import ServeGateway, gateway_scope
from mcp_server.http.hardening import (
    INTERNAL_ERROR,
    CatchUnhandled,
    LimitBody,
    LoopbackOnly,
    SecurityHeaders,
    docs_csp,
)
from mcp_server.http.rate_limit import LimitUnauthenticated
from mcp_server.http.sign_in_pages import sign_in_routes
from mcp_server.http.transcripts import add_transcript_route
from mcp_server.http.warm_models import WarmModelCalls
from mcp_server.services.container import Services, open_services
from mcp_server.services.leadership import RUN_RECOVERY_LEASE, while_leading
from mcp_server.services.mcp_probe import private_refusal
from mcp_server.services.rate_limits import unauthenticated_limit
from mcp_server.services.retention import keep_forgetting
from mcp_server.services.telemetry import start_telemetry
from mcp_server.settings import TRUSTING_PROFILES, ArielSettings
from mcp_server.tools.server import build_mcp

log = logging.getLogger("ariel.http")

CHECK_TIMEOUT_SECONDS = 5.0
READY_CACHE_SECONDS = 2.0
"""/ready is public and unthrottled: probes within this long share one round of checks against the store and Prefect."""

# What MCP clients send and read across origins (streamable HTTP: sessions, protocol version, resumption).
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Accept", "Mcp-Session-Id", "Mcp-Protocol-Version",
                        "Last-Event-ID"]
CORS_RESPONSE_HEADERS = ["Mcp-Session-Id", "WWW-Authenticate", "Retry-After"]

CheckName = Literal["store", "prefect", "worker"]
WHAT_TO_DO: dict[CheckName, str] = {
    "store": "check that the database ARIEL_STORE_URL names is up and reachable",
    "prefect": "is the Prefect server running? `ariel up` starts one, ARIEL_PREFECT_API_URL names another",
    "worker": "see the server log",
}


class Health(BaseModel):
    status: Literal["ok"] = Field(default="ok", description="Always 'ok' while the process serves requests.")


class Check(BaseModel):
    name: CheckName = Field(description="What was checked.")
    ok: bool = Field(description="Whether it is ready.")
    message: str = Field(description="What was found; when not ready, what to do.")


class Readiness(BaseModel):
    status: Literal["ready", "not ready"] = Field(description="'ready' when every check is ok.")
    checks: list[Check] = Field(
        description="The control-plane store answers; the Prefect API answers; a worker polls this install's pools."
    )


class InternalError(BaseModel):
    error: Literal["internal error; see the server log"] = INTERNAL_ERROR


def create_app(settings: ArielSettings, prefect_api_url: str, pool_type: PoolType) -> FastAPI:
    """A new app; nothing is shared between two apps made by this factory (limits and caches included)."""
    opened: list[Services] = []  # filled by the lifespan; this app's alone
    model_calls: list[ModelCalls] = []  # the same

    def services() -> Services:
        return opened[0]

    def current_model_calls() -> ModelCalls | None:
        return model_calls[0] if model_calls else None

    # Off unless a collector is set; on, this app's requests, outbound calls and queries are traced.
    telemetry = start_telemetry(settings)
    collector = Collector(telemetry.endpoint, telemetry.headers) if telemetry is not None else None
    gateway = Gateway(prefect_api_url, settings.prefect_credential(), RunTokens(settings.run_token_secret()),
                      authenticate=lambda token: gateway_scope(settings, services(), token),
                      verify_key=lambda: services().agents.signer.verify_key,
                      open_provider=lambda org_id, name: services().secrets.open_provider(org_id, name),
                      open_tool_servers=lambda org_id, ids: services().tool_servers.open_for_run(org_id, ids),
                      tool_listings=lambda: services().tool_servers, journals=lambda: services().journal,
                      wakeups=lambda: services().wakeups, transcripts=lambda: services().transcripts,
                      collector=collector, models=lambda: model_calls[0])
    # Stateless: no MCP session is kept in a process, so any of several app processes behind a load balancer
    # answers any request, and a restart loses no client's session. Progress still streams on each call's own
    # response; Ariel sends nothing unasked on a session's stream (no sampling, elicitation or list_changed) to
    # lose. One mode for every profile, so every test of the tools runs the mode a shared server runs.
    mcp = build_mcp(settings, prefect_api_url, pool_type, services=lambda: nullcontext(services()))
    mcp.add_middleware(WarmModelCalls(current_model_calls))
    mcp_app = mcp.http_app(path="/mcp", stateless_http=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The services first: the auth middleware and the MCP server both use them.
        async with open_services(settings, prefect_api_url, pool_type) as ready:
            opened.append(ready)
            # Runs' model calls leave from here: guarded as the control plane's other connections to the outside.
            model_calls.append(ModelCalls(ready.tool_servers.protected,
                                          None if settings.mcp_private_networks else private_refusal))
            if leaking := leaking_settings(os.environ):
                log.warning("The gateway makes runs' model calls in this process, and litellm would carry %s from "
                            "its environment into them (where calls go, OpenAI's organization): unset them here",
                            ", ".join(leaking))
            if telemetry is not None:
                telemetry.instrument_store(ready.store.engine)

            async def maintain() -> None:
                # Bring back the runs the install's workers lost; forget journals and transcripts past their retention.
                # A task group: one loop failing stops the other too, and the lease is asked for afresh.
                # Untraced: polls every few seconds, not a person's request.
                with suppress_instrumentation():
                    await maintain_loops()

            async def maintain_loops() -> None:
                async with asyncio.TaskGroup() as loops:
                    loops.create_task(keep_recovering(
                        ready.agents.prefect_client, install_prefix(ready.agents.install_id),
                        max_retries=settings.run_retries, silence_seconds=settings.run_silence_seconds,
                        start_seconds=settings.run_start_seconds,
                        hosting=ready.runs.hosting,
                    ))
                    loops.create_task(keep_forgetting(ready.journal.forget_older_than, "run journal steps",
                                                      timedelta(hours=settings.journal_retention_hours)))
                    if settings.transcript_retention_days:
                        async def forget_transcripts(retention: timedelta) -> int:
                            orgs = [org.id for org in await ready.store.all_orgs()]
                            return await ready.transcripts.forget_older_than(retention, orgs)

                        loops.create_task(keep_forgetting(forget_transcripts, "transcript entries",
                                                          timedelta(days=settings.transcript_retention_days)))

            # One app process of the install at a time: two would retry one crashed run twice.
            maintaining = asyncio.create_task(while_leading(ready.store, RUN_RECOVERY_LEASE, maintain))
            try:
                async with mcp_app.lifespan(app):
                    yield
            finally:
                maintaining.cancel()
                with suppress(asyncio.CancelledError):
                    await maintaining
                opened.clear()
                await gateway.aclose()
                if telemetry is not None:
                    await asyncio.to_thread(telemetry.shutdown)  # off the loop: it waits for the collector

    app = FastAPI(
        title="Ariel",
        summary="Workflow orchestration for AI agents, on Prefect 3. MCP over streamable HTTP at /mcp.",
        description=(
            f"Request bodies over {settings.max_body_bytes} bytes get 413. "
            + (f"More than {settings.unauthenticated_rate_limit_per_minute} requests a minute without valid "
               "credentials from one address get 429 with a Retry-After header (/health and /ready are not counted). "
               if settings.unauthenticated_rate_limit_per_minute else "")
            + "Unexpected errors answer 500 without details; the server log has them."
        ),
        version="0.1.0",
        lifespan=lifespan,
        # Served below with a Content-Security-Policy that admits exactly what the page loads; no ReDoc page.
        docs_url=None,
        redoc_url=None,
        responses={
            500: {"model": InternalError, "description": "An unexpected error; the server log has the details."}
        },
    )
    # add_middleware wraps: the last added runs first.
    app.add_middleware(AuthenticateHTTP, services=services)
    app.add_middleware(LimitBody, max_bytes=settings.max_body_bytes)
    # Outside authentication, which decides what it counts: only requests nobody proved who sent.
    app.add_middleware(LimitUnauthenticated, limit=unauthenticated_limit(settings))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_RESPONSE_HEADERS,
        # Bearer tokens, not cookies: a page never needs the browser's credentials.
        allow_credentials=False,
    )
    if settings.auth_mode in ("none", "dev"):
        app.add_middleware(LoopbackOnly, allowed_origins=settings.cors_origins)
    # Workers and runs reach Prefect through the gateway, with their own credentials and limits: none of the
    # MCP side's middleware below this applies to them.
    app.add_middleware(ServeGateway, gateway=gateway)
    app.add_middleware(CatchUnhandled)
    app.add_middleware(SecurityHeaders)
    if telemetry is not None:
        telemetry.instrument_app(app)  # outermost: the request's span covers all of the above

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root_path = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=f"{root_path}{app.openapi_url}",
            title=f"{app.title} - API docs",
            # No spec validation badge: it would send the spec's address to swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = docs_csp(bytes(page.body).decode())
        return page

    @app.get("/health", response_model=Health, summary="Liveness: the process answers.")
    async def health() -> Health:
        return Health()

    async def check_store() -> Check:
        if not opened:
            return Check(name="store", ok=False, message="the app is starting or stopping; ask again shortly")
        try:
            await services().store.installation_id()
        except Exception as exc:
            log.warning("readiness: the store did not answer", exc_info=True)
            return Check(name="store", ok=False,
                         message=f"the control-plane store did not answer ({_reason(exc)}); {WHAT_TO_DO['store']}")
        return Check(name="store", ok=True, message="the control-plane store answered")

    async def check_prefect() -> Check:
        try:
            async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_SECONDS) as client:
                answer = await client.get(f"{prefect_api_url}/health")
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("readiness: the Prefect API at %s did not answer: %s", prefect_api_url, exc)
            return Check(name="prefect", ok=False,
                         message=f"the Prefect API did not answer its health check ({_reason(exc)}); "
                         f"{WHAT_TO_DO['prefect']}")
        return Check(name="prefect", ok=True, message="the Prefect API answered")

    async def check_worker() -> Check:
        if not opened:
            return Check(name="worker", ok=False, message="the app is starting or stopping; ask again shortly")
        try:
            async with services().agents.prefect_client() as client:
                census = await polling_workers(client, services().agents.install_id, pool_type)
        except Exception as exc:
            log.warning("readiness: could not read this install's workers from Prefect", exc_info=True)
            return Check(name="worker", ok=False, message=f"could not ask the Prefect API which workers poll this "
                         f"install's work pools ({_reason(exc)}); {WHAT_TO_DO['worker']}")
        if not census.pools:
            if settings.profile not in TRUSTING_PROFILES:  # a shared server starts with none: no run can wait yet
                return Check(name="worker", ok=True, message=f"no {pool_type} work pool yet: each organization's "
                             "first agent makes its own")
            return Check(name="worker", ok=False, message=f"this install has no {pool_type} work pool yet, so no "
                         "worker can poll one; `ariel up` makes the first "
                         "(and each organization's first agent its own)")
        if not census.polling_workers:
            return Check(name="worker", ok=False, message=f"no worker is polling this install's {pool_type} work pools "
                         f"({len(census.pools)}); is `ariel up` (or `ariel pool-host`) running? It starts the worker "
                         "host.")
        return Check(name="worker", ok=True, message=f"{census.polling_workers} worker(s) polling this install's "
                     f"{pool_type} work pools")

    async def prefect_then_worker() -> tuple[Check, Check]:
        prefect = await _within(check_prefect(), "prefect")
        if not prefect.ok:
            return prefect, Check(name="worker", ok=False, message="not checked: the Prefect API did not answer")
        return prefect, await _within(check_worker(), "worker")

    last: list[tuple[float, Readiness]] = []  # this app's latest answer and when it was made
    checking = asyncio.Lock()

    async def readiness() -> Readiness:
        async with checking:
            if last and time.monotonic() - last[0][0] < READY_CACHE_SECONDS:
                return last[0][1]
            store, (prefect, worker) = await asyncio.gather(_within(check_store(), "store"), prefect_then_worker())
            checks = [store, prefect, worker]
            answer = Readiness(status="ready" if all(c.ok for c in checks) else "not ready", checks=checks)
            last[:] = [(time.monotonic(), answer)]
            return answer

    @app.get(
        "/ready",
        response_model=Readiness,
        summary="Readiness: the store and the Prefect API answer, and a worker polls this install's pools.",
        responses={
            503: {"model": Readiness, "description": "Not ready: each check says what is missing and what to do."}
        },
    )
    async def ready() -> JSONResponse:
        answer = await readiness()
        return JSONResponse(answer.model_dump(), status_code=200 if answer.status == "ready" else 503)

    # A sign-in link's page, and where browsers land after signing in to an OAuth-protected MCP server
    # (manage_tools); public: the one-time state they carry is the credential (mcp_server.http.authenticate).
    app.router.routes.extend(sign_in_routes(lambda: services().sign_ins))

    add_transcript_route(app, services)

    # The gateway's model calls (None until the app has started), for whoever embeds the app.
    app.state.model_calls = current_model_calls
    # Called by the server as it begins to stop (serving.py): held worker polls end at once, not cancelled.
    app.state.release_holds = lambda: opened[0].wakeups.release() if opened else None

    # Last: a mount at "/" shadows routes registered after it.
    app.mount("/", mcp_app)
    return app


async def _within(check: Awaitable[Check], name: CheckName) -> Check:
    """The check's answer, or a not-ready one when it takes longer than a probe can wait."""
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("readiness: the %s check took longer than %s s", name, CHECK_TIMEOUT_SECONDS)
        return Check(name=name, ok=False,
                     message=f"no answer within {CHECK_TIMEOUT_SECONDS:.0f} s; {WHAT_TO_DO[name]}")


def _reason(exc: BaseException) -> str:
    """A short cause for a public message: the exception's type and, for HTTP errors, the status (no addresses)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__

