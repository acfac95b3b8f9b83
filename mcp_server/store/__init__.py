"""The control-plane store: organizations, users and memberships, API keys, agents and their versions, the audit log."""

from mcp_server.store._ids import new_id
from mcp_server.store._records import (
    AgentRecord,
    AgentVersion,
    ApiKeyRecord,
    AuditEvent,
    Member,
    Organization,
    Outcome,
    Role,
    User,
)
from mcp_server.store._store import Store
from mcp_server.store.exceptions import Conflict, StoreError

__all__ = [
    "AgentRecord",
    "AgentVersion",
    "ApiKeyRecord",
    "AuditEvent",
    "Conflict",
    "Member",
    "Organization",
    "Outcome",
    "Role",
    "Store",
    "StoreError",
    "User",
    "new_id",
]
