"""Bringing data from older Ariel releases up to today's shape, where SQL migrations cannot.

Each step finds nothing to do once done, so running it at every start costs one query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deployments import providers
from deployments.agents.manifest import Manifest
from deployments.agents.spec import AgentSpec
from deployments.pools.work_pools import install_prefix
from mcp_server.store import Store

if TYPE_CHECKING:
    from mcp_server.services.secrets import SecretService


async def record_upgraded_manifests(store: Store) -> int:
    """Record the manifest of agents approved by migration 0005 (SQL could not compute it); returns how many.

    Run when the services open, so that no change is ever checked against a missing manifest.
    """
    upgraded = await store.agents_approved_without_manifest()
    for record in upgraded:
        assert record.approved_version is not None  # what the query selects
        approved = await store.get_version(record.org_id, record.id, record.approved_version)
        assert approved is not None  # versions are never deleted while their agent lives
        manifest = Manifest.of(AgentSpec.stored(approved.spec)).model_dump(mode="json")
        await store.approve_agent(
            record.org_id, record.id, record.approved_version, manifest, record.approved_by or "upgrade",
            current=False,
        )
    return len(upgraded)


async def seal_provider_blocks(secrets: SecretService) -> int:
    """Move every LLM provider block of this install into the sealed store, deleting each; returns how many moved.

    No Prefect block may hold a key any more (anyone with Prefect API access can read a block's). A block
    named for an org of this install (`ariel-<install8>-<org12>-<name>`: releases before sealed secrets) goes
    to that org; with one org only, a block under a bare name its agents give (releases before per-org
    providers) goes to it too; with more, whose key that is is unknown, so it stays for an admin to set again.
    A provider the store holds already keeps the store's key: it was set since, or moved by a start that
    stopped before deleting the block. A block of an org that is gone is deleted, as deleting the org would
    have. Run by `ariel up` at each start; once done it finds no block.
    """
    agents = secrets.agents
    orgs = await agents.store.all_orgs()
    by_prefix: dict[str, list[str]] = {}
    for org in orgs:
        by_prefix.setdefault(org.id[:12], []).append(org.id)
    ours = install_prefix(agents.install_id)
    moved = 0
    async with agents.prefect() as client:
        # Prefect matches `like_` anywhere in the name: the checks below keep this install's blocks only.
        for block in await providers.provider_blocks(client, ours):
            org12 = providers.org_part(block.name)
            if org12 is None or not block.name.startswith(ours) or len(by_prefix.get(org12, [])) > 1:
                continue
            if org12 in by_prefix:
                moved += await _seal_block(secrets, by_prefix[org12][0], providers.short_name(block.name), block)
            await providers.delete_provider_block(client, block.id)
        if len(orgs) != 1:
            return moved
        org_id = orgs[0].id
        for name in sorted(await _named_providers(agents.store, org_id)):
            for block in await providers.provider_blocks(client, name):
                if block.name != name:  # `like_` matched it anywhere: only the bare name is the legacy one
                    continue
                moved += await _seal_block(secrets, org_id, name, block)
                # A bare name is not provably this install's: delete it only once the store holds its key.
                held = await secrets.open_provider(org_id, name)
                if held is not None and held.api_key == block.api_key:
                    await providers.delete_provider_block(client, block.id)
    return moved


async def _seal_block(secrets: SecretService, org_id: str, name: str, block: providers.ProviderBlock) -> int:
    if not block.api_key or await secrets.agents.store.provider_exists(org_id, name):
        return 0
    await secrets.put_provider(org_id, name, block.api_key, block.api_base)
    return 1


async def _named_providers(store: Store, org_id: str) -> set[str]:
    """The providers the org's agents name, by their current versions."""
    names: set[str] = set()
    for record in await store.list_agents(org_id):
        version = await store.get_version(org_id, record.id, record.version)
        provider = AgentSpec.stored(version.spec).provider if version else None
        if provider and providers.PROVIDER_NAME.match(provider):
            names.add(provider)
    return names
