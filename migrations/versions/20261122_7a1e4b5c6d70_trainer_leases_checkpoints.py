"""trainer_leases_checkpoints

Trainer: worker leases, checkpoints, job estimates (filled in with the trainer work).

Revision ID: 7a1e4b5c6d70
Revises: 54b4633b7e6e
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

revision = "7a1e4b5c6d70"
down_revision = "54b4633b7e6e"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
