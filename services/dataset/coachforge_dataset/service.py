"""Dataset logic: store uploads after validating every line, list, fetch, delete."""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from coachforge.dataset.v1 import dataset_pb2
from coachforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from coachforge_dataset.ingest import Ingested, IngestError, detect_format, ingest, to_jsonl
from coachforge_dataset.knowledge.retrieval import IndexCache
from coachforge_dataset.models import DatasetVersionFile, FileReport, StoredFile
from coachforge_dataset.pipeline import LineIssue, parse_eval_line
from coachforge_dataset.pipeline.export import to_openai_record
from coachforge_dataset.pipeline.preference import (
    CHAT,
    PREFERENCE,
    Preference,
    TrainingFormat,
    mixed_issue,
    parse_training_line,
)
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.db import Database
from coachforge_shared.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from coachforge_shared.events import EventPublisher
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors
from coachforge_shared.ids import new_id, to_unix
from coachforge_shared.logging import get_logger
from coachforge_shared.plugins import synthetic_generator
from coachforge_shared.streams import TooLong, iter_lines

log = get_logger("coachforge.dataset")

TRAINING_PURPOSE = "fine-tune"
EVALS_PURPOSE = "evals"
"""OpenAI's evals files: one ``{"item": {…}, "sample"?: {…}}`` per line, read by the evaluator
(a run's ``data_source.source`` of type ``file_id``); never training data."""
KNOWLEDGE_PURPOSE = "knowledge"
"""A knowledge base's document: UTF-8 text or markdown (not JSONL), added to a knowledge base with
``POST /v1/knowledge_bases/{id}/documents``; never training data."""
PURPOSES = {TRAINING_PURPOSE, EVALS_PURPOSE, KNOWLEDGE_PURPOSE}
RESULTS_PURPOSE = "fine-tune-results"
"""Files written by the platform itself (a job's metrics CSV); not uploaded by users, not validated."""


@dataclass
class DatasetDeps:
    """What the dataset service's handlers need."""

    db: Database
    settings: DatasetSettings
    files_dir: Path
    models_dir: Path
    """Prepared base models; their tokenizers count tokens."""
    publisher: EventPublisher | None = None
    trainer: InternalChannel | None = None
    """Channel to the trainer, asked whether a job uses a file before it is deleted (none: no
    job is asked about, e.g. a dataset service deployed without a trainer)."""
    inference: InternalChannel | None = None
    """Channel to inference, whose stored chat completions a version can be built from (none: a
    ``stored_completions`` source is refused)."""
    knowledge_indexes: IndexCache = field(init=False)
    """Search indexes of the knowledge bases this process searched lately (rebuilt on a new revision)."""

    def __post_init__(self) -> None:
        self.knowledge_indexes = IndexCache(self.settings.knowledge_index_cache_size)


POLICIES = ("strict", "lenient")
MAX_FILENAME_CHARS = 255
"""Longest name an upload may give its file (kept as the file object's ``filename``)."""


@dataclass
class UploadCheck:
    """What validating an upload found: totals, the first problems, and the report file."""

    policy: str
    lines: int = 0
    blank: int = 0
    examples: int = 0
    invalid_lines: int = 0
    issues_total: int = 0
    first: list[LineIssue] = field(default_factory=list)
    format: TrainingFormat | None = None
    """A training file's kind, ``chat`` or ``preference``: its first line's (None for an evals file)."""
    format_line: int = 0

    def training_issues(self, line_no: int, line: bytes) -> list[LineIssue]:
        """The problems of one line of a training file, a line of the other kind than the file's first
        (:data:`CHAT` or :data:`PREFERENCE`) being one."""
        kind, _, issues = parse_training_line(line_no, line)
        if kind is None:
            return issues
        if self.format is None:
            self.format, self.format_line = kind, line_no
        elif kind != self.format:
            return [mixed_issue(line_no, kind, self.format, self.format_line)]
        return issues

    def summary(self) -> dict[str, Any]:
        found = {"policy": self.policy, "lines": self.lines, "blank_lines": self.blank, "examples": self.examples,
                 "invalid_lines": self.invalid_lines, "issues_total": self.issues_total,
                 "issues": [issue_dict(i) for i in self.first]}
        if self.format is not None:
            found["format"] = self.format
        return found


def issue_dict(issue: LineIssue) -> dict[str, Any]:
    return {"line": issue.line, "field": issue.field, "reason": issue.reason}


def _listing(issues: list[LineIssue], total: int) -> str:
    more = f" (and {total - len(issues)} more)" if total > len(issues) else ""
    return "; ".join(str(i) for i in issues) + more


def report_url(report_id: str) -> str:
    return f"/v1/files/reports/{report_id}"


def _write_report(deps: DatasetDeps, tenant_id: str, report_id: str, issues_path: Path, header: dict[str, Any]) -> Path:
    """The report file: the summary line, then the issues already spilled to ``issues_path``."""
    target_dir = deps.files_dir.parent / "reports" / tenant_id
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=".report-")
    with os.fdopen(fd, "wb") as out:
        out.write(json.dumps(header).encode() + b"\n")
        with issues_path.open("rb") as issues:
            shutil.copyfileobj(issues, out)
    final = target_dir / f"{report_id}.jsonl"
    os.replace(tmp_name, final)
    return final


def _check_eval_line(line_no: int, line: bytes) -> list[LineIssue]:
    """The problems of one line of an evals file; an empty line is one (only a trailing newline
    may end the file)."""
    if not line.strip():
        return [LineIssue(line_no, "line", "empty line (only a trailing newline may end an evals file)")]
    return parse_eval_line(line_no, line)[1]


def store_upload(deps: DatasetDeps, tenant_id: str, filename: str, purpose: str,
                 chunks: Iterable[bytes], policy: str | None = None, *, assistant_speaker: str | None = None,
                 screenshot_right: str | None = None) -> StoredFile:
    """Stream ``chunks`` to disk while hashing, size-checking and validating every line (any
    format the pipeline reads: OpenAI chat, ShareGPT, alpaca, chatml, Polarize coach; for
    purpose ``evals``, one ``{"item": {…}, "sample"?: {…}}`` object per line, no empty line).

    A ``fine-tune`` file holds either chat lines (the formats above) or OpenAI's preference pairs
    for DPO (``{"input": {"messages": […]}, "preferred_output": […], "non_preferred_output": […]}``,
    :mod:`.pipeline.preference`); its first line decides which, a line of the other kind is an
    invalid line, and the file object's ``validation.format`` says which it is (``chat`` or
    ``preference``).

    ``strict`` (the default): any invalid line rejects the file; nothing is stored but the
    report of the rejected upload (its id is in the error message). ``lenient``: invalid lines
    are dropped (stored as blank lines, so line numbers keep matching the upload) and reported.
    Every problem goes to the upload's report file; the first ones are in the error or in the
    file object. The temporary files are removed on any error. The upload's size is checked while
    it streams (``max_upload_bytes``: 413), and a line longer than ``max_line_bytes`` is an invalid
    line that is never held whole in memory.

    Training data that is not JSONL (a transcript, a PDF, a chat screenshot: :mod:`.ingest`) is first
    read into conversation pairs, which are then validated and stored as OpenAI chat JSONL; the
    original is kept beside them (``GET /v1/files/{id}/source``), and the file object's
    ``validation.ingest`` and the report say how it was read, with a confidence per pair.
    ``assistant_speaker`` names the assistant when the speakers' names do not tell;
    ``screenshot_right`` is the role of right-aligned messages in a screenshot (default assistant)."""
    if purpose not in PURPOSES:
        raise InvalidArgument(f"Unsupported purpose {purpose!r}; expected one of {sorted(PURPOSES)}.",
                              param="purpose")
    if len(filename) > MAX_FILENAME_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in filename):
        raise InvalidArgument(f"filename must be at most {MAX_FILENAME_CHARS} characters, without control "
                              "characters.", param="filename")
    policy = policy or deps.settings.default_upload_policy
    if policy not in POLICIES:
        raise InvalidArgument(f"Unsupported policy {policy!r}; expected 'strict' or 'lenient'.", param="policy")
    if purpose == KNOWLEDGE_PURPOSE:
        return _store_text_upload(deps, tenant_id, filename, chunks)
    if screenshot_right not in (None, "assistant", "user"):
        raise InvalidArgument(f"screenshot_right must be 'assistant' or 'user', got {screenshot_right!r}.",
                              param="screenshot_right")
    source: Ingested | None = None
    original = b""
    if purpose == TRAINING_PURPOSE:
        chunks, source, original = _read_conversations(deps, filename, chunks, assistant_speaker,
                                                        screenshot_right or "assistant")
    limit = deps.settings.max_upload_bytes
    line_limit = deps.settings.max_line_bytes
    shown = deps.settings.max_errors_in_response
    target_dir = deps.files_dir / tenant_id
    target_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    check = UploadCheck(policy)
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=".upload-")
    tmp = Path(tmp_name)
    issues_fd, issues_name = tempfile.mkstemp(dir=target_dir, prefix=".issues-")
    issues_tmp = Path(issues_name)
    lenient = policy == "lenient"
    evals = purpose == EVALS_PURPOSE
    stored_size = 0
    stored_digest = hashlib.sha256()
    report_id = new_id("frep")
    try:
        with os.fdopen(fd, "wb") as out, os.fdopen(issues_fd, "wb") as issues_out:

            def counted() -> Iterator[bytes]:
                nonlocal size
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"File is larger than the limit of {limit} bytes.", param="file")
                    digest.update(chunk)
                    if not lenient:
                        out.write(chunk)
                    yield chunk

            for line_no, line in iter_lines(counted(), max_line_bytes=line_limit):
                check.lines = line_no
                if not evals and not isinstance(line, TooLong) and not line.strip():
                    check.blank += 1
                    keep = line
                else:
                    if isinstance(line, TooLong):  # only its first line_limit bytes were kept: never parsed
                        line_errors = [LineIssue(line_no, "line", f"longer than the limit of {line_limit} bytes "
                                                                  f"({line.length} bytes)")]
                    else:
                        line_errors = (_check_eval_line(line_no, line) if evals
                                       else check.training_issues(line_no, line))
                    if line_errors:
                        check.invalid_lines += 1
                        check.issues_total += len(line_errors)
                        room = shown - len(check.first)
                        if room > 0:
                            check.first.extend(line_errors[:room])
                        issues_out.write(b"".join(json.dumps(issue_dict(e)).encode() + b"\n" for e in line_errors))
                        keep = b""
                    else:
                        check.examples += 1
                        keep = line
                if lenient:
                    record = keep + b"\n"
                    out.write(record)
                    stored_size += len(record)
                    stored_digest.update(record)
        header = {"object": "file.report", "id": report_id, "filename": filename, "purpose": purpose,
                  "bytes": size, "sha256": digest.hexdigest(), **{k: v for k, v in check.summary().items()
                                                                  if k != "issues"}}
        summary = check.summary()
        if source is not None:
            threshold = deps.settings.ingest_review_confidence
            summary["ingest"] = {**source.summary(threshold), "source": {
                "filename": filename, "bytes": len(original), "sha256": hashlib.sha256(original).hexdigest()}}
            header["ingest"] = {**summary["ingest"], "pairs_review": source.review(threshold)}
        rejected_reason: str | None = None
        if check.invalid_lines and not lenient:
            rejected_reason = (f"Invalid file format: {check.invalid_lines} invalid line(s) of {check.lines}, "
                               f"{check.issues_total} problem(s). {_listing(check.first, check.issues_total)}")
        elif check.examples == 0:
            rejected_reason = f"File contains no {'eval items' if evals else 'training examples'}." + (
                f" {check.invalid_lines} invalid line(s): {_listing(check.first, check.issues_total)}"
                if check.invalid_lines else "")
        if rejected_reason is not None:
            path = _write_report(deps, tenant_id, report_id, issues_tmp,
                                 {**header, "status": "rejected", "file_id": None})
            with deps.db.session() as s:
                s.add(_report_row(report_id, tenant_id, None, filename, purpose, "rejected", size, check, path))
            log.info("upload rejected", tenant=tenant_id, policy=policy, invalid_lines=check.invalid_lines,
                     report=report_id)
            raise InvalidArgument(f"{rejected_reason} Full report: GET {report_url(report_id)}",
                                  param="file", code="invalid_file_format")
        file_id = new_id("file")
        final = target_dir / file_id
        path = _write_report(deps, tenant_id, report_id, issues_tmp,
                             {**header, "status": "accepted", "file_id": file_id})
        row = StoredFile(id=file_id, tenant_id=tenant_id, filename=filename, purpose=purpose,
                         bytes=stored_size if lenient else size,
                         sha256=(stored_digest if lenient else digest).hexdigest(), example_count=check.examples,
                         storage_path=str(final), policy=policy, invalid_lines=check.invalid_lines,
                         issues_total=check.issues_total, report_id=report_id,
                         validation_json=json.dumps(summary))
        try:
            if source is not None:
                _write_source(final, original)
            with deps.db.session() as s:
                os.replace(tmp, final)
                s.add(row)
                s.add(_report_row(report_id, tenant_id, file_id, filename, purpose, "accepted", size, check, path))
                if deps.publisher is not None:
                    s.flush()  # the row's defaults (status, created_at) are part of the event
                    deps.publisher.publish_in(s, "file.uploaded", dataset_pb2.FileUploaded(file=to_proto(row)),
                                              tenant_id)
        except BaseException:
            final.unlink(missing_ok=True)
            source_path(final).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        issues_tmp.unlink(missing_ok=True)
    log.info("file stored", file_id=row.id, tenant=tenant_id, bytes=size, examples=check.examples, policy=policy,
             invalid_lines=check.invalid_lines)
    return row


def source_path(stored: Path) -> Path:
    """Where the original of a converted upload (a transcript, PDF or screenshot) is kept."""
    return stored.with_name(stored.name + ".source")


def _write_source(stored: Path, original: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=stored.parent, prefix=".source-")
    with os.fdopen(fd, "wb") as out:
        out.write(original)
    os.replace(tmp_name, source_path(stored))


def _read_conversations(deps: DatasetDeps, filename: str, chunks: Iterable[bytes], assistant: str | None,
                        right: str) -> tuple[Iterable[bytes], Ingested | None, bytes]:
    """The upload as JSONL chunks: unchanged when it is JSONL, else the pairs :func:`.ingest.ingest`
    read from it (with what it read and the original bytes). An unreadable upload is a 400 naming the
    field to fix; the size limit applies to the original."""
    stream = iter(chunks)
    head = b""
    for chunk in stream:
        head += chunk
        if len(head) >= 16:
            break
    rest = itertools.chain([head], stream)
    if detect_format(filename, head[:16]) is None:
        return rest, None, b""
    limit = deps.settings.max_upload_bytes
    data = bytearray()
    for chunk in rest:
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"File is larger than the limit of {limit} bytes.", param="file")
    try:
        result = ingest(bytes(data), filename, assistant=assistant, screenshot_right=right)  # type: ignore[arg-type]
    except IngestError as exc:
        raise InvalidArgument(f"{filename}: {exc}", param=exc.param, code="invalid_file_format") from None
    log.info("conversation upload read", filename=filename, format=result.format, layout=result.layout,
             pairs=len(result.pairs))
    return to_jsonl(result), result, bytes(data)


def _store_text_upload(deps: DatasetDeps, tenant_id: str, filename: str, chunks: Iterable[bytes]) -> StoredFile:
    """Store a knowledge document (purpose ``knowledge``): UTF-8 text without NUL characters, with
    some visible text, at most ``knowledge_max_document_bytes`` (and ``max_upload_bytes``), checked
    while it streams. Anything else is refused (400 naming ``file``, 413 when too large) and nothing
    is kept."""
    limit = min(deps.settings.max_upload_bytes, deps.settings.knowledge_max_document_bytes)
    target_dir = deps.files_dir / tenant_id
    target_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    visible = False
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=".upload-")
    tmp = Path(tmp_name)
    final: Path | None = None
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk, last in itertools.chain(((c, False) for c in chunks), [(b"", True)]):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"File is larger than the limit of {limit} bytes for a knowledge document.",
                                          param="file")
                pending = len(decoder.getstate()[0])  # bytes of a character begun in the previous chunk
                try:
                    text = decoder.decode(chunk, final=last)
                except UnicodeDecodeError as err:
                    at = size - len(chunk) - pending + err.start
                    raise InvalidArgument(f"File is not UTF-8 text (invalid byte at offset {at}); a knowledge "
                                          "document is plain text or markdown.", param="file",
                                          code="invalid_file_format") from None
                if "\x00" in text:
                    raise InvalidArgument("File is binary (it contains NUL bytes); a knowledge document is plain "
                                          "text or markdown.", param="file", code="invalid_file_format")
                visible = visible or bool(text.strip())
                digest.update(chunk)
                out.write(chunk)
        if not visible:
            raise InvalidArgument("File contains no text.", param="file", code="invalid_file_format")
        file_id = new_id("file")
        final = target_dir / file_id
        row = StoredFile(id=file_id, tenant_id=tenant_id, filename=filename, purpose=KNOWLEDGE_PURPOSE, bytes=size,
                         sha256=digest.hexdigest(), example_count=0, storage_path=str(final), policy="strict")
        with deps.db.session() as s:
            os.replace(tmp, final)
            s.add(row)
            if deps.publisher is not None:
                s.flush()
                deps.publisher.publish_in(s, "file.uploaded", dataset_pb2.FileUploaded(file=to_proto(row)), tenant_id)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if final is not None:
            final.unlink(missing_ok=True)
        raise
    log.info("knowledge file stored", file_id=row.id, tenant=tenant_id, bytes=size)
    return row


def store_result_file(deps: DatasetDeps, tenant_id: str, filename: str, content: bytes) -> StoredFile:
    """Store a file the platform produced for a tenant (purpose ``fine-tune-results``), as is."""
    target_dir = deps.files_dir / tenant_id
    target_dir.mkdir(parents=True, exist_ok=True)
    file_id = new_id("file")
    final = target_dir / file_id
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=".upload-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        row = StoredFile(id=file_id, tenant_id=tenant_id, filename=filename, purpose=RESULTS_PURPOSE,
                         bytes=len(content), sha256=hashlib.sha256(content).hexdigest(), example_count=0,
                         storage_path=str(final))
        with deps.db.session() as s:
            os.replace(tmp, final)
            s.add(row)
    except BaseException:
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    log.info("result file stored", file_id=file_id, tenant=tenant_id, bytes=len(content))
    return row


def _report_row(report_id: str, tenant_id: str, file_id: str | None, filename: str, purpose: str, status: str,
                size: int, check: UploadCheck, path: Path) -> FileReport:
    return FileReport(id=report_id, tenant_id=tenant_id, file_id=file_id, filename=filename, purpose=purpose,
                      policy=check.policy, status=status, bytes=size, lines=check.lines, blank_lines=check.blank,
                      examples=check.examples, invalid_lines=check.invalid_lines,
                      issues_total=check.issues_total, path=str(path))


def get_report(deps: DatasetDeps, tenant_id: str, *, report_id: str | None = None,
               file_id: str | None = None) -> FileReport:
    """An upload's report, by its own id or by the id of the file it accepted."""
    if file_id is not None:
        row = get_file(deps, tenant_id, file_id)
        if row.report_id is None:
            raise NotFound(f"File {file_id} has no validation report (uploaded before reports existed).",
                           param="file_id", code="report_not_found")
        report_id = row.report_id
    with deps.db.session() as s:
        report = s.scalar(select(FileReport).where(FileReport.id == report_id, FileReport.tenant_id == tenant_id))
    if report is None:
        raise NotFound(f"No such report: {report_id}", param="report_id", code="report_not_found")
    return report


def report_lines(report: FileReport) -> Iterator[bytes]:
    """The report as JSONL: the summary line, then one line per problem."""
    path = Path(report.path)

    def lines() -> Iterator[bytes]:
        with path.open("rb") as f:
            yield from f

    return lines()


def report_json_chunks(report: FileReport) -> Iterator[bytes]:
    """The report as one JSON object ``{..summary.., "issues": [...]}``, streamed."""
    lines = report_lines(report)
    header = json.loads(next(lines))
    head = json.dumps(header)[:-1].encode()

    def chunks() -> Iterator[bytes]:
        yield head + b', "issues": ['
        first = True
        for line in lines:
            yield (b"" if first else b", ") + line.rstrip(b"\n")
            first = False
        yield b"]}"

    return chunks()


def get_file(deps: DatasetDeps, tenant_id: str, file_id: str) -> StoredFile:
    with deps.db.session() as s:
        row = s.scalar(select(StoredFile).where(StoredFile.id == file_id, StoredFile.tenant_id == tenant_id))
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")
    return row


def page_files(deps: DatasetDeps, tenant_id: str, purpose: str | None, limit: int, after: str | None,
               order: str = "desc") -> tuple[list[StoredFile], bool]:
    """One page of the tenant's files as OpenAI lists them: ``order`` by creation time, ``after``
    a file id cursor, ``limit`` 1 to 10,000."""
    if not 1 <= limit <= 10_000:
        raise InvalidArgument("limit must be between 1 and 10000.", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidArgument("order must be 'asc' or 'desc'.", param="order")
    with deps.db.session() as s:
        q = select(StoredFile).where(StoredFile.tenant_id == tenant_id)
        if purpose:
            q = q.where(StoredFile.purpose == purpose)
        if after:
            anchor = s.scalar(select(StoredFile).where(StoredFile.id == after, StoredFile.tenant_id == tenant_id))
            if anchor is None:
                raise InvalidArgument(f"Unknown cursor {after}.", param="after")
            if order == "desc":
                q = q.where((StoredFile.created_at < anchor.created_at)
                            | ((StoredFile.created_at == anchor.created_at) & (StoredFile.id > anchor.id)))
            else:
                q = q.where((StoredFile.created_at > anchor.created_at)
                            | ((StoredFile.created_at == anchor.created_at) & (StoredFile.id < anchor.id)))
        if order == "desc":
            q = q.order_by(StoredFile.created_at.desc(), StoredFile.id)
        else:
            q = q.order_by(StoredFile.created_at, StoredFile.id.desc())
        rows = list(s.scalars(q.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_files(deps: DatasetDeps, tenant_id: str, purpose: str | None = None) -> list[StoredFile]:
    with deps.db.session() as s:
        q = select(StoredFile).where(StoredFile.tenant_id == tenant_id)
        if purpose:
            q = q.where(StoredFile.purpose == purpose)
        return list(s.scalars(q.order_by(StoredFile.created_at.desc(), StoredFile.id)))


ACTIVE_JOB_STATUSES = frozenset({trainer_pb2.JOB_STATUS_VALIDATING_FILES, trainer_pb2.JOB_STATUS_QUEUED,
                                  trainer_pb2.JOB_STATUS_RUNNING})


def versions_using(deps: DatasetDeps, tenant_id: str, file_id: str) -> list[str]:
    """Ids of the dataset versions built from the file."""
    with deps.db.session() as s:
        return list(s.scalars(select(DatasetVersionFile.version_id).where(
            DatasetVersionFile.tenant_id == tenant_id, DatasetVersionFile.file_id == file_id)
            .order_by(DatasetVersionFile.version_id)))


def jobs_using(deps: DatasetDeps, tenant_id: str, file_id: str) -> list[str]:
    """Ids of the tenant's unfinished fine-tuning jobs that train or validate on the file, asked
    of the trainer over gRPC (no trainer configured: none)."""
    channel = deps.trainer
    if channel is None:
        return []
    stub = trainer_pb2_grpc.TrainerServiceStub(channel.channel)
    found: list[str] = []
    after = ""
    try:
        with typed_rpc_errors():
            while True:
                page = stub.ListJobs(trainer_pb2.ListJobsRequest(after=after, limit=100),
                                     metadata=channel.metadata(tenant_id), timeout=10)
                found += [j.id for j in page.jobs if j.status in ACTIVE_JOB_STATUSES
                          and file_id in (j.training_file, j.validation_file)]
                if not page.has_more or not page.jobs:
                    return found
                after = page.jobs[-1].id
    except (Unavailable, Internal) as err:
        raise Unavailable(f"Cannot check whether a fine-tuning job uses {file_id} (trainer: {err.message}); "
                          "try again.", param="file_id") from None


def delete_file(deps: DatasetDeps, tenant_id: str, file_id: str) -> None:
    """Delete a file, its content and its report; refused (409) while a dataset version was built
    from it or an unfinished fine-tuning job uses it."""
    row = get_file(deps, tenant_id, file_id)
    users = versions_using(deps, tenant_id, file_id)
    if users:
        raise FailedPrecondition(f"File {file_id} is used by dataset version(s) {', '.join(users)}; delete "
                                 "those first.", param="file_id", code="file_in_use")
    jobs = jobs_using(deps, tenant_id, file_id)
    if jobs:
        raise FailedPrecondition(f"File {file_id} is used by unfinished fine-tuning job(s) {', '.join(jobs)}; "
                                 "cancel them or wait until they finish.", param="file_id", code="file_in_use")
    with deps.db.session() as s:
        s.delete(s.get(StoredFile, row.id))
        report = s.get(FileReport, row.report_id) if row.report_id else None
        if report is not None:
            s.delete(report)
    Path(row.storage_path).unlink(missing_ok=True)
    source_path(Path(row.storage_path)).unlink(missing_ok=True)
    if report is not None:
        Path(report.path).unlink(missing_ok=True)


def read_content(deps: DatasetDeps, tenant_id: str, file_id: str) -> Iterator[bytes]:
    """The file's content in chunks (nothing is loaded whole)."""
    return content_chunks(deps, get_file(deps, tenant_id, file_id))


def read_source(deps: DatasetDeps, tenant_id: str, file_id: str) -> tuple[StoredFile, Iterator[bytes]]:
    """The original of a file converted at upload (a transcript, PDF or screenshot), in chunks; 404 for
    a file uploaded as JSONL (its content is its source)."""
    row = get_file(deps, tenant_id, file_id)
    path = source_path(Path(row.storage_path))
    if not path.exists():
        raise NotFound(f"File {file_id} was uploaded as JSONL: its content is the original.", param="file_id",
                       code="source_not_found")

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while block := f.read(1 << 16):
                yield block

    return row, chunks()


def read_as_openai_chat(deps: DatasetDeps, tenant_id: str, file_id: str) -> Iterator[bytes]:
    """The file's examples as OpenAI chat JSONL lines (each ending in a newline), converted from
    whatever format each line was uploaded in; a preference file's pairs as OpenAI preference lines
    (``input``, ``preferred_output``, ``non_preferred_output``). Blank lines (and lines a lenient
    upload dropped, stored blank) are skipped. An evals file is refused: it is never training data."""
    row = get_file(deps, tenant_id, file_id)
    refuse_as_training(row, "file_id")
    for line_no, raw in iter_lines(content_chunks(deps, row)):
        if not raw.strip():
            continue
        _, example, _ = parse_training_line(line_no, raw)
        if isinstance(example, Preference):  # stored lines were validated at upload
            yield example.to_jsonl() + b"\n"
        elif example is not None:
            yield to_openai_record(example) + b"\n"


def refuse_as_training(row: StoredFile, param: str) -> None:
    """An evals file is never read as training data (its lines are eval items, not conversations),
    nor is a knowledge document (text for knowledge bases)."""
    if row.purpose == EVALS_PURPOSE:
        raise InvalidArgument(f"File {row.id} has purpose {EVALS_PURPOSE!r}: its lines are eval items for eval "
                              f"runs, not training data; upload training data with purpose {TRAINING_PURPOSE!r}.",
                              param=param, code="invalid_file")
    if row.purpose == KNOWLEDGE_PURPOSE:
        raise InvalidArgument(f"File {row.id} has purpose {KNOWLEDGE_PURPOSE!r}: it is a document for knowledge "
                              f"bases, not training data; upload training data with purpose {TRAINING_PURPOSE!r}.",
                              param=param, code="invalid_file")


def content_chunks(deps: DatasetDeps, row: StoredFile) -> Iterator[bytes]:
    """The content of a file already looked up, in chunks; a clear error when storage lost it."""
    path = Path(row.storage_path)
    if not path.is_file():
        log.error("file content missing from storage", file_id=row.id, path=str(path))
        raise FailedPrecondition(f"The content of file {row.id} is missing from storage; upload the file again.",
                                 param="file_id", code="file_content_missing")

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(deps.settings.chunk_bytes):
                yield chunk

    return chunks()


def _validation(row: StoredFile) -> dict[str, Any]:
    if row.validation_json:
        summary: dict[str, Any] = json.loads(row.validation_json)
    else:
        summary = {"policy": row.policy, "examples": row.example_count, "invalid_lines": row.invalid_lines,
                   "issues_total": row.issues_total, "issues": []}
    if row.purpose == TRAINING_PURPOSE:
        summary.setdefault("format", CHAT)  # files stored before preference files existed are chat files
    return summary


def training_format(row: StoredFile) -> str:
    """A training file's kind: ``chat`` or ``preference`` (``""`` for a file of another purpose)."""
    return str(_validation(row).get("format", ""))


def is_preference_file(row: StoredFile) -> bool:
    return training_format(row) == PREFERENCE


def to_proto(row: StoredFile) -> dataset_pb2.File:
    v = _validation(row)
    return dataset_pb2.File(
        id=row.id, bytes=row.bytes, created_at=to_unix(row.created_at), filename=row.filename,
        purpose=row.purpose, status=row.status, example_count=row.example_count, sha256=row.sha256,
        policy=row.policy, invalid_lines=row.invalid_lines, issues_total=row.issues_total,
        report_id=row.report_id or "", status_details=status_details(row) or "", format=v.get("format", ""),
        issues=[dataset_pb2.LineIssue(line=i["line"], field=i["field"], reason=i["reason"]) for i in v["issues"]])


def status_details(row: StoredFile) -> str | None:
    """For a lenient upload that dropped lines: how many, the first problems and where the rest are."""
    if not row.invalid_lines:
        return None
    v = _validation(row)
    first = [LineIssue(i["line"], i["field"], i["reason"]) for i in v["issues"]]
    where = f" Full report: GET /v1/files/{row.id}/report" if row.report_id else ""
    return (f"{row.invalid_lines} invalid line(s) dropped under the lenient policy, {row.issues_total} "
            f"problem(s): {_listing(first, row.issues_total)}.{where}")


def to_openai(row: StoredFile) -> dict[str, object]:
    """The OpenAI ``file`` object, plus ``validation`` (policy, totals, first problems, report)."""
    validation = _validation(row)
    if row.report_id:
        validation["report"] = f"/v1/files/{row.id}/report"
    if isinstance(validation.get("ingest"), dict):
        validation["ingest"]["source"]["url"] = f"/v1/files/{row.id}/source"
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": to_unix(row.created_at),
            "filename": row.filename, "purpose": row.purpose, "status": row.status,
            "status_details": status_details(row), "validation": validation}


def report_to_openai(report: FileReport) -> dict[str, object]:
    return {"id": report.id, "object": "file.report", "file_id": report.file_id, "filename": report.filename,
            "purpose": report.purpose, "policy": report.policy, "status": report.status, "bytes": report.bytes,
            "lines": report.lines, "blank_lines": report.blank_lines, "examples": report.examples,
            "invalid_lines": report.invalid_lines, "issues_total": report.issues_total,
            "created_at": to_unix(report.created_at)}


SYNTHETIC_GENERATOR = "coach"
"""The synthetic data generator plug-in behind ``/v1/datasets/synthetic`` (Polarize's coach examples)."""


def synthetic_jsonl(count: int, seed: int, generator: str = SYNTHETIC_GENERATOR) -> str:
    """``count`` synthetic examples for ``seed`` as OpenAI chat JSONL, from the generator plug-in
    ``generator`` (:func:`coachforge_shared.plugins.synthetic_generator`; ``coach``: athlete load,
    wellness, the week's plan and the rule-based modification). Unknown generator: ``NotFound``."""
    records = synthetic_generator(generator).generate(count, seed)
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


def generate_synthetic(deps: DatasetDeps, tenant_id: str, count: int, seed: int,
                       filename: str | None = None) -> StoredFile:
    """Generate synthetic coach data and store it as an uploaded (strictly validated) file."""
    limit = deps.settings.max_synthetic_examples
    if not 1 <= count <= limit:
        raise InvalidArgument(f"count must be between 1 and {limit}.", param="count")
    if seed < 0:
        raise InvalidArgument("seed must be >= 0.", param="seed")
    content = synthetic_jsonl(count, seed).encode()
    size = deps.settings.chunk_bytes
    return store_upload(deps, tenant_id, filename or f"synthetic-coach-{count}-{seed}.jsonl", "fine-tune",
                        (content[i:i + size] for i in range(0, len(content), size)), policy="strict")
