"""trainer claims

Trainer workers claim the longest waiting queued job from the database (``SELECT … FOR UPDATE SKIP
LOCKED LIMIT 1`` in ``queued_at``, ``created_at`` order) instead of the job named by the event they
consumed. The index ``(status, queued_at, created_at)`` serves that order; jobs queued before
``queued_at`` was recorded get their creation time, so that every queued job has one (and the order
is the same on PostgreSQL, where NULLs sort last, and on SQLite, where they sort first).

Revision ID: f9b4c0d1e2a3
Revises: e8a3b9c0d1f2
Create Date: 2026-12-12 12:00:00
"""

from __future__ import annotations

from alembic import op

revision = "f9b4c0d1e2a3"
down_revision = "e8a3b9c0d1f2"
branch_labels = None
depends_on = None

INDEX = "ix_fine_tuning_jobs_claim_order"


def upgrade() -> None:
    op.execute("UPDATE fine_tuning_jobs SET queued_at = created_at WHERE queued_at IS NULL AND status = 'queued'")
    op.create_index(INDEX, "fine_tuning_jobs", ["status", "queued_at", "created_at"], unique=False)


def downgrade() -> None:
    # The filled-in queued_at values stay: they are true enough (the job was queued when it was created).
    op.drop_index(INDEX, table_name="fine_tuning_jobs")
