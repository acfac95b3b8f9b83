"""The Prefect gateway inside the HTTP app: served under `/prefect`, ahead of the MCP side's middleware."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.pools.work_pools import install_prefix, own_pool_name
from mcp_server.auth.worker_keys import verify_worker_key, worker_key_prefix
from mcp_server.gateway import GATEWAY_PATH, Gateway
from mcp_server.gateway.scopes import PoolScope
from mcp_server.gateway.scopes import Scope as GatewayScope
from mcp_server.services.caller import HOST_USER, RANK
from mcp_server.services.container import Services
from mcp_server.services.orgs import ACTION_ROLES
from mcp_server.settings import ArielSettings


class ServeGateway:
    """Sends `/prefect/…` (HTTP and websockets) to the gateway, with the prefix taken off; the rest on."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and path.startswith(GATEWAY_PATH + "/"):
            inner = dict(scope, path=path.removeprefix(GATEWAY_PATH),
                         root_path=scope.get("root_path", "") + GATEWAY_PATH)
            inner["raw_path"] = inner["path"].encode()
            await self.gateway(inner, receive, send)
            return
        await self.app(scope, receive, send)


async def gateway_scope(settings: ArielSettings, services: Services, token: str) -> GatewayScope | None:
    """The scope of a worker credential: the pool host's key (this install's platform pools), or an org's worker
    key (that org's own-hardware pool); None for anything else, a revoked key included."""
    if settings.pool_host_key is not None and hmac.compare_digest(  # both stripped: the settings' validator
        token.encode(), settings.pool_host_key.get_secret_value().encode()
    ):
        agents = services.agents
        return PoolScope.pool_host(install_prefix(agents.install_id), agents.pool_type, agents.runtime_image)
    prefix = worker_key_prefix(token)
    if prefix is None:
        return None
    record = await services.store.worker_key_by_prefix(prefix)
    if record is None or record.revoked_at is not None or not verify_worker_key(token, record.key_hash):
        return None
    if record.created_by != HOST_USER:
        # A key acts for the admin who made it, as an API key does: once they leave the org or are no longer an
        # admin, it no longer serves the org's pool (and with it, its runs' tokens and provider keys).
        creator = await services.store.member(record.org_id, record.created_by)
        if creator is None or RANK[creator.role] < RANK[ACTION_ROLES["create_worker_key"]]:
            return None
    return PoolScope.own_hardware(own_pool_name(services.agents.install_id, record.org_id), record.org_id,
                                  label=f"worker key {record.prefix} of org {record.org_id}")
