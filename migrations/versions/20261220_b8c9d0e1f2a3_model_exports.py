"""model exports

Registry: exports of fine-tuned versions (adapter, merged safetensors, GGUF, Ollama bundle), one
per version, format, quantization and persona, made by a background worker holding a lease.

Revision ID: b8c9d0e1f2a3
Revises: a7b8c9d0e1f2
Create Date: 2026-12-20 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coachforge_shared.db

revision = "b8c9d0e1f2a3"
down_revision = "a7b8c9d0e1f2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_exports",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=300), nullable=False),
        sa.Column("format", sa.String(length=20), nullable=False),
        sa.Column("quantization", sa.String(length=10), server_default="", nullable=False),
        sa.Column("avatar_id", sa.String(length=64), server_default="", nullable=False),
        sa.Column("avatar", sa.String(length=64), server_default="", nullable=False),
        sa.Column("persona_version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("persona_json", sa.Text(), server_default="", nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("filename", sa.String(length=400), nullable=False),
        sa.Column("artifact_uri", sa.String(length=1000), server_default="", nullable=False),
        sa.Column("sha256", sa.String(length=64), server_default="", nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), server_default="", nullable=False),
        sa.Column("error_code", sa.String(length=64), server_default="", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", coachforge_shared.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_exports_tenant_id", "model_exports", ["tenant_id"])
    op.create_index("ix_model_exports_identity", "model_exports",
                    ["version_id", "format", "quantization", "avatar_id", "persona_version"], unique=True)
    op.create_index("ix_model_exports_status_lease", "model_exports", ["status", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_model_exports_status_lease", table_name="model_exports")
    op.drop_index("ix_model_exports_identity", table_name="model_exports")
    op.drop_index("ix_model_exports_tenant_id", table_name="model_exports")
    op.drop_table("model_exports")
