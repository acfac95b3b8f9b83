"""The gateway's model route: a run on Ariel's own pools asks, the gateway calls the model for it.

Why here and not in the run's container: litellm (with the OpenAI SDK its import pulls in) is two thirds of
what a run's container would import, ~2 CPU-seconds per run on every run; this process imports it once. And
the provider's key stays in the control plane: runs on Ariel's pools never get it.

What the run sends is the conversation and the tools' schemas, nothing more. The model, its base URL and
the provider (whose key and base URL the gateway opens) come from the run's configuration as Prefect holds
it, checked against the control plane's signature, as for the run's credentials (`RUN_ROUTE`). The
connection is guarded as the run's own would be (`flows.network.egress`): never to the control plane or a
metadata address, and, where `ARIEL_MCP_PRIVATE_NETWORKS` is off, never to loopback or a private network,
since it leaves from the control plane's own network.

Runs on an org's own hardware make their calls themselves (the gateway hands them the key): what they
touch stays on the org's network, the model's endpoint too.

The call lasts no longer than the run asked (`timeout`, at most `MAX_CALL_SECONDS`), and stops when the run
hangs up (its task timed out, it was cancelled, it died): nothing is billed for an answer nobody will read.

Answers: 200 `{"message", "usage", "cost_usd"}`; 422 `{"error": "model", "kind", "detail", "transient"}`
when the provider refused or failed (`kind`: litellm's error type; a 4xx, which proxies pass on as it is);
403 `refused` for a base URL the guard refuses; 409 for a token that may not act now (as every run route
answers); 400 for a malformed request.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
from pydantic import SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.pools.run_images import calls_models_here
from deployments.providers import short_name
from flows.config import RunConfig, ScriptStep
from flows.credentials import ProviderCredentials
from flows.exceptions import ConfigTampered, ToolRefused
from flows.models import SCRIPTED_MODEL, complete, is_transient_llm_error
from flows.models.remote import MODEL_ROUTE
from flows.network.egress import AlsoRefuse, EgressRefused, agent_egress
from flows.network.guard import ProtectedEndpoint, checked_addresses, port_of, protected_endpoints
from flows.signing import verify
from mcp_server.gateway.listing import bounded_body, live_or_refused, refused_for, refused_route
from mcp_server.gateway.ownership import Cache, NotLive, Ownership, RunNow
from mcp_server.gateway.scopes import RunScope
from mcp_server.services.exceptions import ArielError
from mcp_server.services.secrets import ProviderSecret
from mcp_server.store import StoreError

log = logging.getLogger("ariel.gateway")

__all__ = ["MODEL_ROUTE", "ModelCalls", "serve_model"]

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a long conversation with large tool results, as the gateway takes logs
MAX_CALL_SECONDS = 900.0  # one model call at most; a longer one is a hung provider (a run's budget may be longer)
MAX_DETAIL_CHARS = 2000
HANG_UP_POLL_SECONDS = 1.0
CHECKED_TTL_SECONDS = 1800.0  # past it, an attempt's configuration is read and checked again
LIVENESS_READ_SECONDS = 2.0
_Attempt = tuple[UUID, str, int | None, int]  # a run token's attempt: run, org, Prefect's count, Ariel's number
# What litellm would take from the control plane's environment into a tenant's call beside the key: where calls
# go (a provider with no base URL of its own) and OpenAI's organization and project headers. Ariel warns at start.
LEAKING_SETTINGS = ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_ORGANIZATION", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
                    "ANTHROPIC_BASE_URL", "ANTHROPIC_API_BASE", "GEMINI_API_BASE", "MISTRAL_API_BASE", "GROQ_API_BASE",
                    "DEEPSEEK_API_BASE", "OPENROUTER_API_BASE", "TOGETHER_AI_API_BASE", "FIREWORKS_AI_API_BASE",
                    "XAI_API_BASE", "PERPLEXITY_API_BASE", "COHERE_API_BASE", "CEREBRAS_API_BASE",
                    "DEEPINFRA_API_BASE", "HOSTED_VLLM_API_BASE", "OLLAMA_API_BASE", "LM_STUDIO_API_BASE",
                    "NVIDIA_NIM_API_BASE")
OpenProvider = Callable[[str, str], Awaitable[ProviderSecret | None]]
"""`(org_id, provider name)` → its key and base URL (`SecretService.open_provider`); ArielError when unreadable."""


NO_KEY = "ariel-no-key"
"""Passed as the key for a base URL with no provider: a keyless server ignores it, and litellm, given one, never
looks for a key in the control plane's environment."""


@dataclass
class ModelCalls:
    """The gateway's model calls: how they are guarded, and litellm, imported once per process in a thread.

    `protected`: the control plane's services, never reached (None: the Prefect API behind the gateway alone,
    worked out at the first call). `also_refuse`: the control plane's rule for private networks, when they are off.
    """

    protected: tuple[ProtectedEndpoint, ...] | None = None
    also_refuse: AlsoRefuse | None = None
    _loading: asyncio.Task[Any] | None = field(default=None, repr=False)
    # Each attempt's configuration once checked against Prefect's copy (at its credentials' fetch, or its first
    # call): its later calls read Prefect only for whether the attempt is still live (`_over`), and a Prefect slow
    # to answer (a locked SQLite) does not fail a model call that needs nothing new of it.
    _checked: Cache[_Attempt, tuple[RunConfig, str | None]] = field(
        default_factory=lambda: Cache(ttl=CHECKED_TTL_SECONDS), repr=False)

    def remember(self, caller: RunScope, config: RunConfig, pool: str | None) -> None:
        """Keep `caller`'s checked configuration (and pool) for its later model calls."""
        self._checked.put(_attempt(caller), (config, pool))

    def checked(self, caller: RunScope) -> tuple[RunConfig, str | None] | None:
        return self._checked.get(_attempt(caller))

    _warming_up: asyncio.Task[None] | None = field(default=None, repr=False)
    warmed_up: bool | None = None
    """Whether litellm's first call, made offline once it is imported, went through (None: not made yet)."""

    @property
    def warming(self) -> bool:
        """Whether litellm's import was started in this process (done or not)."""
        return self._loading is not None

    def warm(self) -> None:
        """Start importing litellm beside the event loop (seconds of CPU): a run that fetches its credentials will
        ask for a model call next. At most once; never on the loop, which would stop every request meanwhile.
        Then one offline call: model calls wait for the import only, not for it."""
        if self._loading is None:
            self._loading = asyncio.create_task(asyncio.to_thread(_import_litellm))
            self._warming_up = asyncio.create_task(self._first_call(self._loading))

    async def _first_call(self, loading: asyncio.Task[Any]) -> None:
        with suppress(Exception):  # the import's own failure is the model calls' to report
            await loading
        self.warmed_up = await _warm_up()

    async def complete(self, upstream: str, config: RunConfig, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None, timeout: float,
                       provider: ProviderCredentials | None) -> dict[str, Any]:
        """One model turn for a run, guarded. Raises ToolRefused for a base URL the guard refuses."""
        self.warm()
        assert self._loading is not None
        await asyncio.shield(self._loading)
        if self.protected is None:
            self.protected = await asyncio.to_thread(protected_endpoints, upstream, None)
        api_base = config.api_base or (provider.api_base if provider is not None else None)
        if api_base:
            # By name first, for a plain refusal; the audit hook below checks each connection that is made.
            await asyncio.to_thread(self._refuse, api_base)
        # The run's deadline bounds the whole call; litellm's own timeout (per connect, per read) is fixed, as it
        # keys litellm's cache of clients: one client per provider and base URL, its connections reused.
        async with asyncio.timeout(timeout):
            with agent_egress(self.protected, self.also_refuse):
                return await complete(config, messages, tools, MAX_CALL_SECONDS, provider)

    def _refuse(self, url: str) -> None:
        assert self.protected is not None
        parsed = httpx.URL(url)
        try:
            addresses = checked_addresses(parsed, self.protected)
        except socket.gaierror:
            return  # the call itself fails, and says so
        if self.also_refuse is not None:
            host = parsed.raw_host.decode("ascii")
            for address in addresses:
                reason = self.also_refuse(host, port_of(parsed), address)
                if reason is not None:
                    raise ToolRefused(reason)


async def serve_model(request: Request, caller: RunScope, ownership: Ownership, verify_key: str, models: ModelCalls,
                      open_provider: OpenProvider, upstream: str) -> Response:
    """`POST MODEL_ROUTE` for a run token: one model turn of the run, as its signed configuration says."""
    # Who may ask first: the body (up to 16 MiB) is read and parsed only for a run the gateway calls models for.
    known = models.checked(caller)
    if known is None:
        now = await live_or_refused(ownership, caller)
        if isinstance(now, JSONResponse):
            return now
        config = checked_config(now, caller, verify_key)
        if isinstance(config, JSONResponse):
            return config
        pool = now.pool
        models.remember(caller, config, pool)
    else:
        config, pool = known
        over = await _over(ownership, caller)
        if over is not None:
            return refused_route(409, over.error, over.detail)
    if calls_models_here(pool, config):
        return refused_route(409, "here", "this run calls its model itself (on its organization's own hardware, "
                             "or a model the gateway calls only with a provider); the gateway does not call it")
    body = await bounded_body(request, MAX_REQUEST_BYTES)
    if body is None:
        return refused_route(413, "too_large", f"a model call's request is limited to {MAX_REQUEST_BYTES} bytes")
    asked = await asyncio.to_thread(_asked, body) if len(body) > 64 * 1024 else _asked(body)
    if isinstance(asked, JSONResponse):
        return asked
    messages, tools, timeout = asked
    provider: ProviderCredentials | None = None
    if config.provider:
        name = short_name(config.provider)
        try:
            secret = await open_provider(caller.org_id, name)
        except (ArielError, StoreError) as exc:
            log.warning("gateway: %s: provider %r: %s", caller.label, name, exc)
            return refused_for(exc, 500)  # asked again by the run only when a service did not answer
        if secret is None:
            return refused_route(404, "not_found", f"no provider {name!r} in this organization; manage_secrets "
                                 "set_provider makes one")
        provider = ProviderCredentials(name=secret.name, api_key=SecretStr(secret.api_key), api_base=secret.api_base)
    elif config.model != SCRIPTED_MODEL:
        provider = ProviderCredentials(name="", api_key=SecretStr(NO_KEY), api_base=None)
    try:
        turn = await _unless_hung_up(request, models.complete(upstream, config, messages, tools, timeout, provider))
    except _HungUp:
        log.info("gateway: %s hung up during its model call; the call was stopped", caller.label)
        return refused_route(499, "hung_up", "the run hung up before its model answered")
    except ToolRefused as refused:
        return refused_route(403, "refused", f"the model's base URL: {refused}; change api_base or the provider's")
    except TimeoutError:
        return JSONResponse({"error": "model", "kind": "Timeout", "transient": True,
                             "detail": f"the model did not answer within {timeout:.0f} s"}, status_code=422)
    except Exception as exc:  # noqa: BLE001 - whatever the provider's SDK raised goes back to the run, named
        stopped = _egress_refusal(exc)
        if stopped is not None:  # a connection the guard stopped (a redirect, a changed DNS answer): not transient
            return refused_route(403, "refused", f"the model's base URL: {stopped}; change api_base or the provider's")
        kind = type(exc).__name__
        log.warning("gateway: %s: model call failed: %s", caller.label, kind)
        detail = _redacted(str(exc), provider)[:MAX_DETAIL_CHARS]
        return JSONResponse({"error": "model", "kind": kind, "detail": detail,
                             "transient": is_transient_llm_error(exc)}, status_code=422)
    return JSONResponse(turn)


async def _over(ownership: Ownership, caller: RunScope) -> NotLive | None:
    """Why `caller`'s attempt may not call its model any more (over, superseded, gone: `Ownership.over`, read at
    most every few seconds); None while it may, and when Prefect does not answer within LIVENESS_READ_SECONDS: the
    call needs nothing new of Prefect, and an attempt that is over has no container left to ask (its token's life
    bounds the rest)."""
    try:
        return await asyncio.wait_for(ownership.over(caller), LIVENESS_READ_SECONDS)
    except (httpx.HTTPError, TimeoutError):
        log.info("gateway: %s: Prefect did not tell in time whether the run is live; its call goes on", caller.label)
        return None


class _HungUp(Exception):
    """The run closed its connection before the answer."""


async def _unless_hung_up(request: Request, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """`call`'s result; the call cancelled, and _HungUp raised, once the client has closed its connection
    (uvicorn does not cancel a handler whose client left)."""
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HANG_UP_POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                if task.done():  # it ended as the run left: its outcome, retrieved, goes nowhere
                    return task.result()
                raise _HungUp
    finally:
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task


def _egress_refusal(exc: BaseException) -> str | None:
    """The guard's refusal inside what litellm raised (it wraps a refused connect as a connection error)."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        if isinstance(found, EgressRefused):
            return str(found).removeprefix("Ariel refused the connection: ")
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return None


def _attempt(caller: RunScope) -> _Attempt:
    return caller.run_id, caller.org_id, caller.attempt, caller.generation


def leaking_settings(environment: Mapping[str, str]) -> list[str]:
    """The settings of `environment` that litellm would carry into tenants' calls made by this process."""
    return [name for name in LEAKING_SETTINGS if environment.get(name)]


def _import_litellm() -> None:
    litellm: Any = importlib.import_module("litellm")
    litellm.suppress_debug_info = True  # else it prints a "Give Feedback" banner to stdout at each failed call


# litellm imports more of itself at its first call (~0.4 CPU-s: its providers' modules, in an executor thread).
# One call of the offline scripted model, which reaches nothing, makes that happen before a run's first call.
WARM_UP_CONFIG = RunConfig(agent_id="warm-up", org_id="warm-up", version=1, name="warm-up", instructions="",
                           model=SCRIPTED_MODEL, script=[ScriptStep(reply="ready")])


async def _warm_up() -> bool:
    """One call of the offline scripted model (litellm imported); whether it went through."""
    try:
        async with asyncio.timeout(30):
            await complete(WARM_UP_CONFIG, [{"role": "user", "content": "warm up"}], None, 30, None)
        return True
    except Exception as exc:  # only the first real call is slower for it, and it reports its own failure
        log.info("gateway: litellm's warm-up call failed (%s); the first model call completes its setup instead",
                 type(exc).__name__)
        return False


def checked_config(now: RunNow, caller: RunScope, verify_key: str) -> RunConfig | JSONResponse:
    """The run's configuration as Prefect holds it, if the control plane signed it for the caller's org; else
    the `tampered` answer. Never what the run itself sends: that is what a tamperer would change."""
    config = now.parameters.get("config")
    try:
        verify(config if isinstance(config, dict) else {}, verify_key)
    except ConfigTampered as exc:
        log.warning("gateway: %s: %s", caller.label, exc)
        return refused_route(409, "tampered", str(exc))
    assert isinstance(config, dict)  # verify() accepted it
    if config.get("org_id") != caller.org_id:
        return refused_route(409, "tampered", "tampered: the run's configuration is another organization's")
    try:
        return RunConfig.model_validate(config)
    except ValidationError:
        return refused_route(409, "tampered", "tampered: the run's configuration is not one this Ariel reads")


def _asked(body: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, float] | JSONResponse:
    try:
        asked = json.loads(body)
    except ValueError:
        asked = None
    messages = asked.get("messages") if isinstance(asked, dict) else None
    tools = asked.get("tools") if isinstance(asked, dict) else None
    timeout = asked.get("timeout") if isinstance(asked, dict) else None
    if (not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages)
            or not (tools is None or (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)))
            or not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0):
        return refused_route(400, "malformed", "a model call takes a JSON object: 'messages' (a list of objects, "
                             "at least one), 'tools' (a list of objects, or null) and 'timeout' (seconds, above 0)")
    return messages, tools, min(float(timeout), MAX_CALL_SECONDS)


def _redacted(text: str, provider: ProviderCredentials | None) -> str:
    """A provider's error message without its key (some SDKs quote part of it; none may quote it whole)."""
    if provider is not None and (key := provider.api_key.get_secret_value()):
        text = text.replace(key, "***")
    return text
