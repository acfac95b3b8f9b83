"""The run journal: each step of each agent run, written when it starts and when it ends.

A run that is retried after its infrastructure failed (its container killed,
its worker lost) reads its journal back and resumes: completed LLM and tool
calls are not made again (`flows.journal`). A row is one step (`seq`, in the
order the run made them): its kind and name in clear, for diagnoses; its input
and output only as the org's data key sealed them (`sealed`), like secrets
(0006), since a tool's result may hold what a person would not share. A
tenant table under row-level security, like agents (0002).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "run_steps",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("repeatable", sa.Boolean, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("dek_version", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["org_id", "dek_version"], ["org_data_keys.org_id", "org_data_keys.version"],
                                name="fk_run_steps_data_key", ondelete="CASCADE"),
    )
    op.create_index("ix_run_steps_org_run", "run_steps", ["org_id", "run_id"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE run_steps ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE run_steps FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY org_isolation ON run_steps "
        "USING (org_id = current_setting('ariel.org_id', true)) "
        "WITH CHECK (org_id = current_setting('ariel.org_id', true))"
    )


def downgrade() -> None:
    op.drop_table("run_steps")
