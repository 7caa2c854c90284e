"""coach recommendation completion

Coach: a recommendation keeps the id of the stored chat completion the model answered with
(nullable: rule-based fallbacks and older rows have none).

Revision ID: e2a7b3c4d5f6
Revises: d1f6a2b3c4e5
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "e2a7b3c4d5f6"
down_revision = "d1f6a2b3c4e5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("coach_recommendations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("completion_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("coach_recommendations", schema=None) as batch_op:
        batch_op.drop_column("completion_id")
