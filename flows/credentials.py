"""A run's credentials, fetched from Ariel's Prefect gateway with the run's own token.

No Prefect block holds a key in a readable form: the control plane keeps
provider keys sealed, and hands a run the one its approved configuration
names, after checking that configuration's signature against what Prefect
holds for the run (so a run whose parameters were changed outside Ariel gets
no key). The run proves who it is with the token the gateway minted for it,
which reaches it as PREFECT_API_KEY.

The same answer carries, for each MCP server the configuration names, the
headers that open it (a bearer token, an API-key header, a fresh OAuth access
token) and the fingerprints of its tools as a person approved them
(`flows.mcp.pins`), or why the run may not use it. One round trip for both.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from flows.config import RunConfig
from flows.engine.context import api_settings, current_run_or_none
from flows.engine.logs import run_logger
from flows.exceptions import ConfigTampered, RuntimeFailure
from flows.fingerprints import Fingerprint
from flows.tls import tls_for

RUN_ROUTE = "/ariel/v1/run"  # the gateway's; mcp_server.gateway.app.RUN_ROUTE
FETCH_SECONDS = 30.0
# While the gateway cannot answer yet (an app process restarting, the store or the Prefect API behind it briefly
# away), a run asks again after each pause: 100 s in all, past the 60 s for which the embedded Prefect server's
# SQLite can hold every write (its busy timeout), so that such a stall delays a run instead of failing it.
GATEWAY_PAUSES = (0.5, 1.5, 3.0, 5.0, 10.0, 20.0, 20.0, 20.0, 20.0)
GATEWAY_PATIENCE_SECONDS = sum(GATEWAY_PAUSES)


class ProviderMissing(RuntimeFailure):
    """The provider the configuration names does not exist (any more) in the run's organization."""


@dataclass(frozen=True)
class ProviderCredentials:
    """The key (a SecretStr: it never prints) and where calls go."""

    name: str
    api_key: SecretStr
    api_base: str | None


@dataclass(frozen=True)
class McpServerAccess:
    """What the control plane hands a run for one MCP server: how to open it and what was approved, or why not.

    `headers` values are secrets (SecretStr: they never print); `pins` maps each approved tool's name to its
    digest (`flows.mcp.pins.tool_digest`). `error` set: the run may not use the server, and says why.
    """

    headers: dict[str, SecretStr] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def secrets(self) -> list[str]:
        """Its header values, and the credential inside `<scheme> <credential>` ones (a bearer token): what a log
        or transcript must never show, should the server echo them.

        >>> McpServerAccess(headers={"Authorization": SecretStr("Bearer t0k3n")}).secrets()
        ['Bearer t0k3n', 't0k3n']
        """
        values = [value.get_secret_value() for value in self.headers.values()]
        return values + [value.partition(" ")[2] for value in values if " " in value]


@dataclass(frozen=True)
class RunCredentials:
    """Everything secret a run gets from the gateway: its provider's key and its MCP servers' access, by server id.

    `models_through_gateway`: the gateway makes the run's model calls (`flows.models.remote`), so the run got no
    provider key: runs on Ariel's own pools. Runs on an org's own hardware, or with no gateway, make them here.
    """

    provider: ProviderCredentials | None = None
    mcp: dict[str, McpServerAccess] = field(default_factory=dict)
    models_through_gateway: bool = False
    provider_fingerprint: Fingerprint | None = None  # through the gateway: its key's, to redact it (no key)


def gateway_url(route: str = RUN_ROUTE) -> str | None:
    """One of Ariel's routes for this run: the Prefect API URL the run was given is the gateway's `…/prefect/api`."""
    settings = api_settings()
    api_url = settings.url if settings is not None else None
    return f"{api_url.rstrip('/').removesuffix('/api')}{route}" if api_url else None


def run_token() -> str | None:
    settings = api_settings()
    return settings.token if settings is not None else None


async def fetch_credentials(config: RunConfig) -> RunCredentials:
    """The provider's key and the MCP servers' access that `config` names, and where its model calls are made, in
    one request to the gateway.

    A run with no token (started outside Ariel's workers) asks nothing when its configuration names neither a
    provider nor MCP servers: it makes its model calls itself.

    Raises:
        ConfigTampered: the gateway found the run's configuration changed outside Ariel.
        RuntimeFailure: no token, no gateway, no such provider, or the gateway did not answer.
    """
    what = f"provider {config.provider!r}" if config.provider else (
        "the run's MCP servers" if config.mcp_servers else "the run's model")
    url, token = gateway_url(), run_token()
    if (url is None or token is None) and not config.provider and not config.mcp_servers:
        return RunCredentials()
    if url is None or token is None:
        needs = "the provider's key" if config.provider else "its MCP servers' credentials and approved tools"
        raise RuntimeFailure(
            f"{what}: this run has no run token, so it cannot fetch {needs}; runs get one when an Ariel work "
            "pool's worker starts them through Ariel's Prefect gateway"
        )
    try:
        async with httpx.AsyncClient(trust_env=False, verify=tls_for(url)) as client:
            answer = await asked_patiently(
                lambda timeout: client.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout), what)
    except httpx.HTTPError as exc:
        raise RuntimeFailure(f"{what}: Ariel's gateway did not answer ({type(exc).__name__}); "
                             "the run can be retried") from None
    stop_if_superseded(answer)
    body = json_object(answer)
    if answer.status_code == 409 and body.get("error") == "tampered":
        raise ConfigTampered(str(body.get("detail") or "tampered: the run's configuration was changed"))
    if answer.status_code == 404 and body.get("error") == "not_found":
        raise ProviderMissing(f"provider {config.provider!r} does not exist in this organization, so the run has no "
                              "key for its model; an admin sets it with manage_secrets set_provider")
    through_gateway = body.get("models") == "gateway"
    handed = body.get("provider")
    if answer.status_code != 200 or (config.provider and not through_gateway and not isinstance(handed, dict)):
        detail = body.get("detail") or f"status {answer.status_code}"
        raise RuntimeFailure(f"{what}: the credentials could not be fetched: {detail}")
    provider = None
    if config.provider and not through_gateway and isinstance(handed, dict):
        provider = ProviderCredentials(name=str(handed["name"]), api_key=SecretStr(str(handed["api_key"])),
                                       api_base=handed.get("api_base"))
    return RunCredentials(provider=provider, mcp=_mcp_access(config, body.get("mcp")),
                          models_through_gateway=through_gateway,
                          provider_fingerprint=Fingerprint.from_answer(body.get("provider_fingerprint")))


def not_answered_yet(outcome: httpx.Response | httpx.HTTPError) -> bool:
    """Whether the gateway could not answer yet: no answer at all, or a 502, 503 or 504 (it, a proxy before it or
    a service behind it briefly away)."""
    return isinstance(outcome, httpx.HTTPError) or outcome.status_code in (502, 503, 504)


async def asked_patiently(ask: Callable[[float], Awaitable[httpx.Response]], what: str,
                          again: Callable[[httpx.Response | httpx.HTTPError], bool] = not_answered_yet,
                          ) -> httpx.Response:
    """The gateway's answer to `ask(timeout)`, asked again while `again` says it could not give one yet, after
    each of `GATEWAY_PAUSES`, all within `GATEWAY_PATIENCE_SECONDS` (each ask may wait what is left, at most
    `FETCH_SECONDS`); the run's log says so once. Only for a request that may be made twice. The last answer, or
    the last error, once patience runs out."""
    deadline = time.monotonic() + GATEWAY_PATIENCE_SECONDS
    said = False
    for pause in (*GATEWAY_PAUSES, None):
        try:
            answer = await ask(max(1.0, min(FETCH_SECONDS, deadline - time.monotonic())))
        except httpx.HTTPError as exc:
            if not again(exc) or pause is None or deadline - time.monotonic() < 2.0:
                raise
            why = f"Ariel's gateway did not answer ({type(exc).__name__})"
        else:
            if not again(answer) or pause is None or deadline - time.monotonic() < 2.0:
                return answer
            # A proxy's error page is not ours to log at length.
            why = str(json_object(answer).get("detail") or f"the gateway answered {answer.status_code}")[:300]
        if not said:
            said = True
            _say(f"{what}: {why}; asking again for up to {GATEWAY_PATIENCE_SECONDS:.0f} s")
        # The last pause is cut short to leave the last ask a second or more before the deadline.
        await asyncio.sleep(min(pause, deadline - time.monotonic() - 1.0))
    raise AssertionError("unreachable: the last pass returns or raises")


def _say(message: str) -> None:
    """A line on the run's log in Prefect; on stderr outside a run (a test's call, say)."""
    if current_run_or_none() is not None:
        run_logger().warning(message)
    else:
        print(f"Ariel: {message}", file=sys.stderr, flush=True)


def _mcp_access(config: RunConfig, given: Any) -> dict[str, McpServerAccess]:
    """Each named server's access, by server id; a server the answer left out is one the run may not use."""
    entries = given if isinstance(given, dict) else {}
    access: dict[str, McpServerAccess] = {}
    for ref in config.mcp_servers:
        entry = entries.get(ref.server_id)
        if not isinstance(entry, dict):
            access[ref.server_id] = McpServerAccess(error="Ariel's gateway sent no approval for it (an older "
                                                    "control plane, or the server is gone)")
        elif entry.get("error"):
            access[ref.server_id] = McpServerAccess(error=str(entry["error"]))
        else:
            headers = entry.get("headers") or {}
            pins = entry.get("pins") or {}
            access[ref.server_id] = McpServerAccess(
                headers={str(name): SecretStr(str(value)) for name, value in headers.items()},
                pins={str(tool): str(digest) for tool, digest in pins.items()},
            )
    return access


def json_object(answer: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; {} for any other body (an error page, a list, nothing)."""
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def stop_if_superseded(answer: httpx.Response) -> None:
    """Leave the run to its retry when the gateway says one has begun (this attempt outlived what was taken for
    its end: a container whose kill failed, a machine back on the network).

    The process exits at once with status 0: nothing more is written on the run (the gateway would refuse it), and
    the worker that watches this container, seeing it end well, reports nothing: the retry is not taken for crashed.
    """
    if answer.status_code == 409 and json_object(answer).get("error") == "superseded":
        print("Ariel: a retry of this run has begun; this earlier attempt stops and leaves the run to it",
              file=sys.stderr, flush=True)
        os._exit(0)
