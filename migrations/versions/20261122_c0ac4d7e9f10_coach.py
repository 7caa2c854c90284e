"""coach

Coach: athletes, workouts, wellness, plan changes (filled in with the coach work).

Revision ID: c0ac4d7e9f10
Revises: d5a7e0a2b3c1
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

revision = "c0ac4d7e9f10"
down_revision = "d5a7e0a2b3c1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
