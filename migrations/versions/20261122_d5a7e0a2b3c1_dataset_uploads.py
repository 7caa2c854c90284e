"""dataset_uploads

Dataset: upload policy and reports (filled in with the dataset work).

Revision ID: d5a7e0a2b3c1
Revises: 7a1e4b5c6d70
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

revision = "d5a7e0a2b3c1"
down_revision = "7a1e4b5c6d70"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
