"""avatar personas

Registry: versions of an avatar's persona (``avatar_personas``: system prompt, sampling defaults,
few-shot turns, response format), the avatar's active persona version and the persona version its
candidate share answers with (``avatars.persona_version``, ``avatars.candidate_persona_version``).

Revision ID: c3e4f5a6b7d8
Revises: b2d3e4f5a6c7
Create Date: 2026-12-15 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "c3e4f5a6b7d8"
down_revision = "b2d3e4f5a6c7"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "avatar_personas",
        sa.Column("avatar_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("settings_json", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["avatar_id"], ["avatars.id"], name=op.f("fk_avatar_personas_avatar_id_avatars"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("avatar_id", "version", name=op.f("pk_avatar_personas")),
    )
    # Plain ALTER TABLE on both databases: SQLite's batch mode would copy and drop the avatars table,
    # and dropping it cascades to the avatars' history and retrain policies.
    op.add_column("avatars", sa.Column("persona_version", sa.Integer(), nullable=True))
    op.add_column("avatars", sa.Column("candidate_persona_version", sa.Integer(), nullable=True))
    if op.get_bind().dialect.name != "sqlite":  # SQLite does not enforce a VARCHAR's length
        op.alter_column("avatar_changes", "action", type_=sa.String(40), existing_type=sa.String(20),
                        existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("avatar_changes", "action", type_=sa.String(20), existing_type=sa.String(40),
                        existing_nullable=False)
    for column in ("candidate_persona_version", "persona_version"):
        op.execute(f"ALTER TABLE avatars DROP COLUMN {column}")  # SQLite 3.35+ and PostgreSQL alike
    op.drop_table("avatar_personas")
