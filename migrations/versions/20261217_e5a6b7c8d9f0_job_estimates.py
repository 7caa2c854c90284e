"""job estimates

Fine-tuning jobs keep the whole estimate made at creation with the training data's eligibility
(``estimate_json``: tokens per epoch, epochs, steps, device, tokens/s, seconds, price; examples,
usable ones, unusable ones by reason, warnings, advice) and the hyperparameter preset they were
created with (``preset``).

Revision ID: e5a6b7c8d9f0
Revises: d4f5a6b7c8e9
Create Date: 2026-12-17 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "e5a6b7c8d9f0"
down_revision = "d4f5a6b7c8e9"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("estimate_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("preset", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("preset")
        batch.drop_column("estimate_json")
