"""event outbox

Shared: ``outbox_events``, events written in the transaction of the change they report and sent
by the outbox relay once committed (and usage events the producer could not deliver).

Revision ID: e8a3b9c0d1f2
Revises: d7f2a8b9c0e1
Create Date: 2026-12-11 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "e8a3b9c0d1f2"
down_revision = "d7f2a8b9c0e1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_events",
        # SQLite autoincrements an INTEGER primary key only (a BIGINT one would stay NULL)
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
    )


def downgrade() -> None:
    op.drop_table("outbox_events")
