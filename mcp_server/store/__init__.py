"""The control-plane store: organizations, users and memberships, API keys, agents and their versions, the audit log,
sealed secrets (data keys and providers), MCP servers agents use as tools."""

from mcp_server.store._ids import new_id
from mcp_server.store._leases import Lease
from mcp_server.store._records import (
    ORG_DELETING,
    AgentRecord,
    AgentVersion,
    ApiKeyRecord,
    AuditEvent,
    DataKeyRecord,
    Member,
    Organization,
    Outcome,
    ProviderRecord,
    Role,
    User,
)
from mcp_server.store._run_steps import RunStepRecord
from mcp_server.store._store import Store
from mcp_server.store._tool_servers import ToolServerRecord
from mcp_server.store._worker_keys import WorkerKeyRecord
from mcp_server.store.exceptions import Conflict, NotOurs, StoreError, Unreachable

__all__ = [
    "ORG_DELETING",
    "AgentRecord",
    "AgentVersion",
    "ApiKeyRecord",
    "AuditEvent",
    "Conflict",
    "DataKeyRecord",
    "Lease",
    "Member",
    "Organization",
    "Outcome",
    "ProviderRecord",
    "Role",
    "Store",
    "StoreError",
    "RunStepRecord",
    "ToolServerRecord",
    "NotOurs",
    "Unreachable",
    "User",
    "WorkerKeyRecord",
    "new_id",
]
