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
    policy: Mapped[str] = mapped_column(String(10), default="strict", server_default="strict")
    """``strict``: every line was valid; ``lenient``: invalid lines were dropped (blank in the stored
    content, so line numbers still match the upload) and reported."""
    invalid_lines: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    issues_total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    report_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    validation_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Summary shown with the file: policy, totals and the first problems."""


class FileReport(Base):
    """The validation report of one upload, accepted or rejected. Totals here; every problem in
    the JSONL file at ``path`` (first line: the summary, then one ``{line, field, reason}`` each)."""

    __tablename__ = "file_reports"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    filename: Mapped[str] = mapped_column(String(500))
    purpose: Mapped[str] = mapped_column(String(50))
    policy: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20))
    """``accepted`` (a file was stored) or ``rejected`` (nothing was stored)."""
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)
    blank_lines: Mapped[int] = mapped_column(Integer)
    examples: Mapped[int] = mapped_column(Integer)
    invalid_lines: Mapped[int] = mapped_column(Integer)
    issues_total: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DatasetVersionFile(Base):
    """A source file of a dataset version (a file in use cannot be deleted)."""

    __tablename__ = "dataset_version_files"

    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))


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
