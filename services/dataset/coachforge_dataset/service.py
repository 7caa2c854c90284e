"""Dataset logic: store uploads after validating every line, list, fetch, delete."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from coachforge.dataset.v1 import dataset_pb2
from coachforge_dataset.models import StoredFile
from coachforge_dataset.pipeline import LineIssue, parse_line
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, NotFound, PayloadTooLarge
from coachforge_shared.events import EventPublisher
from coachforge_shared.ids import new_id, to_unix
from coachforge_shared.logging import get_logger
from coachforge_shared.settings import platform_settings

log = get_logger("coachforge.dataset")

PURPOSES = {"fine-tune"}


@dataclass
class DatasetDeps:
    """What the dataset service's handlers need."""

    db: Database
    settings: DatasetSettings
    files_dir: Path
    publisher: EventPublisher | None = None
    models_dir: Path = field(default_factory=lambda: platform_settings().models_dir)
    """Prepared base models; their tokenizers count tokens."""


def iter_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line without newline) from a byte stream, keeping one line in memory."""
    buf = b""
    line_no = 0
    for chunk in chunks:
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for line in complete:
            line_no += 1
            yield line_no, line.rstrip(b"\r")
    if buf:
        yield line_no + 1, buf.rstrip(b"\r")


def store_upload(deps: DatasetDeps, tenant_id: str, filename: str, purpose: str,
                 chunks: Iterable[bytes]) -> StoredFile:
    """Stream ``chunks`` to disk while hashing, size-checking and validating every line (any
    format the pipeline reads: OpenAI chat, ShareGPT, alpaca, chatml, Polarize coach).

    Nothing is stored unless every line is valid: the temporary file is removed on any error."""
    if purpose not in PURPOSES:
        raise InvalidArgument(f"Unsupported purpose {purpose!r}; expected one of {sorted(PURPOSES)}.",
                              param="purpose")
    limit = deps.settings.max_upload_bytes
    target_dir = deps.files_dir / tenant_id
    target_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    errors: list[LineIssue] = []
    examples = 0
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=".upload-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:

            def counted() -> Iterator[bytes]:
                nonlocal size
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"File is larger than the limit of {limit} bytes.", param="file")
                    digest.update(chunk)
                    out.write(chunk)
                    yield chunk

            for line_no, line in iter_lines(counted()):
                if not line.strip():
                    continue
                _, line_errors = parse_line(line_no, line)
                if line_errors:
                    errors.extend(line_errors)
                else:
                    examples += 1
        if errors:
            shown = errors[: deps.settings.max_errors_in_response]
            bad_lines = len({e.line for e in errors})
            more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
            raise InvalidArgument(
                f"Invalid file format: {bad_lines} invalid line(s). "
                + "; ".join(f"line {e.line}: {e.field}: {e.reason}" for e in shown) + more,
                param="file", code="invalid_file_format")
        if examples == 0:
            raise InvalidArgument("File contains no training examples.", param="file", code="invalid_file_format")
        file_id = new_id("file")
        final = target_dir / file_id
        row = StoredFile(id=file_id, tenant_id=tenant_id, filename=filename, purpose=purpose, bytes=size,
                         sha256=digest.hexdigest(), example_count=examples, storage_path=str(final))
        with deps.db.session() as s:
            os.replace(tmp, final)
            s.add(row)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("file stored", file_id=row.id, tenant=tenant_id, bytes=size, examples=examples)
    if deps.publisher is not None:
        deps.publisher.publish("file.uploaded", dataset_pb2.FileUploaded(file=to_proto(row)), tenant_id)
    return row


def get_file(deps: DatasetDeps, tenant_id: str, file_id: str) -> StoredFile:
    with deps.db.session() as s:
        row = s.scalar(select(StoredFile).where(StoredFile.id == file_id, StoredFile.tenant_id == tenant_id))
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")
    return row


def list_files(deps: DatasetDeps, tenant_id: str, purpose: str | None = None) -> list[StoredFile]:
    with deps.db.session() as s:
        q = select(StoredFile).where(StoredFile.tenant_id == tenant_id)
        if purpose:
            q = q.where(StoredFile.purpose == purpose)
        return list(s.scalars(q.order_by(StoredFile.created_at.desc(), StoredFile.id)))


def delete_file(deps: DatasetDeps, tenant_id: str, file_id: str) -> None:
    row = get_file(deps, tenant_id, file_id)
    with deps.db.session() as s:
        s.delete(s.get(StoredFile, row.id))
    Path(row.storage_path).unlink(missing_ok=True)


def read_content(deps: DatasetDeps, tenant_id: str, file_id: str) -> Iterator[bytes]:
    """The file's content in chunks (nothing is loaded whole)."""
    return content_chunks(deps, get_file(deps, tenant_id, file_id))


def content_chunks(deps: DatasetDeps, row: StoredFile) -> Iterator[bytes]:
    """The content of a file already looked up, in chunks."""
    path = Path(row.storage_path)

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(deps.settings.chunk_bytes):
                yield chunk

    return chunks()


def to_proto(row: StoredFile) -> dataset_pb2.File:
    return dataset_pb2.File(id=row.id, bytes=row.bytes, created_at=to_unix(row.created_at), filename=row.filename,
                            purpose=row.purpose, status=row.status, example_count=row.example_count,
                            sha256=row.sha256)


def to_openai(row: StoredFile) -> dict[str, object]:
    """The OpenAI ``file`` object."""
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": to_unix(row.created_at),
            "filename": row.filename, "purpose": row.purpose, "status": row.status, "status_details": None}
