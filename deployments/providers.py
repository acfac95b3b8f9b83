"""Each organization's LLM provider blocks, under Prefect block names only that organization's agents load.

Block names are global on a Prefect server. An agent names its provider by a
short name ("openai-main"); Ariel stores and loads the block under
`ariel-<install8>-<org12>-<name>`, so an agent of one organization can never
load another's key, whatever name it gives.

Example:
    >>> block_name("9a8b7c6d5e4f30211203f4e5d6c7b8a9", "0f3c9a1b2c3d4e5f60718293a4b5c6d7", "openai-main")
    'ariel-9a8b7c6d-0f3c9a1b2c3d-openai-main'
    >>> short_name("ariel-9a8b7c6d-0f3c9a1b2c3d-openai-main")
    'openai-main'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr

from blocks.llm_provider import LLMProvider
from deployments.pools.work_pools import install_prefix

PROVIDER_NAME = re.compile(r"^(?!ariel-)[a-z0-9][a-z0-9-]{0,39}$")
"""What a provider's short name may be: lowercase letters, digits and '-', up to 40 characters, as an agent
spec's `provider` field; and not starting with "ariel-", since such a name could hold another organization's
prefix, and Prefect's name filter matches anywhere in the name.
"""
PAGE = 200  # the most block documents Prefect returns per request

_SCOPED = re.compile(r"^ariel-[0-9a-f]{8}-[0-9a-f]{12}-(?P<name>[a-z0-9][a-z0-9-]*)$")


@dataclass(frozen=True)
class ProviderInfo:
    """What may be shown of a provider block: never its key."""

    name: str
    api_base: str | None
    updated: datetime | None


def org_prefix(install_id: str, org_id: str) -> str:
    return f"{install_prefix(install_id)}{org_id[:12]}-"


def block_name(install_id: str, org_id: str, name: str) -> str:
    """The Prefect block name of one organization's provider `name`."""
    return org_prefix(install_id, org_id) + name


def short_name(block: str) -> str:
    """The name an organization knows a provider block by; other names are returned as they are."""
    match = _SCOPED.match(block)
    return match.group("name") if match else block


async def save_provider(
    client: PrefectClient, install_id: str, org_id: str, name: str, api_key: str, api_base: str | None
) -> None:
    """Create or replace the organization's provider `name`."""
    block = LLMProvider(api_key=SecretStr(api_key), api_base=api_base)
    await block.asave(block_name(install_id, org_id, name), overwrite=True, client=client)


async def list_providers(client: PrefectClient, install_id: str, org_id: str) -> list[ProviderInfo]:
    """The organization's providers, by name; what the key is stays in Prefect."""
    prefix = org_prefix(install_id, org_id)
    documents: list[dict[str, Any]] = []
    while True:
        response = await client.request(
            "POST",
            "/block_documents/filter",
            json={
                # Prefect matches `like_` anywhere in the name; the prefix check below makes it exact.
                "block_documents": {"name": {"like_": prefix}, "is_anonymous": {"eq_": False}},
                "block_types": {"slug": {"any_": [LLMProvider.get_block_type_slug()]}},
                "include_secrets": False,
                "sort": "NAME_ASC",
                "limit": PAGE,
                "offset": len(documents),
            },
        )
        page = response.json()
        documents += page
        if len(page) < PAGE:
            break
    return [
        ProviderInfo(name=doc["name"][len(prefix):], api_base=(doc.get("data") or {}).get("api_base"),
                     updated=datetime.fromisoformat(doc["updated"]) if doc.get("updated") else None)
        for doc in documents
        if doc["name"].startswith(prefix)
    ]


async def provider_exists(client: PrefectClient, install_id: str, org_id: str, name: str) -> bool:
    try:
        await client.read_block_document_by_name(
            block_name(install_id, org_id, name), LLMProvider.get_block_type_slug(), include_secrets=False
        )
    except ObjectNotFound:
        return False
    return True


async def delete_provider(client: PrefectClient, install_id: str, org_id: str, name: str) -> bool:
    """Delete the organization's provider `name`; False when it has none by that name."""
    try:
        document = await client.read_block_document_by_name(
            block_name(install_id, org_id, name), LLMProvider.get_block_type_slug(), include_secrets=False
        )
    except ObjectNotFound:
        return False
    await client.delete_block_document(document.id)
    return True


async def remove_org_providers(client: PrefectClient, install_id: str, org_id: str) -> int:
    """Delete every provider of the organization (with the organization); returns how many."""
    removed = 0
    for provider in await list_providers(client, install_id, org_id):
        removed += await delete_provider(client, install_id, org_id, provider.name)
    return removed
