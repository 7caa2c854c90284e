"""retrain policies

Registry: per-avatar retrain policies and their runs.

Revision ID: c6e1f7a8b9d0
Revises: b5d0e6f7a8c9
Create Date: 2026-12-09 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "c6e1f7a8b9d0"
down_revision = "b5d0e6f7a8c9"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retrain_policies",
        sa.Column("avatar_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("policy_json", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("checked_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("triggered_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["avatar_id"], ["avatars.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("avatar_id"),
    )
    op.create_index("ix_retrain_policies_tenant_id", "retrain_policies", ["tenant_id"])
    op.create_table(
        "retrain_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("avatar_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("policy_json", sa.Text(), nullable=False),
        sa.Column("dataset_version_id", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("model_id", sa.String(length=300), nullable=True),
        sa.Column("baseline_model", sa.String(length=300), nullable=True),
        sa.Column("eval_id", sa.String(length=64), nullable=True),
        sa.Column("baseline_run_id", sa.String(length=64), nullable=True),
        sa.Column("candidate_run_id", sa.String(length=64), nullable=True),
        sa.Column("decision_json", sa.Text(), server_default="{}", nullable=False),
        sa.Column("error", sa.Text(), server_default="", nullable=False),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["avatar_id"], ["avatars.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_retrain_runs_tenant_id", "retrain_runs", ["tenant_id"])
    op.create_index("ix_retrain_runs_avatar_id", "retrain_runs", ["avatar_id"])
    op.create_index("ix_retrain_runs_status_lease", "retrain_runs", ["status", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_retrain_runs_status_lease", table_name="retrain_runs")
    op.drop_index("ix_retrain_runs_avatar_id", table_name="retrain_runs")
    op.drop_index("ix_retrain_runs_tenant_id", table_name="retrain_runs")
    op.drop_table("retrain_runs")
    op.drop_index("ix_retrain_policies_tenant_id", table_name="retrain_policies")
    op.drop_table("retrain_policies")
