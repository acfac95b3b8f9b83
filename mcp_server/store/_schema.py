"""Table definitions (SQLAlchemy Core); Alembic migrations create and evolve them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend; SQLite would hand back naive ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)  # the DateTime impl has already turned the driver's value into one
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("slug", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # The invisible org a user gets for themselves; the word "organization" stays hidden while it is theirs alone.
    Column("personal", Boolean, nullable=False, server_default=false()),
    # Set by the install's operator (`ariel admin`, migration 0012): a suspension, and limits (null: the defaults).
    Column("suspended_at", UTCDateTime(), nullable=True),
    Column("suspended_reason", String(300), nullable=True),
    Column("max_concurrent_runs", Integer, nullable=True),
    Column("memory_limit", String(16), nullable=True),
    Column("cpus", Float, nullable=True),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("slug", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("deployment_id", String(36), nullable=True),
    # Chosen as it is created (migration 0013); null for agents made before, named the older way.
    Column("deployment_name", String(200), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # What a person approved this agent to do; null until then (migration 0005).
    Column("approved_manifest", JSON, nullable=True),
    Column("approved_version", Integer, nullable=True),
    Column("approved_by", String(300), nullable=True),
    Column("approved_at", UTCDateTime(), nullable=True),
    Column("paused", Boolean, nullable=False, server_default=false()),
    # Who created it (migration 0008): their own MCP servers stand in for the org's of the same name.
    Column("owner_user_id", String(32), nullable=True),
    UniqueConstraint("org_id", "slug", name="uq_agents_org_slug"),
)

agent_versions = Table(
    "agent_versions",
    metadata,
    Column("agent_id", String(32), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("org_id", String(32), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("spec", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(300), nullable=True),
)

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    # Where the identity comes from (local, dev, oidc, invite) and its id there.
    Column("source", String(16), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("email", String(320), nullable=True, index=True),
    Column("name", String(200), nullable=True),
    Column("current_org_id", String(32), ForeignKey("organizations.id", ondelete="SET NULL"), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("source", "subject", name="uq_users_source_subject"),
)

memberships = Table(
    "memberships",
    metadata,
    Column("org_id", String(32), ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
    Column("role", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("prefix", String(8), nullable=False, unique=True),
    Column("key_hash", String(128), nullable=False),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_by", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor_id", String(32), nullable=False),
    Column("actor", String(300), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(300), nullable=False),
    Column("origin", String(100), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", String(1000), nullable=True),
)

installation = Table(
    "installation",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

# Sealed secrets (migration 0006): each org's data keys, only as a key-encryption key wrapped them, and its
# providers' keys, only as their data key sealed them.
org_data_keys = Table(
    "org_data_keys",
    metadata,
    Column("org_id", String(32), ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("kek_id", String(200), nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("wrapped_at", UTCDateTime(), nullable=False),
)

providers = Table(
    "providers",
    metadata,
    Column("org_id", String(32), ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("api_base", Text, nullable=True),
    Column("key_ciphertext", LargeBinary, nullable=False),
    Column("key_nonce", LargeBinary, nullable=False),
    Column("dek_version", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    ForeignKeyConstraint(["org_id", "dek_version"], ["org_data_keys.org_id", "org_data_keys.version"],
                         name="fk_providers_data_key", ondelete="CASCADE"),
)

# Worker keys (migration 0007): what a worker on an org's own hardware presents to the Prefect gateway. An
# identity table like api_keys: the gateway finds a key by its prefix before it knows the org.
worker_keys = Table(
    "worker_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("prefix", String(8), nullable=False, unique=True),
    Column("key_hash", String(128), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_by", String(32), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

# MCP servers as agent tools (migration 0008): the org's (owner_user_id NULL) and each user's own. Credentials only as
# the org's data key sealed them; `pins` are the tool fingerprints an admin approved, which runs trust.
tool_servers = Table(
    "tool_servers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("owner_user_id", String(32), nullable=True),
    Column("name", String(64), nullable=False),
    Column("transport", String(8), nullable=False),
    Column("url", Text, nullable=True),
    Column("catalog_name", String(64), nullable=True),
    Column("auth", String(8), nullable=False),
    Column("header_name", String(100), nullable=True),
    Column("secret_ciphertext", LargeBinary, nullable=True),
    Column("secret_nonce", LargeBinary, nullable=True),
    Column("secret_dek_version", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("tools", JSON, nullable=False),
    Column("pins", JSON, nullable=True),
    Column("created_by", String(32), nullable=False),
    Column("created_by_label", String(300), nullable=False),
    Column("approved_by", String(300), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # Where its tools are listed from (migration 0009): platform (the control plane) or own (the org's worker).
    Column("network", String(8), nullable=False, server_default="platform"),
    Column("listing", JSON, nullable=True),
    ForeignKeyConstraint(["org_id", "secret_dek_version"], ["org_data_keys.org_id", "org_data_keys.version"],
                         name="fk_tool_servers_data_key", ondelete="CASCADE"),
)
Index("uq_tool_servers_org_owner_name", tool_servers.c.org_id, func.coalesce(tool_servers.c.owner_user_id, ""),
      tool_servers.c.name, unique=True)

# The run journal (migration 0010): each step of each agent run, its input and output only sealed with the org's data
# key. A retried run reads it back and resumes (`flows.journal`).
run_steps = Table(
    "run_steps",
    metadata,
    Column("org_id", String(32), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", String(36), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("name", String(200), nullable=False),
    Column("step", Integer, nullable=False),
    Column("status", String(8), nullable=False),
    Column("repeatable", Boolean, nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("dek_version", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime(), nullable=True),
    ForeignKeyConstraint(["org_id", "dek_version"], ["org_data_keys.org_id", "org_data_keys.version"],
                         name="fk_run_steps_data_key", ondelete="CASCADE"),
)
Index("ix_run_steps_org_run", run_steps.c.org_id, run_steps.c.run_id)

# Rate-limit hits (migration 0011): one row per counted event, shared by every app process of an install.
rate_hits = Table(
    "rate_hits",
    metadata,
    Column("key", String(200), nullable=False),
    Column("at", Float, nullable=False),  # epoch seconds, by the database's clock on PostgreSQL
)
Index("ix_rate_hits_key_at", rate_hits.c.key, rate_hits.c.at)
Index("ix_rate_hits_at", rate_hits.c.at)
