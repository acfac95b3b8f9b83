"""A run's provider credentials, fetched from Ariel's Prefect gateway with the run's own token.

No Prefect block holds a key in a readable form: the control plane keeps
provider keys sealed, and hands a run the one its approved configuration
names, after checking that configuration's signature against what Prefect
holds for the run (so a run whose parameters were changed outside Ariel gets
no key). The run proves who it is with the token the gateway minted for it,
which reaches it as PREFECT_API_KEY.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from prefect.settings import get_current_settings
from pydantic import SecretStr

from flows.config import RunConfig
from flows.exceptions import ConfigTampered, RuntimeFailure

RUN_ROUTE = "/ariel/v1/run"  # the gateway's; mcp_server.gateway.app.RUN_ROUTE
FETCH_SECONDS = 30.0


class ProviderMissing(RuntimeFailure):
    """The provider the configuration names does not exist (any more) in the run's organization."""


@dataclass(frozen=True)
class ProviderCredentials:
    """The key (a SecretStr: it never prints) and where calls go."""

    name: str
    api_key: SecretStr
    api_base: str | None


def gateway_url() -> str | None:
    """Ariel's route for this run: the Prefect API URL the run was given is the gateway's `…/prefect/api`."""
    api_url = get_current_settings().api.url
    return f"{api_url.rstrip('/').removesuffix('/api')}{RUN_ROUTE}" if api_url else None


def run_token() -> str | None:
    settings = get_current_settings().api
    if settings.key is not None and settings.key.get_secret_value():
        return settings.key.get_secret_value()
    if settings.auth_string is not None:
        return settings.auth_string.get_secret_value().partition(":")[2] or None
    return None


async def fetch_provider(config: RunConfig) -> ProviderCredentials | None:
    """The credentials of the provider `config` names; None when it names none.

    Raises:
        ConfigTampered: the gateway found the run's configuration changed outside Ariel.
        RuntimeFailure: no token, no gateway, no such provider, or the gateway did not answer.
    """
    if not config.provider:
        return None
    url, token = gateway_url(), run_token()
    if url is None or token is None:
        raise RuntimeFailure(
            f"provider {config.provider!r}: this run has no run token, so it cannot fetch the provider's key; runs "
            "get one when an Ariel work pool's worker starts them through Ariel's Prefect gateway"
        )
    try:
        async with httpx.AsyncClient(timeout=FETCH_SECONDS, trust_env=False) as client:
            answer = await client.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise RuntimeFailure(f"provider {config.provider!r}: Ariel's gateway did not answer ({type(exc).__name__}); "
                             "the run can be retried") from None
    body = _json(answer)
    if answer.status_code == 409 and body.get("error") == "tampered":
        raise ConfigTampered(str(body.get("detail") or "tampered: the run's configuration was changed"))
    if answer.status_code == 404 and body.get("error") == "not_found":
        raise ProviderMissing(f"provider {config.provider!r} does not exist in this organization, so the run has no "
                              "key for its model; an admin sets it with manage_secrets set_provider")
    if answer.status_code != 200 or not isinstance(body.get("provider"), dict):
        detail = body.get("detail") or f"status {answer.status_code}"
        raise RuntimeFailure(f"provider {config.provider!r}: the key could not be fetched: {detail}")
    provider = body["provider"]
    return ProviderCredentials(name=str(provider["name"]), api_key=SecretStr(str(provider["api_key"])),
                               api_base=provider.get("api_base"))


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
