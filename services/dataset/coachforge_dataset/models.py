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


class KnowledgeBase(Base):
    """A tenant's collection of text documents, split into chunks that searches rank with BM25.

    ``revision`` goes up with every document added or deleted: a process's cached search index
    is rebuilt when the revision it was built at is no longer the row's."""

    __tablename__ = "knowledge_bases"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    chunk_tokens: Mapped[int] = mapped_column(Integer)
    """Most (approximate) tokens in one chunk, its heading line included."""
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    """Most tokens a chunk repeats from the end of the previous one."""
    document_count: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    token_count: Mapped[int] = mapped_column(BigInteger, default=0)
    """Sum of the chunks' tokens."""
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    """Sum of the documents' sizes (UTF-8 bytes)."""
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class KnowledgeDocument(Base):
    """One document of a knowledge base: an uploaded ``knowledge`` file or text given inline."""

    __tablename__ = "knowledge_documents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    knowledge_base_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"),
                                                   index=True)
    file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The uploaded file it was read from (none for inline text). The chunks keep the text: the
    file may be deleted afterwards."""
    filename: Mapped[str] = mapped_column(String(500))
    """The source named in search results: the request's title, else the file's name."""
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    chunk_count: Mapped[int] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="completed")
    """``completed``: chunked and searchable (documents are chunked while they are added)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class KnowledgeChunk(Base):
    """A contiguous span of a document's text (``char_start``/``char_end``: character offsets into
    the text), with its section's heading path; ``text`` is the heading line, if any, then the span."""

    __tablename__ = "knowledge_chunks"
    __table_args__ = (UniqueConstraint("document_id", "ordinal"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    knowledge_base_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"),
                                                   index=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("knowledge_documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
