"""tenant rate limits and daily quotas

Each tenant may have its own limits on inference: requests and tokens per minute, tokens and cost
(US dollars) per UTC day. NULL means the deployment's default (the inference settings); 0 means no
limit.

Revision ID: b2d3e4f5a6c7
Revises: a1c2e3f4b5d6
Create Date: 2026-12-14 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "b2d3e4f5a6c7"
down_revision = "a1c2e3f4b5d6"
branch_labels = None
depends_on = None


COLUMNS = ("max_requests_per_1_minute", "max_tokens_per_1_minute", "max_tokens_per_1_day", "max_cost_usd_per_1_day",
           "limits_updated_at")


def upgrade() -> None:
    # Plain ALTER TABLE on both databases: SQLite's batch mode would copy and drop the tenants table,
    # and dropping it cascades to every row that references a tenant.
    op.add_column("tenants", sa.Column("max_requests_per_1_minute", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("max_tokens_per_1_minute", sa.BigInteger(), nullable=True))
    op.add_column("tenants", sa.Column("max_tokens_per_1_day", sa.BigInteger(), nullable=True))
    op.add_column("tenants", sa.Column("max_cost_usd_per_1_day", sa.Float(), nullable=True))
    op.add_column("tenants", sa.Column("limits_updated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.execute(f"ALTER TABLE tenants DROP COLUMN {column}")  # SQLite 3.35+ and PostgreSQL alike
