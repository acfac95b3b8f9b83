"""Bringing data from older Ariel releases up to today's shape, where SQL migrations cannot.

Each step finds nothing to do once done, so running it at every start costs one query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from blocks.llm_provider import LLMProvider
from deployments import providers
from deployments.agents.manifest import Manifest
from deployments.agents.spec import AgentSpec
from mcp_server.services.caller import Caller
from mcp_server.store import AgentRecord, Store

if TYPE_CHECKING:
    from mcp_server.services.agents import AgentService


async def record_upgraded_manifests(store: Store) -> int:
    """Record the manifest of agents approved by migration 0005 (SQL could not compute it); returns how many.

    Run when the services open, so that no change is ever checked against a missing manifest.
    """
    upgraded = await store.agents_approved_without_manifest()
    for record in upgraded:
        assert record.approved_version is not None  # what the query selects
        approved = await store.get_version(record.org_id, record.id, record.approved_version)
        assert approved is not None  # versions are never deleted while their agent lives
        manifest = Manifest.of(AgentSpec.model_validate(approved.spec)).model_dump(mode="json")
        await store.approve_agent(
            record.org_id, record.id, record.approved_version, manifest, record.approved_by or "upgrade",
            current=False,
        )
    return len(upgraded)


async def adopt_unscoped_providers(agents: AgentService, caller: Caller, records: list[AgentRecord]) -> None:
    """Move the blocks of an install that predates per-org providers to their per-org names.

    Only with one organization: then every block it made was that org's. With
    more, whose key a global name holds is unknown, so an admin sets it again.
    """
    if len(await agents.store.all_orgs()) != 1:
        return
    names = {(await agents.spec_of(caller, record)).provider for record in records} - {None}
    async with agents.prefect() as client:
        for name in sorted(n for n in names if n):
            if await providers.provider_exists(client, agents.install_id, caller.org_id, name):
                continue
            try:
                # Prefect's @inject_client hides aload's `Self` from type checkers.
                legacy = cast(LLMProvider, await LLMProvider.aload(name, client=client))
            except ValueError:  # Prefect's "Unable to find block document named ..."
                continue
            await providers.save_provider(client, agents.install_id, caller.org_id, name,
                                          legacy.api_key.get_secret_value(), legacy.api_base)
            # Moved, not copied: a provider an admin deletes later must not come back at the next start.
            document = await client.read_block_document_by_name(name, LLMProvider.get_block_type_slug())
            await client.delete_block_document(document.id)
