"""An agent's deployment name, chosen once as it is created (`deployments.agents.naming`).

Agents deployed since are named by their org's slug (`acme`, under the flow
named by the agent's slug), or by the slug and part of their id when another
install's agent of the same names holds it. Null for agents deployed before:
theirs stays `<org slug>-<agent id, 12 digits>`, since Prefect cannot rename a
deployment and a new one would part the agent from its runs.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    op.add_column("agents", sa.Column("deployment_name", sa.String(200), nullable=True))


def downgrade() -> None:
    # A column drop, not a batch: SQLite would copy the table, and ON DELETE CASCADE take the versions with it.
    op.drop_column("agents", "deployment_name")
