"""Rows of the store as typed, immutable records."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from mcp_server.auth import Role

Outcome = Literal["ok", "denied", "failed"]


@dataclass(frozen=True)
class Organization:
    id: str
    slug: str
    name: str
    created_at: datetime
    personal: bool = False
    # The operator's (`ariel admin`): a suspension with its reason, and limits; None where the install's default holds.
    suspended_at: datetime | None = None
    suspended_reason: str | None = None
    max_concurrent_runs: int | None = None
    memory_limit: str | None = None
    cpus: float | None = None

    @property
    def being_deleted(self) -> bool:
        """Suspended by a deletion under way, or cut short (`OrgService.erase`)."""
        return self.suspended_at is not None and self.suspended_reason == ORG_DELETING


ORG_DELETING = "being deleted"
"""The suspension reason of an org whose deletion began: it is refused until the deletion is done."""


@dataclass(frozen=True)
class User:
    id: str
    source: str
    subject: str
    email: str | None
    name: str | None
    current_org_id: str | None
    created_at: datetime

    @property
    def label(self) -> str:
        """How people recognise the user: email, else name, else the subject."""
        return self.email or self.name or self.subject


@dataclass(frozen=True)
class Member:
    """A user's place in one org."""

    user: User
    org_id: str
    role: Role
    joined_at: datetime


@dataclass(frozen=True)
class ApiKeyRecord:
    """A stored key: its hash, never the key."""

    id: str
    org_id: str
    prefix: str
    key_hash: str
    name: str
    role: Role
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AuditEvent:
    id: str
    org_id: str
    at: datetime
    actor_id: str
    actor: str
    action: str
    target: str
    origin: str
    outcome: Outcome
    detail: str | None


@dataclass(frozen=True)
class AgentRecord:
    id: str
    org_id: str
    slug: str
    name: str
    version: int
    deployment_id: str | None
    created_at: datetime
    updated_at: datetime
    approved_manifest: dict[str, Any] | None = None
    approved_version: int | None = None
    approved_by: str | None = None
    approved_at: datetime | None = None
    paused: bool = False
    owner_user_id: str | None = None  # who created it; None for agents made before migration 0008
    deployment_name: str | None = None  # None for agents made before migration 0013 (`legacy_deployment_name`)


@dataclass(frozen=True)
class AgentVersion:
    agent_id: str
    version: int
    spec: dict[str, Any]
    created_at: datetime
    created_by: str | None = None


@dataclass(frozen=True)
class DataKeyRecord:
    """An org's data key as the key-encryption key `kek_id` wrapped it; never the key itself."""

    org_id: str
    version: int
    kek_id: str
    wrapped_key: bytes = field(repr=False)
    created_at: datetime
    wrapped_at: datetime


@dataclass(frozen=True)
class ProviderRecord:
    """An org's LLM provider: its key only as the org's data key of `dek_version` sealed it."""

    org_id: str
    name: str
    api_base: str | None
    key_ciphertext: bytes = field(repr=False)
    key_nonce: bytes = field(repr=False)
    dek_version: int
    created_at: datetime
    updated_at: datetime
