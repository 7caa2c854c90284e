"""comparison sources

Evaluator: comparisons built from files or stored completions; canceled status.

Revision ID: a4c9d5e6f7b8
Revises: f3b8c4d5e6a7
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "a4c9d5e6f7b8"
down_revision = "f3b8c4d5e6a7"
branch_labels = None
depends_on = None


RANK_MODULUS = 2_147_483_647
"""Pair ranks are below this prime (see ComparisonPair.rank)."""


def upgrade() -> None:
    # Only added columns, so SQLite alters the tables in place: rebuilding comparisons or
    # comparison_pairs would cascade-delete their pairs and votes.
    # Where a comparison's prompts came from (NULL: inline prompts) and when it was canceled.
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("canceled_at", coachforge_shared.db.UTCDateTime(timezone=True),
                                      nullable=True))
    # Each pair's random rank, from which every voter's serving order is computed in SQL; existing
    # pairs draw theirs now.
    with op.batch_alter_table("comparison_pairs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rank", sa.BigInteger(), server_default="0", nullable=False))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"UPDATE comparison_pairs SET rank = floor(random() * {RANK_MODULUS})::bigint")
    else:
        op.execute(f"UPDATE comparison_pairs SET rank = abs(random() % {RANK_MODULUS})")


def downgrade() -> None:
    # ALTER TABLE … DROP COLUMN in place (SQLite 3.35+), never a rebuild that would cascade-delete rows.
    with op.batch_alter_table("comparison_pairs", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("rank")
    with op.batch_alter_table("comparisons", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("canceled_at")
        batch_op.drop_column("source")
