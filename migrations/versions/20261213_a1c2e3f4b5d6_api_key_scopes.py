"""api key scopes

API keys carry scopes (``read``, ``write``, ``admin``, comma separated) and the time they were last
used. Keys created before scopes existed could do everything, so they keep every scope; new keys
get the scopes they are created with.

Revision ID: a1c2e3f4b5d6
Revises: f9b4c0d1e2a3
Create Date: 2026-12-13 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a1c2e3f4b5d6"
down_revision = "f9b4c0d1e2a3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scopes", sa.String(100), nullable=False, server_default="read,write,admin"))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("scopes")
