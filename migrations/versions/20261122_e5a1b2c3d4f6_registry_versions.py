"""registry_versions

Registry: version numbers, lifecycle, artifact checksums, compatibility facts (filled in with the registry work).

Revision ID: e5a1b2c3d4f6
Revises: c0ac4d7e9f10
Create Date: 2026-11-22 12:00:00
"""

from __future__ import annotations

revision = "e5a1b2c3d4f6"
down_revision = "c0ac4d7e9f10"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
