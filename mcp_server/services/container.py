"""The services one running control plane holds, opened and closed with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from deployments.agents.signing import Ed25519ConfigSigner
from deployments.images.stdio_catalog import installed_command
from deployments.pools.work_pools import PoolType
from deployments.runs.hosting import Hosting
from flows.network.guard import control_plane_hosts, protected_endpoints
from mcp_server.services.agents import AgentService
from mcp_server.services.authentication import Authenticator
from mcp_server.services.journal import RunJournal
from mcp_server.services.orgs import OrgService
from mcp_server.services.rate_limits import RateLimit, tool_call_limit
from mcp_server.services.runs import RunService
from mcp_server.services.sealing import Sealer, keyring_from_settings
from mcp_server.services.secrets import SecretService
from mcp_server.services.sign_in_relay import SignInRelay
from mcp_server.services.tool_oauth import CALLBACK_PATH, ToolOAuth
from mcp_server.services.tool_servers import SealedTokenVault, ToolServerService
from mcp_server.services.transcripts import RunTranscripts
from mcp_server.services.upgrades import record_upgraded_manifests
from mcp_server.services.wakeups import Wakeups, keep_hearing
from mcp_server.settings import ArielSettings
from mcp_server.store import Store


@dataclass
class Services:
    store: Store
    auth: Authenticator
    agents: AgentService
    runs: RunService
    orgs: OrgService
    secrets: SecretService
    tool_servers: ToolServerService
    tool_oauth: ToolOAuth
    sign_ins: SignInRelay  # the HTTP app's /oauth/callback's: completes a sign-in begun in any process
    journal: RunJournal  # the gateway's, for runs' steps
    wakeups: Wakeups  # the gateway's too: it holds workers' polls until a run is made
    tool_calls: RateLimit | None  # each user's tool calls, counted in the store: one limit across the processes
    transcripts: RunTranscripts  # runs' transcripts, sealed in the object store


@asynccontextmanager
async def open_services(settings: ArielSettings, prefect_api_url: str, pool_type: PoolType) -> AsyncIterator[Services]:
    store = await Store.open(settings.resolved_store_url)
    try:
        # The operator's first (the store's database, say), then the control plane's own services.
        protected_hosts = tuple(dict.fromkeys(
            [*settings.protected_endpoints, *control_plane_hosts(settings.host, settings.port, prefect_api_url),
             *settings.service_endpoints()]))
        agents = AgentService(
            store, prefect_api_url, pool_type, settings.runtime_image, await store.installation_id(),
            protected_hosts=protected_hosts,
            refuse_private_networks=not settings.mcp_private_networks,
            memory_limit=settings.run_memory_limit,
            prefect_auth_string=settings.prefect_credential(),
            signer=Ed25519ConfigSigner.from_text(settings.config_signing_key_text()),
            # A Docker run starts a catalog server inside its container; a process run on this host, as installed.
            telemetry=settings.otlp_endpoint is not None,
            stdio_commands={
                entry.name: entry.command if pool_type == "docker" else installed_command(entry, settings.stdio_folder)
                for entry in settings.stdio_catalog
            },
        )
        sealer = Sealer(store, keyring_from_settings(settings))
        objects = settings.object_store()
        # At start, not at a run's first step: a bucket that is missing, refused or unreachable is the operator's
        # to fix, and says so before any run depends on it.
        await objects.check()
        transcripts = RunTranscripts(objects, sealer, link_base=settings.base_url)
        # The control plane's own connections to a server (listing its tools, signing in) are guarded as a run's are;
        # private networks by their own rule (`private_networks`), whose refusal says how an org reaches its own.
        protected = protected_endpoints(prefect_api_url, ",".join(protected_hosts))
        tool_oauth = ToolOAuth(SealedTokenVault(store, sealer), f"{settings.base_url}{CALLBACK_PATH}",
                               protected=protected, private_networks=settings.mcp_private_networks)
        await record_upgraded_manifests(store)
        wakeups = Wakeups()
        # Runs the install's other app processes make wake this one's held polls too (PostgreSQL only).
        hearing = asyncio.create_task(keep_hearing(store, wakeups)) if store.shares_notifications else None
        # Sign-ins begun here, whose callbacks reach another process, are completed here (PostgreSQL only).
        sign_ins = SignInRelay(store, tool_oauth)
        answering = asyncio.create_task(sign_ins.keep_answering()) if store.shares_notifications else None
        try:
            async with agents.connected():
                yield Services(
                    store=store,
                    auth=Authenticator.from_settings(store, settings),
                    agents=agents,
                    runs=RunService(agents, Hosting(settings.profile, str(settings.home / "logs")), wakeups,
                                    transcripts=transcripts),
                    orgs=OrgService(store, agents, settings.auth_mode, public_url=settings.base_url,
                                    transcripts=transcripts),
                    secrets=SecretService(agents, sealer),
                    tool_servers=ToolServerService(
                        agents, sealer, protected=protected, stdio_catalog=settings.stdio_catalog,
                        stdio_image=settings.runtime_image if pool_type == "docker" else None, oauth=tool_oauth,
                        stdio_folder=settings.stdio_folder if pool_type != "docker" else None,
                        private_networks=settings.mcp_private_networks,
                    ),
                    tool_oauth=tool_oauth,
                    sign_ins=sign_ins,
                    journal=RunJournal(store, sealer),
                    wakeups=wakeups,
                    tool_calls=tool_call_limit(settings, store),
                    transcripts=transcripts,
                )
        finally:
            for task in (hearing, answering):
                if task is not None:
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
            await tool_oauth.aclose()  # pending sign-ins end with the process
    finally:
        await store.close()
