"""What an install's operator sets on an org (`ariel admin`): suspension and limits.

`suspended_at` (with the operator's reason): the org's credentials are refused
with a message that says so, its schedules and pools are paused; nothing is
deleted, and resuming clears it. The limits (null: the install's defaults)
bound the org's runs: how many at once (its pools' concurrency limit), and each
run container's memory (Docker's notation, e.g. `512m`) and CPUs.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    op.add_column("organizations", sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("organizations", sa.Column("suspended_reason", sa.String(300), nullable=True))
    op.add_column("organizations", sa.Column("max_concurrent_runs", sa.Integer, nullable=True))
    op.add_column("organizations", sa.Column("memory_limit", sa.String(16), nullable=True))
    op.add_column("organizations", sa.Column("cpus", sa.Float, nullable=True))


def downgrade() -> None:
    # Column by column, not a batch: SQLite would copy the table and drop the old one, which its foreign keys'
    # ON DELETE CASCADE would take every org's rows with.
    for column in ("cpus", "memory_limit", "max_concurrent_runs", "suspended_reason", "suspended_at"):
        op.drop_column("organizations", column)
