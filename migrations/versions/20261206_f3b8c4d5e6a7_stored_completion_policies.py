"""stored completion policies

Inference: per-tenant storing defaults, retention and PII scrubbing of stored completions
(``stored_completion_policies``); registry: an avatar's own storing rule (``avatars.store``).

Revision ID: f3b8c4d5e6a7
Revises: e2a7b3c4d5f6
Create Date: 2026-12-06 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "f3b8c4d5e6a7"
down_revision = "e2a7b3c4d5f6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_completion_policies",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("store_by_default", sa.Boolean(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("scrub_pii", sa.Boolean(), nullable=False),
        sa.Column("updated_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_stored_completion_policies_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_stored_completion_policies")),
    )
    # Registry: an avatar's own storing rule (NULL: the tenant's default).
    with op.batch_alter_table("avatars", schema=None) as batch_op:
        batch_op.add_column(sa.Column("store", sa.Boolean(), nullable=True))


def downgrade() -> None:
    # Dropped in place (SQLite 3.35+ can): recreating the table would drop the old one, and with
    # foreign keys on, that deletes every avatar's history and retrain policy by cascade.
    with op.batch_alter_table("avatars", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("store")
    op.drop_table("stored_completion_policies")
