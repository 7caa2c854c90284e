"""Dataset service tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coachforge_shared.db import Base, UTCDateTime
from coachforge_shared.ids import utcnow


class StoredFile(Base):
    """An uploaded file whose every line passed validation."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    purpose: Mapped[str] = mapped_column(String(50))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="processed")
    example_count: Mapped[int] = mapped_column(Integer, default=0)
    storage_path: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DatasetVersion(Base):
    """An immutable, content-addressed training set built from uploaded files.

    ``sha256`` covers the exported train and validation JSONL, so two builds with the same
    result share one address; ``lineage`` records the source files, every filter with its
    settings and the count each stage removed."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("tenant_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    train_examples: Mapped[int] = mapped_column(Integer)
    validation_examples: Mapped[int] = mapped_column(Integer)
    lineage_json: Mapped[str] = mapped_column(Text)
    stats_json: Mapped[str] = mapped_column(Text)
    report_json: Mapped[str] = mapped_column(Text)
    train_path: Mapped[str] = mapped_column(String(1000))
    validation_path: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
