"""stored_completions

Inference: chat completions kept on request (``store: true``, written from ``completion.stored``
events), their metadata pairs (for ``metadata[key]=value`` filters) and their feedback (one row per
completion and rater).

Revision ID: c9e5f1a2b3d4
Revises: b8d4f0e2a3c5
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "c9e5f1a2b3d4"
down_revision = "b8d4f0e2a3c5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_completions",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("requested_model", sa.String(length=300), nullable=False),
        sa.Column("avatar", sa.String(length=64), nullable=False),
        sa.Column("variant", sa.String(length=16), nullable=False),
        sa.Column("end_user", sa.String(length=256), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("fallback_from", sa.String(length=300), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("choices", sa.JSON(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("total_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_seconds", sa.Float(), nullable=False),
        sa.Column("stored_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_stored_completions_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_completions")),
    )
    with op.batch_alter_table("stored_completions", schema=None) as batch_op:
        batch_op.create_index("ix_stored_completions_tenant_created", ["tenant_id", "created", "created_at", "id"],
                              unique=False)

    op.create_table(
        "stored_completion_metadata",
        sa.Column("completion_id", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(["completion_id"], ["stored_completions.id"],
                                name=op.f("fk_stored_completion_metadata_completion_id_stored_completions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("completion_id", "key", name=op.f("pk_stored_completion_metadata")),
    )
    with op.batch_alter_table("stored_completion_metadata", schema=None) as batch_op:
        batch_op.create_index("ix_stored_completion_metadata_key_value", ["key", "value"], unique=False)

    op.create_table(
        "completion_feedback",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("completion_id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("rater", sa.String(length=256), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("gold", sa.Boolean(), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["completion_id"], ["stored_completions.id"],
                                name=op.f("fk_completion_feedback_completion_id_stored_completions"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_completion_feedback_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completion_feedback")),
        sa.UniqueConstraint("completion_id", "rater", name=op.f("uq_completion_feedback_completion_id")),
    )
    with op.batch_alter_table("completion_feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_completion_feedback_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("completion_feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_completion_feedback_tenant_id"))
    op.drop_table("completion_feedback")
    with op.batch_alter_table("stored_completion_metadata", schema=None) as batch_op:
        batch_op.drop_index("ix_stored_completion_metadata_key_value")
    op.drop_table("stored_completion_metadata")
    with op.batch_alter_table("stored_completions", schema=None) as batch_op:
        batch_op.drop_index("ix_stored_completions_tenant_created")
    op.drop_table("stored_completions")
