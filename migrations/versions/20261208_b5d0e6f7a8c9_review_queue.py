"""review queue

Inference: a rater can flag a stored completion (``completion_feedback.flagged``); one
``completion_reviews`` row per completion with feedback or a review keeps the summary the review
queue is read from (ratings, flags, corrected, kept up to date with every feedback post) and the
review state (dismissed or reopened, by whom, why); an index on stored completions by avatar and
time for the experiment statistics.
Coach: ``coach_outcomes`` keeps each outcome of a recommendation (applied/undone, athlete
followed it) until inference recorded it as feedback on the recommendation's stored completion.

Revision ID: b5d0e6f7a8c9
Revises: a4c9d5e6f7b8
Create Date: 2026-12-08 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "b5d0e6f7a8c9"
down_revision = "a4c9d5e6f7b8"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("completion_feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false()))

    op.create_table(
        "completion_reviews",
        sa.Column("completion_id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("rated", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rating_sum", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("flags", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("corrected", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("state", sa.String(length=16), nullable=False, server_default=""),
        sa.Column("reviewer", sa.String(length=256), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("reviewed_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["completion_id"], ["stored_completions.id"],
                                name=op.f("fk_completion_reviews_completion_id_stored_completions"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_completion_reviews_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("completion_id", name=op.f("pk_completion_reviews")),
    )
    with op.batch_alter_table("completion_reviews", schema=None) as batch_op:
        batch_op.create_index("ix_completion_reviews_queue", ["tenant_id", "corrected", "state"], unique=False)
    # Completions rated before: their summary (no flags existed yet, no review state).
    op.execute(
        "INSERT INTO completion_reviews (completion_id, tenant_id, rated, rating_sum, flags, corrected, state, "
        "updated_at) SELECT completion_id, MIN(tenant_id), COUNT(rating), COALESCE(SUM(rating), 0), 0, "
        "MAX(CASE WHEN correction IS NOT NULL THEN 1 ELSE 0 END) = 1, '', MAX(updated_at) "
        "FROM completion_feedback GROUP BY completion_id")

    with op.batch_alter_table("stored_completions", schema=None) as batch_op:
        batch_op.create_index("ix_stored_completions_tenant_avatar_created", ["tenant_id", "avatar", "created"],
                              unique=False)

    op.create_table(
        "coach_outcomes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("recommendation_id", sa.String(length=64), nullable=False),
        sa.Column("completion_id", sa.String(length=128), nullable=True),
        sa.Column("rater", sa.String(length=64), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("followed", sa.Boolean(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("sent_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["recommendation_id"], ["coach_recommendations.id"],
                                name=op.f("fk_coach_outcomes_recommendation_id_coach_recommendations"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_coach_outcomes_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coach_outcomes")),
        sa.UniqueConstraint("recommendation_id", "rater", name=op.f("uq_coach_outcomes_recommendation_id")),
    )
    with op.batch_alter_table("coach_outcomes", schema=None) as batch_op:
        batch_op.create_index("ix_coach_outcomes_status_next_attempt", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index("ix_coach_outcomes_tenant_completion", ["tenant_id", "completion_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("coach_outcomes", schema=None) as batch_op:
        batch_op.drop_index("ix_coach_outcomes_tenant_completion")
        batch_op.drop_index("ix_coach_outcomes_status_next_attempt")
    op.drop_table("coach_outcomes")
    with op.batch_alter_table("stored_completions", schema=None) as batch_op:
        batch_op.drop_index("ix_stored_completions_tenant_avatar_created")
    with op.batch_alter_table("completion_reviews", schema=None) as batch_op:
        batch_op.drop_index("ix_completion_reviews_queue")
    op.drop_table("completion_reviews")
    with op.batch_alter_table("completion_feedback", schema=None) as batch_op:
        batch_op.drop_column("flagged")
