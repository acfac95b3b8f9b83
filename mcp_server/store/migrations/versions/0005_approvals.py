"""Agents learn approval and pause; versions learn who made them.

An agent runs only once a person has approved its manifest (what it may do);
`approved_manifest` is the manifest they approved, so a later change that
stays within it needs no new approval. Agents that existed before this
migration were running already: they count as approved as they are.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # Plain ADD COLUMNs, never batch mode (see 0003: on SQLite it would cascade-delete rows).
    op.add_column("agents", sa.Column("approved_manifest", sa.JSON(), nullable=True))
    op.add_column("agents", sa.Column("approved_version", sa.Integer(), nullable=True))
    op.add_column("agents", sa.Column("approved_by", sa.String(300), nullable=True))
    op.add_column("agents", sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("agents", sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("agent_versions", sa.Column("created_by", sa.String(300), nullable=True))
    # The manifest of an existing agent is filled in by the control plane on its
    # next start (it is computed from the spec, which SQL cannot do); until then
    # approved_version marks them as approved as they are.
    approve = "UPDATE agents SET approved_version = version, approved_by = 'upgrade to 0005'"
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.execute(approve)
        return
    # Row-level security is forced on agents, for their owner too: update them one org at a time.
    for (org_id,) in bind.execute(sa.text("SELECT id FROM organizations")).all():
        bind.execute(sa.text("SELECT set_config('ariel.org_id', :org, true)"), {"org": org_id})
        bind.execute(sa.text(approve))
    bind.execute(sa.text("SELECT set_config('ariel.org_id', '', true)"))  # later migrations start unscoped
