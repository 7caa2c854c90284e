"""dataset_uploads

Dataset: upload policy and reports (filled in with the dataset work).

* ``files`` gains the upload ``policy`` (strict/lenient), the count of dropped lines and of
  problems, the id of the upload's report and a short validation summary (first problems).
* ``file_reports``: one row per upload, accepted or rejected, with totals; every problem is in
  the JSONL file at ``path`` (in the data dir, not in the database).
* ``dataset_version_files``: which uploaded files each dataset version was built from, so that
  a file still in use is not deleted. Filled from the versions' lineage on upgrade.

Revision ID: d5a7e0a2b3c1
Revises: 7a1e4b5c6d70
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "d5a7e0a2b3c1"
down_revision = "7a1e4b5c6d70"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sa.String(length=10), nullable=False, server_default="strict"))
        batch_op.add_column(sa.Column("invalid_lines", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("issues_total", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("report_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("validation_json", sa.Text(), nullable=True))

    op.create_table(
        "file_reports",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("file_id", sa.String(length=64), nullable=True),
        sa.Column("filename", sa.String(length=500), nullable=False),
        sa.Column("purpose", sa.String(length=50), nullable=False),
        sa.Column("policy", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("blank_lines", sa.Integer(), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("invalid_lines", sa.Integer(), nullable=False),
        sa.Column("issues_total", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_file_reports_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_reports")),
    )
    with op.batch_alter_table("file_reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_file_reports_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_file_reports_file_id"), ["file_id"], unique=False)

    op.create_table(
        "dataset_version_files",
        sa.Column("version_id", sa.String(length=64), nullable=False),
        sa.Column("file_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["dataset_versions.id"],
                                name=op.f("fk_dataset_version_files_version_id_dataset_versions"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name=op.f("fk_dataset_version_files_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", "file_id", name=op.f("pk_dataset_version_files")),
    )
    with op.batch_alter_table("dataset_version_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_version_files_file_id"), ["file_id"], unique=False)

    conn = op.get_bind()
    links = sa.table("dataset_version_files", sa.column("version_id", sa.String), sa.column("file_id", sa.String),
                     sa.column("tenant_id", sa.String))
    rows = conn.execute(sa.text("SELECT id, tenant_id, lineage_json FROM dataset_versions")).fetchall()
    for version_id, tenant_id, lineage_json in rows:
        try:
            sources = json.loads(lineage_json).get("sources", [])
        except (ValueError, AttributeError):
            sources = []
        file_ids = sorted({s["id"] for s in sources if isinstance(s, dict) and isinstance(s.get("id"), str)})
        if file_ids:
            conn.execute(links.insert(), [{"version_id": version_id, "file_id": f, "tenant_id": tenant_id}
                                          for f in file_ids])


def downgrade() -> None:
    with op.batch_alter_table("dataset_version_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dataset_version_files_file_id"))
    op.drop_table("dataset_version_files")
    with op.batch_alter_table("file_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_file_reports_file_id"))
        batch_op.drop_index(batch_op.f("ix_file_reports_tenant_id"))
    op.drop_table("file_reports")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("validation_json")
        batch_op.drop_column("report_id")
        batch_op.drop_column("issues_total")
        batch_op.drop_column("invalid_lines")
        batch_op.drop_column("policy")
