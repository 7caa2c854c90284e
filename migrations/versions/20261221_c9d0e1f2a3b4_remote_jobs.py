"""remote fine-tuning jobs

Fine-tuning jobs trained by a remote OpenAI-compatible API (backend ``openai_compatible``) store
the remote job's id (``remote_job_id``) before their worker waits on it, so that a worker taking
the job over follows the same remote job instead of creating a second one.

Revision ID: c9d0e1f2a3b4
Revises: b8c9d0e1f2a3
Create Date: 2026-12-21 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c9d0e1f2a3b4"
down_revision = "b8c9d0e1f2a3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("remote_job_id", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("remote_job_id")
