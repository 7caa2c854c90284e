"""sealed webhook secrets

Webhook signing secrets may be stored sealed (``fernet:<token>``, about 150 characters) when the
operator sets ``COACHFORGE_WEBHOOKS_SECRET_KEYS``: the columns grow from 128 to 512 characters.

Revision ID: d0e1f2a3b4c5
Revises: c9d0e1f2a3b4
Create Date: 2026-12-22 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "d0e1f2a3b4c5"
down_revision = "c9d0e1f2a3b4"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.alter_column("secret", existing_type=sa.String(length=128), type_=sa.String(length=512),
                           existing_nullable=False)
        batch.alter_column("previous_secret", existing_type=sa.String(length=128), type_=sa.String(length=512),
                           existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.alter_column("secret", existing_type=sa.String(length=512), type_=sa.String(length=128),
                           existing_nullable=False)
        batch.alter_column("previous_secret", existing_type=sa.String(length=512), type_=sa.String(length=128),
                           existing_nullable=True)
