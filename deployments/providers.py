"""Names of each organization's LLM providers, and the Prefect blocks older releases kept their keys in.

Provider keys live sealed in the control-plane store (`mcp_server.services.secrets`), never in a Prefect
block. An agent names its provider by a short name ("openai-main"); in Prefect, Ariel refers to it as
`ariel-<install8>-<org12>-<name>`, the name its block had before, so that no name an agent gives can reach
another organization's provider. Installs from before sealed secrets kept the keys in blocks of that name;
`provider_blocks` and `delete_provider_block` let an upgrade move them into the store.

Example:
    >>> block_name("9a8b7c6d5e4f30211203f4e5d6c7b8a9", "0f3c9a1b2c3d4e5f60718293a4b5c6d7", "openai-main")
    'ariel-9a8b7c6d-0f3c9a1b2c3d-openai-main'
    >>> short_name("ariel-9a8b7c6d-0f3c9a1b2c3d-openai-main")
    'openai-main'
    >>> org_part("ariel-9a8b7c6d-0f3c9a1b2c3d-openai-main")
    '0f3c9a1b2c3d'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound

from blocks.llm_provider import LLMProvider
from deployments.pools.work_pools import install_prefix

PROVIDER_NAME = re.compile(r"^(?!ariel-)[a-z0-9][a-z0-9-]{0,39}$")
"""What a provider's short name may be: lowercase letters, digits and '-', up to 40 characters, as an agent
spec's `provider` field; and not starting with "ariel-", since such a name could hold another organization's
prefix, and Prefect's name filter matches anywhere in the name.
"""
PAGE = 200  # the most block documents Prefect returns per request

_SCOPED = re.compile(r"^ariel-[0-9a-f]{8}-(?P<org>[0-9a-f]{12})-(?P<name>[a-z0-9][a-z0-9-]*)$")


def org_prefix(install_id: str, org_id: str) -> str:
    return f"{install_prefix(install_id)}{org_id[:12]}-"


def block_name(install_id: str, org_id: str, name: str) -> str:
    """The name one organization's provider `name` goes by in Prefect (a run's config; older releases' blocks)."""
    return org_prefix(install_id, org_id) + name


def short_name(block: str) -> str:
    """The name an organization knows a provider by, from its name in Prefect; other names are returned as they are."""
    match = _SCOPED.match(block)
    return match.group("name") if match else block


def org_part(block: str) -> str | None:
    """The first 12 characters of the org id a per-org block name carries; None for other names."""
    match = _SCOPED.match(block)
    return match.group("org") if match else None


@dataclass(frozen=True)
class ProviderBlock:
    """An LLM provider block an older release saved: what moving it into the sealed store needs."""

    id: UUID
    name: str
    api_key: str = field(repr=False)
    api_base: str | None


async def provider_blocks(client: PrefectClient, name_like: str) -> list[ProviderBlock]:
    """Every LLM provider block whose name contains `name_like`, with its key (for moving it, never for showing)."""
    documents: list[dict[str, Any]] = []
    while True:
        response = await client.request(
            "POST",
            "/block_documents/filter",
            json={
                "block_documents": {"name": {"like_": name_like}, "is_anonymous": {"eq_": False}},
                "block_types": {"slug": {"any_": [LLMProvider.get_block_type_slug()]}},
                "include_secrets": True,
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
        ProviderBlock(id=UUID(doc["id"]), name=doc["name"], api_key=str((doc.get("data") or {}).get("api_key", "")),
                      api_base=(doc.get("data") or {}).get("api_base"))
        for doc in documents
    ]


async def delete_provider_block(client: PrefectClient, block_id: UUID) -> bool:
    """Delete a provider block; False when it is gone already."""
    try:
        await client.delete_block_document(block_id)
    except ObjectNotFound:
        return False
    return True
