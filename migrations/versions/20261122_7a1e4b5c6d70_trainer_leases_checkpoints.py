"""trainer_leases_checkpoints

Trainer: worker leases and attempts, method settings, estimates, validation loss, result file;
one row per saved checkpoint.

Revision ID: 7a1e4b5c6d70
Revises: 54b4633b7e6e
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "7a1e4b5c6d70"
down_revision = "54b4633b7e6e"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fine_tuning_job_checkpoints",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Float(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("valid_loss", sa.Float(), nullable=True),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["fine_tuning_jobs.id"],
                                name=op.f("fk_fine_tuning_job_checkpoints_job_id_fine_tuning_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fine_tuning_job_checkpoints")),
        sa.UniqueConstraint("job_id", "step", name="uq_checkpoint_job_step"),
    )
    with op.batch_alter_table("fine_tuning_job_checkpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fine_tuning_job_checkpoints_job_id"), ["job_id"], unique=False)

    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("method_json", sa.Text(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("estimated_tokens", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("estimated_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("estimated_cost_usd", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", coachforge_shared.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("queued_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("valid_loss", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("result_file", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_fine_tuning_jobs_lease_expires_at"), ["lease_expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fine_tuning_jobs_lease_expires_at"))
        for column in ("result_file", "valid_loss", "queued_at", "attempts", "lease_expires_at",
                       "estimated_cost_usd", "estimated_seconds", "estimated_tokens", "method_json"):
            batch_op.drop_column(column)

    with op.batch_alter_table("fine_tuning_job_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fine_tuning_job_checkpoints_job_id"))
    op.drop_table("fine_tuning_job_checkpoints")
