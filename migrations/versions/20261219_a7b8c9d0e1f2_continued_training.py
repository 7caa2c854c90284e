"""continued training

Fine-tuning jobs name the fine-tuned model they continue training from (``parent_model``; the job's
``model`` is then that model's base), OpenAI's method type (``method_type``: supervised, dpo) and
the training backend (``backend``: trl, unsloth, ...). Jobs created before keep supervised on trl.

Revision ID: a7b8c9d0e1f2
Revises: f6a7b8c9d0e1
Create Date: 2026-12-19 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a7b8c9d0e1f2"
down_revision = "f6a7b8c9d0e1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("parent_model", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("method_type", sa.String(length=20), nullable=False, server_default="supervised"))
        batch.add_column(sa.Column("backend", sa.String(length=32), nullable=False, server_default="trl"))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("backend")
        batch.drop_column("method_type")
        batch.drop_column("parent_model")
