"""`SecretService`: an organization's LLM provider keys, sealed in the control-plane store with the org's data key.

A key goes in once (manage_secrets set_provider, or `ariel provider set`) and
never comes back out to a person: answers, errors and the audit log name the
provider only. The platform opens one for a run (`open_provider`); no Prefect
block holds it (see `mcp_server.services.sealing`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import SecretStr

from deployments import providers
from deployments.agents.spec import base_url_problem
from deployments.text import quote
from mcp_server.auth import Role
from mcp_server.services.agents import AgentService
from mcp_server.services.audit import audited
from mcp_server.services.caller import Caller
from mcp_server.services.exceptions import InvalidRequest, NotFound
from mcp_server.services.sealing import Sealed, Sealer
from mcp_server.services.views import ProviderView, SecretsActionView

SecretAction = Literal["list", "set_provider", "delete_provider"]

ACTION_ROLES: dict[SecretAction, Role] = {
    # Members name providers in their agents, so they see the names; only admins handle keys.
    "list": "viewer",
    "set_provider": "admin",
    "delete_provider": "admin",
}

MAX_KEY_CHARS = 4096
_KEY = re.compile(r"^\S+$")


@dataclass(frozen=True)
class ProviderSecret:
    """What a run needs of its provider: the key (never in the repr) and where calls go."""

    name: str
    api_key: str = field(repr=False)
    api_base: str | None


@dataclass
class SecretService:
    agents: AgentService
    sealer: Sealer

    async def manage(
        self, caller: Caller, action: SecretAction, name: str | None, api_key: SecretStr | None,
        api_base: str | None, confirm: bool,
    ) -> SecretsActionView:
        if action == "list":
            found = await self.list_providers(caller)
            return SecretsActionView(action=action, done=f"{len(found)} provider(s)",
                                     providers=found)
        # Only a valid name goes in the trail: a key pasted into the wrong field must land nowhere.
        target = name.strip() if name and providers.PROVIDER_NAME.match(name.strip()) else "(no valid name)"
        async with audited(self.agents.store, caller, f"secret.{action}", target):
            caller.require(ACTION_ROLES[action], f"manage_secrets {action}", "Ask an admin to do it.")
            provider = _provider_name(name, action)
            if action == "set_provider":
                return await self.set_provider(caller, provider, api_key, api_base)
            return await self.delete_provider(caller, provider, confirm)

    async def list_providers(self, caller: Caller) -> list[ProviderView]:
        found = await self.agents.store.list_providers(caller.org_id)
        users = await self._users(caller)
        return [ProviderView(name=p.name, api_base=p.api_base, updated=p.updated_at, used_by=users.get(p.name, []))
                for p in found]

    async def set_provider(
        self, caller: Caller, name: str, api_key: SecretStr | None, api_base: str | None
    ) -> SecretsActionView:
        key = api_key.get_secret_value().strip() if api_key is not None else ""
        if not key:
            raise InvalidRequest("set_provider needs api_key: the provider's API key (it is stored, never shown again)")
        if len(key) > MAX_KEY_CHARS or not _KEY.match(key):
            # Never the key itself in the message: it would land in the chat and the audit log.
            raise InvalidRequest(f"api_key: give the key alone: no spaces or line breaks, at most {MAX_KEY_CHARS} "
                                 "characters")
        base = _api_base(api_base)
        existed = not await self.put_provider(caller.org_id, name, key, base)
        where = f"calls go to {base}" if base else "calls go to the model's own provider"
        done = (f"provider {name!r} {'updated' if existed else 'created'}; {where}. Agents name it in their "
                f"'provider' field. The key is stored and will not be shown again.")
        return SecretsActionView(action="set_provider", done=done, providers=[
            view for view in await self.list_providers(caller) if view.name == name
        ])

    async def delete_provider(self, caller: Caller, name: str, confirm: bool) -> SecretsActionView:
        missing = NotFound(f"no provider {quote(name)}; manage_secrets list shows the providers here")
        if not await self.agents.store.provider_exists(caller.org_id, name):
            raise missing
        users = (await self._users(caller)).get(name, [])
        if users and not confirm:
            raise InvalidRequest(
                f"provider {name!r} is named by {', '.join(users)}: their runs fail until they name another. "
                "Call again with confirm=true to delete it anyway"
            )
        if not await self.agents.store.delete_provider(caller.org_id, name):
            raise missing  # deleted meanwhile by someone else
        return SecretsActionView(action="delete_provider", done=f"provider {name!r} and its key are gone")

    async def put_provider(self, org_id: str, name: str, api_key: str, api_base: str | None) -> bool:
        """Seal `api_key` with the org's data key and store the provider, new or replaced; True when it is new.

        No checks and no audit: for `set_provider` after its checks, and for Ariel's own upkeep (upgrades).
        """
        sealed = await self.sealer.seal(org_id, _purpose(name), api_key.encode())
        return await self.agents.store.put_provider(org_id, name, api_base, sealed.ciphertext, sealed.nonce,
                                                    sealed.dek_version)

    async def open_provider(self, org_id: str, name: str) -> ProviderSecret | None:
        """The org's provider `name` (its short name) with its key, for a run of the org; None when it has none.

        No caller: the platform asks, for a run it has already checked (the gateway, with the run's token).
        Raises `SealingError` when the key does not open (a missing KEK, or rows altered or copied from
        another org).
        """
        if not providers.PROVIDER_NAME.match(name):
            return None
        record = await self.agents.store.get_provider(org_id, name)
        if record is None:
            return None
        key = await self.sealer.open(org_id, _purpose(name),
                                     Sealed(record.key_ciphertext, record.key_nonce, record.dek_version))
        return ProviderSecret(name=name, api_key=key.decode(), api_base=record.api_base)

    async def _users(self, caller: Caller) -> dict[str, list[str]]:
        """Which agents name each provider, by their current version."""
        users: dict[str, list[str]] = {}
        for record in await self.agents.store.list_agents(caller.org_id):
            provider = (await self.agents.spec_of(caller, record)).provider
            if provider:
                users.setdefault(provider, []).append(record.slug)
        return users


def _purpose(name: str) -> str:
    """What a provider's key is sealed for, beside its org: a key copied to another provider does not open."""
    return f"provider={name}"


def _provider_name(name: str | None, action: str) -> str:
    if name is None or not name.strip():
        raise InvalidRequest(f"{action} needs name: the provider's name, e.g. 'openai-main'")
    name = name.strip()
    if not providers.PROVIDER_NAME.match(name):
        # Not echoed: it could be a key given in the wrong field.
        raise InvalidRequest("name: that is not a provider name; use 1 to 40 lowercase letters, digits and '-', "
                             "starting with a letter or digit, e.g. 'openai-main'")
    return name


def _api_base(api_base: str | None) -> str | None:
    if api_base is None or not api_base.strip():
        return None
    if problem := base_url_problem(base := api_base.strip()):
        raise InvalidRequest(problem)
    return base
