"""usage_daily

Inference: daily usage rows per tenant/avatar/model (filled in with the inference work).

Revision ID: f6b2c3d4e5a7
Revises: e5a1b2c3d4f6
Create Date: 2026-11-22 12:00:00
"""

from __future__ import annotations

revision = "f6b2c3d4e5a7"
down_revision = "e5a1b2c3d4f6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
