"""stored listing indexes

Inference: indexes that keep listing stored completions by metadata fast at a million rows.
Each metadata pair gets copies of its completion's tenant and list order (``tenant_id``, ``created``,
``created_at``, filled in from the completions), and one index ``(tenant_id, key, value, created,
created_at, completion_id)`` replaces ``(key, value)``: a tenant's completions with a pair, already in
list order, so a page is a range of it however common the pair (``bench/stored_listing.py``).

On PostgreSQL the table is rewritten under a SHARE lock (lists keep working, writes of pairs wait:
about two minutes per million stored completions on a small machine), and a trigger fills the
copies in for pairs written without them, by the previous release's pods during a rolling upgrade.
(SQLite is the all-in-one's database: its services start after the migration.)

Revision ID: d7f2a8b9c0e1
Revises: c6e1f7a8b9d0
Create Date: 2026-12-10 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "d7f2a8b9c0e1"
down_revision = "c6e1f7a8b9d0"
branch_labels = None
depends_on = None


TABLE = "stored_completion_metadata"
COPIED = (("tenant_id", sa.String(length=64)), ("created", sa.BigInteger()),
          ("created_at", coachforge_shared.db.UTCDateTime(timezone=True)))
LISTING = ["tenant_id", "key", "value", "created", "created_at", "completion_id"]
TRIGGER = "stored_completion_metadata_copies"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
        return
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.drop_index("ix_stored_completion_metadata_key_value")
        for name, type_ in COPIED:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    # SQLite enforces the foreign key only where a connection asked it to: drop pairs left without theirs
    op.execute(f"DELETE FROM {TABLE} WHERE completion_id NOT IN (SELECT id FROM stored_completions)")
    op.execute(f"UPDATE {TABLE} SET (tenant_id, created, created_at) = (SELECT c.tenant_id, c.created, c.created_at "
               f"FROM stored_completions AS c WHERE c.id = {TABLE}.completion_id)")
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        for name, type_ in COPIED:
            batch_op.alter_column(name, existing_type=type_, nullable=False)
        batch_op.create_index("ix_stored_completion_metadata_listing", LISTING, unique=False)


def _upgrade_postgresql() -> None:
    """The pairs are copied with their completions' columns into a new table that takes the old
    one's place and names: one pass, where an UPDATE of every row would leave as many dead rows
    (and an index built in the same transaction twice its size)."""
    op.execute(f"LOCK TABLE {TABLE} IN SHARE MODE")  # no pair written meanwhile is left behind
    op.execute(f"CREATE TABLE {TABLE}_new AS SELECT m.completion_id, m.key, m.value, c.tenant_id, c.created, "
               f"c.created_at FROM {TABLE} AS m JOIN stored_completions AS c ON c.id = m.completion_id")
    op.drop_table(TABLE)
    op.rename_table(f"{TABLE}_new", TABLE)
    not_null = ", ".join(f"ALTER COLUMN {name} SET NOT NULL"
                         for name in ("completion_id", "key", "value", *(name for name, _ in COPIED)))
    op.execute(f"ALTER TABLE {TABLE} {not_null}, "
               "ADD CONSTRAINT pk_stored_completion_metadata PRIMARY KEY (completion_id, key), "
               "ADD CONSTRAINT fk_stored_completion_metadata_completion_id_stored_completions "
               "FOREIGN KEY (completion_id) REFERENCES stored_completions (id) ON DELETE CASCADE")
    op.create_index("ix_stored_completion_metadata_listing", TABLE, LISTING, unique=False)
    op.execute(f"""CREATE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.tenant_id, c.created, c.created_at INTO NEW.tenant_id, NEW.created, NEW.created_at
    FROM stored_completions AS c WHERE c.id = NEW.completion_id;
    RETURN NEW;
END $$""")
    op.execute(f"CREATE TRIGGER {TRIGGER} BEFORE INSERT ON {TABLE} FOR EACH ROW "
               "WHEN (NEW.tenant_id IS NULL OR NEW.created IS NULL OR NEW.created_at IS NULL) "
               f"EXECUTE FUNCTION {TRIGGER}()")
    op.execute(f"ANALYZE {TABLE}")  # a new table has no statistics until autovacuum gets to it


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {TABLE}")
        op.execute(f"DROP FUNCTION IF EXISTS {TRIGGER}()")
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.drop_index("ix_stored_completion_metadata_listing")
        batch_op.create_index("ix_stored_completion_metadata_key_value", ["key", "value"], unique=False)
        for name, _ in reversed(COPIED):
            batch_op.drop_column(name)
