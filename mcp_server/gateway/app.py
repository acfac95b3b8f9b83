"""The gateway's ASGI app: authenticate, decide, then proxy to the Prefect API with the control plane's credential."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any
from uuid import UUID

import httpx
from opentelemetry.instrumentation.utils import suppress_instrumentation
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from deployments.pools.run_images import calls_models_here
from deployments.providers import short_name
from deployments.runs.attempts import attempt_of
from flows.fingerprints import fingerprint
from mcp_server.gateway.events import admits, stamped_heartbeat
from mcp_server.gateway.journal import JOURNAL_ROUTE, Journals, serve_journal
from mcp_server.gateway.listing import (
    LISTING_ROUTE,
    ToolListings,
    bounded_body,
    live_or_refused,
    refused_for,
    serve_listing,
)
from mcp_server.gateway.models import MODEL_ROUTE, ModelCalls, checked_config, serve_model
from mcp_server.gateway.ownership import NotLive, Ownership, org_ids
from mcp_server.gateway.rules import Rewrite, Rules, Verdict
from mcp_server.gateway.run_tokens import RunTokens
from mcp_server.gateway.scopes import PoolScope, RunScope, Scope
from mcp_server.gateway.telemetry import OTLP_ROUTE, Collector, TelemetryBudget, serve_otlp
from mcp_server.gateway.transcript import TRANSCRIPT_ROUTE, Transcripts, serve_transcript
from mcp_server.services.exceptions import ArielError
from mcp_server.services.secrets import ProviderSecret
from mcp_server.services.wakeups import Wakeups
from mcp_server.store import StoreError

log = logging.getLogger("ariel.gateway")

RUN_ROUTE = "/ariel/v1/run"  # a run's checked configuration and the secrets it names
WORKER_ROUTE = "/ariel/v1/worker"  # which pool a worker key serves; which pools the pool host's key does
"""Where the HTTP app serves the gateway: clients use `PREFECT_API_URL=<Ariel's URL>/prefect/api`."""

MAX_BODY_BYTES = 16 * 1024 * 1024  # above Prefect's own log batch limit
RUN_TOKEN_SLACK_SECONDS = 900  # past the run's own time budget: retries, a slow start, the last logs
DEFAULT_RUN_SECONDS = 300
# Headers a client's request carries on to Prefect; never its credential.
_FORWARDED_HEADERS = ("content-type", "accept", "user-agent", "x-prefect-api-version")
_UNAUTHENTICATED = {"detail": "Ariel's Prefect gateway needs a worker key or run token (PREFECT_API_KEY, or "
                              "PREFECT_API_AUTH_STRING as '<anything>:<key>')"}

Authenticate = Callable[[str], Awaitable[Scope | None]]
OpenProvider = Callable[[str, str], Awaitable[ProviderSecret | None]]
OpenToolServers = Callable[[str, list[str]], Awaitable[dict[str, dict[str, Any]]]]
"""`(org_id, server_ids)` → per server id `{"headers": {...}, "pins": {...}}` or `{"error": "<plain reason>"}`
(`ToolServerService.open_for_run`)."""


def presented_token(header: str | None) -> str | None:
    """The credential in an Authorization header: a bearer token, or the password of HTTP basic auth.

    Prefect clients send `PREFECT_API_KEY` as a bearer token and `PREFECT_API_AUTH_STRING` (`user:password`) as
    basic auth; the gateway takes the key from either.

    >>> presented_token("Bearer ariel_rt_x")
    'ariel_rt_x'
    >>> presented_token("Basic " + base64.b64encode(b"run:ariel_rt_x").decode())
    'ariel_rt_x'
    """
    if not header:
        return None
    kind, _, value = header.partition(" ")
    if kind.lower() == "bearer":
        return value.strip() or None
    if kind.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return auth_string_token(decoded)
    return None


def auth_string_token(auth_string: str) -> str | None:
    """The key inside an auth string `user:key` (or a bare key)."""
    return auth_string.partition(":")[2] or auth_string or None


def run_environment(token: str) -> dict[str, str]:
    """What a run's container gets in place of its worker's credential: its own token, both ways a client sends one."""
    return {"PREFECT_API_KEY": token, "PREFECT_API_AUTH_STRING": f"run:{token}"}


MAX_SUBSCRIPTIONS_PER_RUN = 2
"""Prefect's engine opens one per flow run (its suspension observer); a reconnect may briefly overlap it. Ariel's own
engine (`flows.engine`) opens none: these serve runs of runtime images made before it, which a customer's worker
may still run."""
SUSPENDED_EVENT = "prefect.flow-run.Suspended"  # what Prefect's suspension observer subscribes to, alone

class Gateway:
    """One gateway: its own upstream connections and caches (nothing shared between two)."""

    def __init__(self, upstream_url: str, upstream_auth: str | None, tokens: RunTokens,
                 authenticate: Authenticate, verify_key: Callable[[], str], open_provider: OpenProvider,
                 open_tool_servers: OpenToolServers | None = None,
                 tool_listings: Callable[[], ToolListings] | None = None,
                 journals: Callable[[], Journals] | None = None,
                 wakeups: Callable[[], Wakeups] | None = None,
                 transcripts: Callable[[], Transcripts] | None = None,
                 collector: Collector | None = None,
                 models: Callable[[], ModelCalls] | None = None) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self._upstream_auth = upstream_auth
        headers = {"Authorization": "Basic " + base64.b64encode(upstream_auth.encode()).decode()} if upstream_auth \
            else {}
        self._client = httpx.AsyncClient(base_url=self.upstream_url, headers=headers, timeout=30.0)
        self.tokens = tokens
        self._authenticate = authenticate
        self._verify_key = verify_key
        self._open_provider = open_provider
        self._open_tool_servers = open_tool_servers
        self._tool_listings = tool_listings
        self._journals = journals
        self._wakeups = wakeups
        self._transcripts = transcripts
        self._collector = collector
        # Without the app's (an embedding, a test): guarded by the Prefect API behind it, private networks allowed.
        own_models = ModelCalls()
        self._models = models or (lambda: own_models)
        # Its own client: the upstream one carries the Prefect credential, which the collector must never get.
        self._collector_client = httpx.AsyncClient(timeout=10.0) if collector is not None else None
        self.ownership = Ownership(self._client)
        self.rules = Rules(self.ownership, self._scheduled_runs)
        self._subscriptions: dict[UUID, int] = {}  # run id → its open /events/out subscriptions
        self._telemetry_budget = TelemetryBudget()

    def __repr__(self) -> str:
        return f"Gateway(upstream={self.upstream_url!r})"

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._collector_client is not None:
            await self._collector_client.aclose()

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        """Serve one request whose path is relative to the gateway (`/api/…`)."""
        # Untraced (when telemetry is on): workers poll every second, and a run's own spans come from the run.
        with suppress_instrumentation():
            await self._serve(scope, receive, send)

    async def _serve(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = await self._http(Request(scope, receive))
            await response(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send))
        elif scope["type"] == "lifespan":  # served on its own (the HTTP app mounts it and closes it itself)
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await self.aclose()
            await send({"type": "lifespan.shutdown.complete"})

    async def scope_of(self, token: str | None) -> Scope | None:
        if not token:
            return None
        run = self.tokens.verify(token)
        return run if run is not None else await self._authenticate(token)

    # HTTP ---------------------------------------------------------------------------------------------------

    async def _http(self, request: Request) -> Response:
        path = request.url.path
        if not path.startswith(("/api/", "/ariel/")):
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        caller = await self.scope_of(presented_token(request.headers.get("authorization")))
        if caller is None:
            return JSONResponse(_UNAUTHENTICATED, status_code=401)
        if path.startswith("/ariel/"):
            return await self._ariel(request, caller)
        body = await bounded_body(request, MAX_BODY_BYTES)
        if body is None:
            return JSONResponse({"detail": f"request bodies are limited to {MAX_BODY_BYTES} bytes"}, status_code=413)
        api_path = path.removeprefix("/api")
        try:
            verdict = await self.rules.decide(caller, request.method, api_path, body)
            if verdict.stand_in is not None:
                log.warning("gateway: %s asked for %s %s outside its scope", caller.label, request.method, api_path)
                return await self._forward(request, verdict.stand_in, body, None, swap=verdict.swapped)
            if verdict.answer is not None:
                log.warning("gateway: %s: %s %s answered by the gateway", caller.label, request.method, api_path)
                return JSONResponse(verdict.answer, status_code=verdict.status)
            if not verdict.allowed:
                log.warning("gateway: refused %s: %s %s (%s)", caller.label, request.method, api_path, verdict.detail)
                return JSONResponse({"detail": verdict.detail}, status_code=verdict.status)
            if verdict.hold is not None and self._wakeups is not None:
                return await self._held(request, api_path, body, verdict, self._wakeups())
            return await self._forward(request, api_path, verdict.body if verdict.body is not None else body,
                                       verdict.rewrite)
        except httpx.HTTPError as exc:
            log.warning("gateway: the Prefect API at %s did not answer: %s", self.upstream_url, exc)
            return JSONResponse({"detail": "the Prefect API behind Ariel's gateway did not answer; try again"},
                                status_code=503)

    async def _held(self, request: Request, api_path: str, body: bytes, verdict: Verdict,
                    wakeups: Wakeups) -> Response:
        """Prefect's answer; when it has no run for the pool, asked again as soon as the pool gets one."""
        assert verdict.hold is not None
        ticket = wakeups.ticket(verdict.hold)  # before asking: a run made mid-ask still wakes the hold
        answer = await self._forward(request, api_path, body, verdict.rewrite)
        nothing = answer.status_code == 200 and bytes(answer.body).strip() == b"[]"
        if nothing and await wakeups.wait(verdict.hold, ticket):
            answer = await self._forward(request, api_path, body, verdict.rewrite)
        return answer

    async def _forward(self, request: Request, api_path: str, body: bytes, rewrite: Rewrite | None,
                       swap: tuple[str, str] | None = None) -> Response:
        headers = {name: value for name in _FORWARDED_HEADERS if (value := request.headers.get(name))}
        answer = await self._client.request(request.method, api_path, params=str(request.query_params),
                                            content=body, headers=headers)
        content = answer.content
        if swap is not None:
            # Prefect names the missing object in its answer: name the one asked about, as for any missing one.
            content = content.replace(swap[0].encode(), swap[1].encode())
        if rewrite is not None and answer.is_success:
            content = json.dumps(await rewrite(answer.json())).encode()
        kept = {"content-type": answer.headers["content-type"]} if "content-type" in answer.headers else {}
        return Response(content, status_code=answer.status_code, headers=kept)

    # Ariel's own routes -------------------------------------------------------------------------------------

    async def _ariel(self, request: Request, caller: Scope) -> Response:
        route = (request.method, request.url.path)
        if route == ("GET", RUN_ROUTE) and isinstance(caller, RunScope):
            return await self._run_context(caller)
        if route == ("POST", MODEL_ROUTE) and isinstance(caller, RunScope):
            return await serve_model(request, caller, self.ownership, self._verify_key(), self._models(),
                                     self._open_provider, self.upstream_url)
        if route[0] in ("GET", "POST") and route[1] == LISTING_ROUTE and isinstance(caller, RunScope):
            listings = self._tool_listings() if self._tool_listings is not None else None
            return await serve_listing(request, caller, self.ownership, self._verify_key(), listings)
        if route[0] in ("GET", "POST") and route[1] == JOURNAL_ROUTE and isinstance(caller, RunScope):
            journals = self._journals() if self._journals is not None else None
            return await serve_journal(request, caller, self.ownership, journals)
        if route[0] == "POST" and route[1].startswith(f"{OTLP_ROUTE}/") and isinstance(caller, RunScope):
            return await serve_otlp(request, caller, self.ownership, self._collector, self._collector_client,
                                    self._telemetry_budget)
        if route == ("POST", TRANSCRIPT_ROUTE) and isinstance(caller, RunScope):
            transcripts = self._transcripts() if self._transcripts is not None else None
            return await serve_transcript(request, caller, self.ownership, transcripts)
        if route == ("GET", WORKER_ROUTE) and isinstance(caller, PoolScope) and caller.pool is not None:
            return JSONResponse({"work_pool": caller.pool, "org_id": caller.org_id})
        if route == ("GET", WORKER_ROUTE) and isinstance(caller, PoolScope) and caller.prefix is not None:
            return JSONResponse({"pool_prefix": caller.prefix, "pool_type": caller.pool_type,
                                 "runtime_image": caller.image})
        return JSONResponse({"detail": f"{route[0]} {route[1]} is not open to {caller.label}"}, status_code=403)

    async def _run_context(self, caller: RunScope) -> Response:
        """What a run may have of the control plane: its configuration checked, then the secrets it names, and
        where its model calls are made.

        The configuration is read from Prefect, not taken from the run: a run whose parameters were changed
        outside Ariel gets `tampered` and no secret. A run on Ariel's pools gets no provider key: the gateway
        makes its model calls (`mcp_server.gateway.models`); one on its org's own hardware makes them itself.
        """
        now = await live_or_refused(self.ownership, caller)  # its token outlives the run, its secrets not
        if isinstance(now, JSONResponse):
            return now
        config = checked_config(now, caller, self._verify_key())
        if isinstance(config, JSONResponse):
            return config
        here = calls_models_here(now.pool, config)
        answer: dict[str, Any] = {"provider": None, "models": "here" if here else "gateway"}
        if not here:
            models = self._models()
            models.warm()  # the run's first model call follows: litellm is imported meanwhile
            models.remember(caller, config, now.pool)  # checked now: its calls need not read the run again
        if config.provider:
            try:
                secret = await self._open_provider(caller.org_id, short_name(config.provider))
            except (ArielError, StoreError) as exc:
                log.warning("gateway: %s: provider %r: %s", caller.label, config.provider, exc)
                return refused_for(exc, 500)
            if secret is None:
                return JSONResponse({"error": "not_found", "detail": f"no provider {short_name(config.provider)!r} "
                                     "in this organization; manage_secrets set_provider makes one"}, status_code=404)
            if here:
                answer["provider"] = {"name": secret.name, "api_key": secret.api_key, "api_base": secret.api_base}
            else:
                # The key's fingerprint alone: enough to redact the key should the run meet it (a tool fetched it, a
                # person pasted it). Beside `provider`, left null: a runtime older than this gateway, which would
                # call the model itself, stops with this detail instead of a KeyError.
                answer["provider_fingerprint"] = fingerprint(secret.api_key)
                answer["detail"] = ("this Ariel's gateway calls the model for runs on its pools, and the runtime "
                                    "image is older than its app: build it again (ariel build-image)")
        server_ids = list(dict.fromkeys(ref.server_id for ref in config.mcp_servers))
        if server_ids:
            try:
                answer["mcp"] = await self._tool_servers(caller.org_id, server_ids)
            except (ArielError, StoreError) as exc:
                log.warning("gateway: %s: MCP servers: %s", caller.label, exc)
                return refused_for(exc, 500)
        return JSONResponse(answer)

    async def _tool_servers(self, org_id: str, server_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each server's headers and pins, or why the run may not use it; only the ids asked about."""
        if self._open_tool_servers is None:
            # A gateway built without the registry (an embedding that predates it): every server is unavailable.
            return {server_id: {"error": "this Ariel install hands out no MCP servers to runs"}
                    for server_id in server_ids}
        opened = await self._open_tool_servers(org_id, server_ids)
        return {server_id: opened.get(server_id) or {"error": "it no longer exists in this organization"}
                for server_id in server_ids}

    def _scheduled_runs(self, scope: PoolScope) -> Rewrite:
        """Hands each run a worker is given its own token, in the job variables the worker starts it with.

        A stock worker copies its own credential into every container's environment; the run's `env` job
        variable overrides it, so the worker key never reaches a run.
        """
        async def hand_out_tokens(items: Any) -> Any:
            handed = []
            for item in items if isinstance(items, list) else []:
                run = item.get("flow_run") if isinstance(item, dict) else None
                if not isinstance(run, dict):
                    continue
                orgs = org_ids(run.get("tags"))
                if len(orgs) != 1 or (scope.org_id is not None and scope.org_id not in orgs):
                    # Not Ariel's (or tagged for another org): without an org there is no token to give.
                    log.warning("gateway: flow run %s in pool %s has no single org tag; it is not handed out",
                                run.get("id"), run.get("work_pool_name"))
                    continue
                run_count = run.get("run_count")
                labels = run.get("labels")
                token = self.tokens.mint(UUID(str(run["id"])), next(iter(orgs)),
                                         attempt=run_count if isinstance(run_count, int) else 0,
                                         generation=attempt_of(labels if isinstance(labels, dict) else None),
                                         ttl_seconds=_run_seconds(run) + RUN_TOKEN_SLACK_SECONDS)
                variables = dict(run.get("job_variables") or {})
                variables["env"] = {**(variables.get("env") or {}), **run_environment(token)}
                run["job_variables"] = variables
                handed.append(item)
            return handed
        return hand_out_tokens

    # Websockets -------------------------------------------------------------------------------------------

    async def _websocket(self, websocket: WebSocket) -> None:
        path = websocket.url.path
        if path not in ("/api/events/in", "/api/events/out"):
            await websocket.close(code=1008, reason="only /api/events/in (and /api/events/out, for a run's own "
                                  "events) are open at Ariel's Prefect gateway")
            return
        await websocket.accept(subprotocol="prefect")
        caller = await self._websocket_caller(websocket)
        if caller is None:
            await websocket.close(code=1008, reason="Invalid token")
            return
        if path == "/api/events/out" and not isinstance(caller, RunScope):
            # A worker's subscription would carry every org's events: it polls its runs instead, which the gateway
            # scopes (Prefect's observers fall back to polling when the stream closes).
            await websocket.close(code=1008, reason="only a run may subscribe here, to its own events")
            return
        await websocket.send_json({"type": "auth_success"})
        try:
            if isinstance(caller, RunScope) and path == "/api/events/out":
                await self._subscribe(websocket, caller)
                return
            async with self._upstream_events() as upstream:
                await self._relay_events(websocket, upstream, caller)
        except (WebSocketException, OSError, TimeoutError) as exc:
            log.warning("gateway: the Prefect event stream closed: %s", exc)
        finally:
            if websocket.client_state is WebSocketState.CONNECTED:
                with suppress(RuntimeError):
                    await websocket.close(code=1011)

    async def _websocket_caller(self, websocket: WebSocket) -> Scope | None:
        header = presented_token(websocket.headers.get("authorization"))
        try:
            message = json.loads(await asyncio.wait_for(websocket.receive_text(), timeout=10))
        except (TimeoutError, ValueError, WebSocketDisconnect, KeyError):
            return None
        if not isinstance(message, dict) or message.get("type") != "auth":
            return None
        token = message.get("token")
        from_message = auth_string_token(token) if isinstance(token, str) else None
        if header and from_message and not hmac.compare_digest(header, from_message):
            return None  # two different credentials: trust neither
        return await self.scope_of(header or from_message)

    async def _subscribe(self, websocket: WebSocket, run: RunScope) -> None:
        """A run's subscription (Prefect's suspension observer, in every flow run Prefect's engine executes: runtime
        images made before Ariel's engine): the events of its own flow run and no other, whatever its filter asks.
        Without it the observer logs a refusal at each run's start and a traceback at its end, and polls instead."""
        try:
            message = json.loads(await asyncio.wait_for(websocket.receive_text(), timeout=10))
        except (TimeoutError, ValueError, WebSocketDisconnect, KeyError):
            return
        if not isinstance(message, dict) or message.get("type") != "filter" or not isinstance(
                message.get("filter"), dict):
            await websocket.close(code=1008, reason="expected a filter")
            return
        if isinstance(await self.ownership.live_attempt(run), NotLive):  # as the HTTP routes refuse a stale token
            await websocket.close(code=1008, reason="this run's attempt is over")
            return
        if self._subscriptions.get(run.run_id, 0) >= MAX_SUBSCRIPTIONS_PER_RUN:
            # Each holds an upstream stream and a backfill query at the shared Prefect server.
            await websocket.close(code=1008, reason=f"at most {MAX_SUBSCRIPTIONS_PER_RUN} subscriptions per run")
            return
        self._subscriptions[run.run_id] = self._subscriptions.get(run.run_id, 0) + 1
        try:
            await self._subscribe_own(websocket, run, message["filter"])
        finally:
            self._subscriptions[run.run_id] -= 1
            if not self._subscriptions[run.run_id]:
                del self._subscriptions[run.run_id]

    async def _subscribe_own(self, websocket: WebSocket, run: RunScope, asked: dict[str, Any]) -> None:
        # Not past the token's own end: a subscription is no credential that outlives it.
        left = None if run.expires_at is None else max(0.0, run.expires_at - time.time())
        event = asked.get("event")
        if isinstance(event, dict) and event.get("name") == [SUSPENDED_EVENT]:
            # Prefect's suspension observer, in every run: an Ariel run never pauses (its own PAUSED is refused),
            # so no such event can come. Held here, open and silent, it costs Prefect's server no stream and no
            # backfill query of its events per run.
            with suppress(TimeoutError, WebSocketDisconnect, WebSocketException, OSError, RuntimeError):
                await asyncio.wait_for(websocket.receive(), timeout=left)
            return
        own = f"prefect.flow-run.{run.run_id}"
        # What it asked for (when, which events), narrowed to its own flow run; every other part of the filter
        # (related or any resource, ids) is dropped rather than trusted.
        narrowed: dict[str, Any] = {key: asked[key] for key in ("occurred", "event", "order") if key in asked}
        narrowed["resource"] = {"id": [own]}
        async with self._upstream_events("/events/out") as upstream:
            await upstream.send(json.dumps({"type": "filter", "filter": narrowed}))
            pumping = asyncio.create_task(self._pump_own_events(upstream, websocket, own))
            leaving = asyncio.create_task(websocket.receive())  # the run ends its subscription by closing
            try:
                await asyncio.wait({pumping, leaving}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pumping, leaving):
                    task.cancel()
                    with suppress(asyncio.CancelledError, WebSocketDisconnect, WebSocketException, OSError,
                                  RuntimeError):
                        await task

    @staticmethod
    async def _pump_own_events(upstream: ClientConnection, websocket: WebSocket, own: str) -> None:
        async for text in upstream:
            try:
                message = json.loads(text)
                resource = message["event"]["resource"]["prefect.resource.id"]
            except (ValueError, TypeError, KeyError):
                continue
            if resource == own:  # Prefect filtered already; checked again here, where the tenancy is Ariel's
                await websocket.send_text(text if isinstance(text, str) else text.decode())

    def _upstream_events(self, path: str = "/events/in") -> Any:
        url = self.upstream_url.replace("https://", "wss://").replace("http://", "ws://") + path
        headers = {"Authorization": "Basic " + base64.b64encode(self._upstream_auth.encode()).decode()} \
            if self._upstream_auth else {}
        return _AuthenticatedEvents(connect(url, subprotocols=["prefect"], additional_headers=headers,  # type: ignore[list-item]
                                            open_timeout=10), self._upstream_auth)

    async def _relay_events(self, websocket: WebSocket, upstream: ClientConnection, caller: Scope) -> None:
        dropped = 0
        # Not past a run token's own end, as a subscription (`_subscribe_own`): an open socket is no credential
        # that outlives it.
        ends = caller.expires_at if isinstance(caller, RunScope) else None
        while True:
            try:
                left = None if ends is None else max(0.0, ends - time.time())
                text = await asyncio.wait_for(websocket.receive_text(), timeout=left)
            except TimeoutError:
                log.info("gateway: the event stream of %s closed: its run token expired", caller.label)
                return
            except (WebSocketDisconnect, KeyError):
                return
            try:
                event = json.loads(text)
            except (ValueError, RecursionError):
                event = None
            try:
                admitted = await admits(self.rules, caller, event)
            except Exception:  # a lookup that failed, a shape nobody foresaw: the event is dropped, the stream goes on
                log.warning("gateway: could not check an event from %s; dropped", caller.label, exc_info=True)
                admitted = False
            if admitted:
                if isinstance(caller, RunScope):
                    text = stamped_heartbeat(event, text)
                await upstream.send(text)
            else:
                dropped += 1
                if dropped in (1, 10, 100) or dropped % 1000 == 0:
                    log.info("gateway: dropped %d event(s) from %s outside its scope", dropped, caller.label)


class _AuthenticatedEvents:
    """An upstream event stream, authenticated with Prefect's own handshake."""

    def __init__(self, connecting: Any, auth: str | None) -> None:
        self._connecting = connecting
        self._auth = auth

    async def __aenter__(self) -> ClientConnection:
        connection: ClientConnection = await self._connecting.__aenter__()
        try:
            await connection.send(json.dumps({"type": "auth", "token": self._auth}))
            answer = json.loads(await asyncio.wait_for(connection.recv(), timeout=10))
        except BaseException:
            await self._connecting.__aexit__(None, None, None)
            raise
        if not isinstance(answer, dict) or answer.get("type") != "auth_success":
            await self._connecting.__aexit__(None, None, None)
            reason = answer.get("reason", answer) if isinstance(answer, dict) else answer
            raise OSError(f"the Prefect API refused the gateway's event stream: {reason}")
        return connection

    async def __aexit__(self, *exc: object) -> None:
        await self._connecting.__aexit__(*exc)


def _run_seconds(run: dict[str, Any]) -> float:
    """The run's own time budget, from its configuration (the token must outlive the run, not much more)."""
    config = (run.get("parameters") or {}).get("config")
    limits = config.get("limits") if isinstance(config, dict) else None
    seconds = limits.get("timeout_seconds") if isinstance(limits, dict) else None
    return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else DEFAULT_RUN_SECONDS

