"""usage_purpose

Inference: daily usage rows are split by purpose ("app": applications' requests; "evaluation": eval
runs' samples and judges); existing rows are "app". The purpose joins the rows' unique key.

Revision ID: b8d4f0e2a3c5
Revises: a7c3e9d1f2b4
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "b8d4f0e2a3c5"
down_revision = "a7c3e9d1f2b4"
branch_labels = None
depends_on = None

UNIQUE = "uq_usage_daily_tenant_id"

_SAME_KEY = ("o.tenant_id = usage_daily.tenant_id AND o.day = usage_daily.day AND o.model = usage_daily.model "
             "AND o.avatar = usage_daily.avatar")


def upgrade() -> None:
    with op.batch_alter_table("usage_daily", schema=None) as batch_op:
        batch_op.drop_constraint(UNIQUE, type_="unique")
        batch_op.add_column(sa.Column("purpose", sa.String(length=16), nullable=False, server_default="app"))
        batch_op.create_unique_constraint(UNIQUE, ["tenant_id", "day", "model", "avatar", "purpose"])


def downgrade() -> None:
    # One row per tenant/day/model/avatar again: other purposes' counts are added to the "app" row of
    # the same key (or become that row when there is none), so totals are kept.
    for column in ("messages", "input_tokens", "output_tokens", "cost_usd"):
        op.execute(
            f"UPDATE usage_daily SET {column} = {column} + (SELECT SUM(o.{column}) FROM usage_daily o "
            f"WHERE {_SAME_KEY} AND o.purpose <> 'app') "
            f"WHERE purpose = 'app' AND EXISTS (SELECT 1 FROM usage_daily o WHERE {_SAME_KEY} AND o.purpose <> 'app')")
    op.execute(f"DELETE FROM usage_daily WHERE purpose <> 'app' "
               f"AND EXISTS (SELECT 1 FROM usage_daily o WHERE {_SAME_KEY} AND o.purpose = 'app')")
    op.execute("UPDATE usage_daily SET purpose = 'app'")
    with op.batch_alter_table("usage_daily", schema=None) as batch_op:
        batch_op.drop_constraint(UNIQUE, type_="unique")
        batch_op.drop_column("purpose")
        batch_op.create_unique_constraint(UNIQUE, ["tenant_id", "day", "model", "avatar"])
