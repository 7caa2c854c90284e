"""registry_versions

Registry: version numbers, lifecycle, artifact checksums, compatibility facts (filled in with the registry work).

Revision ID: e5a1b2c3d4f6
Revises: c0ac4d7e9f10
Create Date: 2026-11-22 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "e5a1b2c3d4f6"
down_revision = "c0ac4d7e9f10"
branch_labels = None
depends_on = None


def _suffix(model_id: str) -> str:
    parts = model_id.split(":")
    return parts[-2] if model_id.startswith("ft:") and len(parts) >= 5 else ""


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("suffix", sa.String(length=64), server_default="", nullable=False))
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("source", sa.String(length=20), server_default="job", nullable=False))
        batch_op.add_column(sa.Column("artifact_uri", sa.String(length=1000), server_default="", nullable=False))
        batch_op.add_column(sa.Column("files_json", sa.Text(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("size_bytes", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("artifact_sha256", sa.String(length=64), server_default="", nullable=False))
        batch_op.add_column(sa.Column("base_config_sha256", sa.String(length=64), server_default="", nullable=False))
        batch_op.add_column(sa.Column("lineage_json", sa.Text(), server_default="{}", nullable=False))
        batch_op.add_column(sa.Column("eval_json", sa.Text(), server_default="{}", nullable=False))
        batch_op.add_column(sa.Column("updated_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True))

    # Existing rows: suffix from the model id, version numbers per line in order of creation.
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT id, tenant_id, base_model, model_id FROM model_versions ORDER BY created_at, id")).fetchall()
    counters: dict[tuple[str, str, str], int] = {}
    for row_id, tenant_id, base_model, model_id in rows:
        suffix = _suffix(model_id)
        line = (tenant_id, base_model, suffix)
        counters[line] = counters.get(line, 0) + 1
        bind.execute(sa.text("UPDATE model_versions SET suffix = :s, version = :v WHERE id = :id"),
                     {"s": suffix, "v": counters[line], "id": row_id})

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index("ix_model_versions_line_version", ["tenant_id", "base_model", "suffix", "version"],
                              unique=True)

    with op.batch_alter_table("avatars", schema=None) as batch_op:
        batch_op.add_column(sa.Column("candidate_model", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("candidate_share", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False))

    with op.batch_alter_table("avatar_changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("detail_json", sa.Text(), server_default="{}", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("avatar_changes", schema=None) as batch_op:
        batch_op.drop_column("detail_json")

    with op.batch_alter_table("avatars", schema=None) as batch_op:
        batch_op.drop_column("pinned")
        batch_op.drop_column("candidate_share")
        batch_op.drop_column("candidate_model")

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_model_versions_line_version")
        for column in ("updated_at", "eval_json", "lineage_json", "base_config_sha256", "artifact_sha256",
                       "size_bytes", "files_json", "artifact_uri", "source", "version", "suffix"):
            batch_op.drop_column(column)
