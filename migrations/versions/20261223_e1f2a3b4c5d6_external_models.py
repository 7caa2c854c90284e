"""external models

A fine-tuning job trained by a remote OpenAI-compatible API that offers no download of its adapter
(OpenAI itself) registers an external model: a model version without an artifact whose requests
inference forwards to the remote. The version keeps the remote's model id (``external_model``) and
base URL (``external_base_url``, without credentials); both are null for adapters the engines serve.

Revision ID: e1f2a3b4c5d6
Revises: d0e1f2a3b4c5
Create Date: 2026-12-23 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "e1f2a3b4c5d6"
down_revision = "d0e1f2a3b4c5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("external_model", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("external_base_url", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("external_base_url")
        batch.drop_column("external_model")
