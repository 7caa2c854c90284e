"""Dataset versions: run the pipeline over uploaded files and store the result immutably,
content-addressed by the sha256 of its exported train and validation sets."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_dataset import service, tokens
from coachforge_dataset.models import DatasetVersion, DatasetVersionFile
from coachforge_dataset.pipeline import Example, eligibility, export_lines, parse_line, run_pipeline_to_files
from coachforge_dataset.pipeline.eligibility import Eligibility
from coachforge_dataset.pipeline.export import EXPORT_FORMATS, ExportError
from coachforge_dataset.pipeline.preference import Preference, parse_training_line
from coachforge_dataset.schemas import CreateDatasetVersion, StoredCompletionsSource
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.tokens import TokenCheck, token_counter
from coachforge_shared.errors import FailedPrecondition, Internal, InvalidArgument, NotFound, Unavailable
from coachforge_shared.grpc_server import typed_rpc_errors
from coachforge_shared.ids import new_id, to_unix
from coachforge_shared.logging import get_logger
from coachforge_shared.streams import iter_lines

log = get_logger("coachforge.dataset.versions")

SPLITS = ("train", "validation")
DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"


def _file_lines(deps: DatasetDeps, tenant_id: str, file_ids: list[str]) -> tuple[list[dict[str, Any]], Iterator[bytes]]:
    """The source files' metadata and one stream of their lines, in the order given."""
    rows = []
    for file_id in file_ids:
        try:
            rows.append(service.get_file(deps, tenant_id, file_id))
        except NotFound:
            raise InvalidArgument(f"File {file_id} not found.", param="files", code="file_not_found") from None
        if rows[-1].purpose != "fine-tune":
            raise InvalidArgument(f"File {file_id} has purpose {rows[-1].purpose!r}; a dataset version is built from "
                                  "'fine-tune' files.", param="files")
        if service.is_preference_file(rows[-1]):
            raise InvalidArgument(f"File {file_id} holds preference pairs (DPO); a dataset version is built from chat "
                                  "files. Train a dpo job on the file itself.", param="files",
                                  code="invalid_file_format")
    sources = [{"id": r.id, "filename": r.filename, "sha256": r.sha256, "bytes": r.bytes} for r in rows]
    streams = (
        (line for _, line in iter_lines(service.content_chunks(deps, r))) for r in rows
    )
    return sources, itertools.chain.from_iterable(streams)


STORED = "stored_completions"


@dataclasses.dataclass
class StoredSource:
    """What a version read from stored chat completions: the filter, and the ids as they streamed in."""

    filter: dict[str, Any]
    completion_ids: list[str] = dataclasses.field(default_factory=list)
    corrected: int = 0
    gold: int = 0
    cancel: Any = None
    """Ends the stream from inference (when the build stops before reading it all)."""

    def lineage(self) -> dict[str, Any]:
        return {"filter": self.filter, "count": len(self.completion_ids), "corrected": self.corrected,
                "gold": self.gold, "completion_ids": self.completion_ids}


def _stored_request(src: StoredCompletionsSource) -> inference_pb2.ListStoredCompletionsRequest:
    req = inference_pb2.ListStoredCompletionsRequest(model=src.model or "", avatar=src.avatar or "",
                                                     metadata=src.metadata or {},
                                                     created_after=src.created_after or 0, limit=src.limit)
    if src.min_rating is not None:
        req.min_rating = src.min_rating
    if src.gold:
        req.gold = True
    return req


def _stored_lines(deps: DatasetDeps, tenant_id: str,
                  src: StoredCompletionsSource) -> tuple[StoredSource, Iterator[bytes]]:
    """The stored chat completions matching ``src``, streamed from inference as OpenAI chat lines
    (each id kept for the lineage). The first one is read at once: none matching is a 400."""
    if deps.inference is None:
        raise InvalidArgument("stored_completions cannot be read: this dataset service has no inference service "
                              "configured (COACHFORGE_DATASET_INFERENCE_GRPC_TARGET).", param=STORED)
    channel = deps.inference
    source = StoredSource(filter=src.model_dump(exclude_none=True))
    stub = inference_pb2_grpc.InferenceServiceStub(channel.channel)

    call = stub.ListStoredCompletions(_stored_request(src), metadata=channel.metadata(tenant_id), timeout=600)
    source.cancel = call.cancel

    def examples() -> Iterator[inference_pb2.StoredCompletionExample]:
        try:
            with typed_rpc_errors():
                yield from call
        except (Unavailable, Internal) as err:
            raise Unavailable(f"Cannot read stored_completions from inference: {err.message}; try again.",
                              param=STORED) from None

    stream = examples()
    first = next(stream, None)
    if first is None:
        raise InvalidArgument("No stored chat completions match stored_completions "
                              f"{json.dumps(source.filter, sort_keys=True)}.", param=STORED,
                              code="no_stored_completions")

    def lines() -> Iterator[bytes]:
        for example in itertools.chain([first], stream):
            source.completion_ids.append(example.id)
            source.corrected += example.corrected
            source.gold += example.gold
            yield json.dumps({"messages": json.loads(example.messages_json)}).encode()

    return source, lines()


def _sha256_of(path: Path, prefix: bytes, digest: Any) -> None:
    digest.update(prefix)
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)


def create_version(deps: DatasetDeps, tenant_id: str, req: CreateDatasetVersion) -> DatasetVersion:
    """Build a version; the same data and settings give the same content address (and row).

    The splits are written to a staging folder while the examples stream through the pipeline
    (nothing is held whole in memory), then moved to their content address."""
    sources, lines = _file_lines(deps, tenant_id, req.files)
    stored: StoredSource | None = None
    fmt = req.format
    if req.stored_completions is not None:
        if req.format not in (None, "openai"):
            raise InvalidArgument(f"format {req.format!r} cannot be read with stored_completions (OpenAI chat); "
                                  "leave it unset.", param="format")
        if not req.files:
            fmt = "openai"
        stored, stored_lines = _stored_lines(deps, tenant_id, req.stored_completions)
        lines = itertools.chain(lines, stored_lines)
    count = token_counter(deps.models_dir, req.base_model)
    root = deps.files_dir.parent / "datasets" / tenant_id
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        # Uploads were validated line by line in each line's own format; files may differ in format.
        result = run_pipeline_to_files(
            lines, staging, format=fmt, detect="line", policy=req.policy, dedupe=req.dedupe,
            near_dup_threshold=req.near_dup_threshold, min_quality=req.min_quality, scrub_pii=req.scrub_pii,
            validation_fraction=req.validation_fraction, seed=req.seed, max_tokens=req.max_tokens,
            count_tokens=count, workers=deps.settings.pipeline_workers)
        if result.rejected:
            shown = result.issues[: deps.settings.max_errors_in_response]
            more = f" (and {len(result.issues) - len(shown)} more)" if len(result.issues) > len(shown) else ""
            raise InvalidArgument(
                f"Dataset rejected under the strict policy: {len(result.issues)} problem(s). "
                + "; ".join(f"line {i.line}: {i.field}: {i.reason}" for i in shown) + more,
                param="files" if req.files else STORED, code="invalid_file_format")
        if not result.lineage.train:
            raise InvalidArgument("No training examples are left after validation and cleaning.",
                                  param="files" if req.files else STORED)
        digest = hashlib.sha256()
        _sha256_of(result.train_path, b"train\n", digest)
        _sha256_of(result.validation_path, b"validation\n", digest)
        sha = digest.hexdigest()
        with deps.db.session() as s:
            existing = s.scalar(select(DatasetVersion).where(DatasetVersion.tenant_id == tenant_id,
                                                             DatasetVersion.sha256 == sha))
        if existing is not None:
            return existing
        target = root / sha
        if not target.exists():
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if stored is not None and stored.cancel is not None:
            stored.cancel()
    lineage = {"sources": sources, "format": result.format, "settings": req.model_dump(),
               "counts": dataclasses.asdict(result.lineage)}
    if stored is not None:
        lineage[STORED] = stored.lineage()
    report = {"issues_total": len(result.issues),
              "issues": [dataclasses.asdict(i) for i in result.issues],
              "stages": [dataclasses.asdict(r) for r in result.reports]}
    row = DatasetVersion(id=new_id("dsv"), tenant_id=tenant_id, name=req.name, sha256=sha,
                         train_examples=result.lineage.train, validation_examples=result.lineage.validation,
                         lineage_json=json.dumps(lineage), stats_json=json.dumps(dataclasses.asdict(result.stats)),
                         report_json=json.dumps(report), train_path=str(target / "train.jsonl"),
                         validation_path=str(target / "validation.jsonl"))
    with deps.db.session() as s:
        s.add(row)
        s.flush()
        for file_id in dict.fromkeys(req.files):
            s.add(DatasetVersionFile(version_id=row.id, file_id=file_id, tenant_id=tenant_id))
    log.info("dataset version created", version=row.id, tenant=tenant_id, train=row.train_examples,
             validation=row.validation_examples, sha256=sha)
    return row


def delete_version(deps: DatasetDeps, tenant_id: str, version_id: str) -> None:
    """Delete a version and its stored splits; its source files can then be deleted. Refused (409)
    while an unfinished fine-tuning job trains or validates on it (asked of the trainer)."""
    row = get_version(deps, tenant_id, version_id)
    try:
        jobs = service.jobs_using(deps, tenant_id, version_id)
    except Unavailable as err:
        raise Unavailable(err.message, param="dataset_version_id") from None
    if jobs:
        raise FailedPrecondition(f"Dataset version {version_id} is used by unfinished fine-tuning job(s) "
                                 f"{', '.join(jobs)}; cancel them or wait until they finish.",
                                 param="dataset_version_id", code="dataset_version_in_use")
    with deps.db.session() as s:
        s.execute(delete(DatasetVersionFile).where(DatasetVersionFile.version_id == row.id))
        s.delete(s.get(DatasetVersion, row.id))
    shutil.rmtree(Path(row.train_path).parent, ignore_errors=True)


def version_examples(deps: DatasetDeps, tenant_id: str, version_id: str,
                     split: str = "") -> Iterator[tuple[int, str, Example]]:
    """Every example of a version (or of one of its splits) as ``(line in its split, "<split>.messages", example)``."""
    if split and split not in SPLITS:
        raise InvalidArgument(f"Unknown split {split!r}; expected train or validation.", param="split")
    row = get_version(deps, tenant_id, version_id)
    for name, path in (("train", row.train_path), ("validation", row.validation_path)):
        if split and name != split:
            continue
        with Path(path).open("rb") as f:
            for number, raw in enumerate(f, start=1):
                example, _ = parse_line(number, raw.rstrip(b"\n"), "openai")
                if example is not None:
                    yield number, f"{name}.messages", example


def file_examples(deps: DatasetDeps, tenant_id: str,
                  file_id: str) -> Iterator[tuple[int, str, Example | Preference]]:
    """Every valid example of an uploaded file as ``(line, "messages", example)``, or for a preference
    file ``(line, "input", pair)``. The file is looked up at once; an evals file is refused (it is
    never training data)."""
    row = service.get_file(deps, tenant_id, file_id)
    service.refuse_as_training(row, "id")

    def examples() -> Iterator[tuple[int, str, Example | Preference]]:
        for number, raw in iter_lines(service.content_chunks(deps, row)):
            if raw.strip():
                _, example, _ = parse_training_line(number, raw)
                if isinstance(example, Preference):
                    yield number, "input", example
                elif example is not None:
                    yield number, "messages", example

    return examples()


def check_tokens(deps: DatasetDeps, tenant_id: str, item_id: str, max_length: int, base_model: str,
                 max_issues: int | None = None, split: str = "") -> TokenCheck:
    """Which examples of a file or dataset version (or one of its splits) exceed ``max_length``
    tokens of ``base_model`` (a preference pair: its prompt with the longer of its two outputs)."""
    limit = max_issues or deps.settings.max_errors_in_response
    examples: Iterator[tuple[int, str, Example | Preference]]
    try:
        if item_id.startswith("dsv-"):
            examples = version_examples(deps, tenant_id, item_id, split)
        else:
            examples = file_examples(deps, tenant_id, item_id)
        return tokens.check_tokens(deps.models_dir, base_model or DEFAULT_BASE_MODEL, examples, max_length, limit)
    except NotFound as err:
        raise NotFound(err.message, param="id", code=err.code) from None


def check_eligibility(deps: DatasetDeps, tenant_id: str, item_id: str, split: str = "") -> Eligibility:
    """Which examples of a file or dataset version (or one of its splits) are usable for fine-tuning,
    and why the others are not (:mod:`coachforge_dataset.pipeline.eligibility`)."""
    examples: Iterator[tuple[int, str, Example | Preference]]
    try:
        if item_id.startswith("dsv-"):
            examples = version_examples(deps, tenant_id, item_id, split)
        else:
            examples = file_examples(deps, tenant_id, item_id)
        return eligibility.check_eligibility(examples, deps.settings.eligibility_min_answer_chars)
    except NotFound as err:
        raise NotFound(err.message, param="id", code=err.code) from None


def get_version(deps: DatasetDeps, tenant_id: str, version_id: str) -> DatasetVersion:
    with deps.db.session() as s:
        row = s.scalar(select(DatasetVersion).where(DatasetVersion.id == version_id,
                                                    DatasetVersion.tenant_id == tenant_id))
    if row is None:
        raise NotFound(f"No dataset version {version_id}.", param="dataset_version_id", code="dataset_not_found")
    return row


def list_versions(deps: DatasetDeps, tenant_id: str, name: str | None = None) -> list[DatasetVersion]:
    with deps.db.session() as s:
        q = select(DatasetVersion).where(DatasetVersion.tenant_id == tenant_id)
        if name:
            q = q.where(DatasetVersion.name == name)
        return list(s.scalars(q.order_by(DatasetVersion.created_at.desc(), DatasetVersion.id)))


def export(deps: DatasetDeps, tenant_id: str, version_id: str, fmt: str, split: str) -> Iterator[str]:
    """One split of a version as JSONL lines in ``fmt`` (openai, chatml or alpaca).

    The whole split is converted once up front (without keeping it) so that an example the
    format cannot hold is a clear 400 before anything is streamed."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidArgument(f"Unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}.",
                              param="format")
    if split not in SPLITS:
        raise InvalidArgument(f"Unknown split {split!r}; expected train or validation.", param="split")
    row = get_version(deps, tenant_id, version_id)
    path = Path(row.train_path if split == "train" else row.validation_path)

    def examples() -> Iterator[Example]:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                example, issues = parse_line(number, raw.rstrip(b"\n"), "openai")
                if example is None:  # stored versions are valid by construction
                    raise RuntimeError(f"{path}:{number}: {issues}")
                yield example

    try:
        for _ in export_lines(examples(), fmt):
            pass
    except ExportError as err:
        raise InvalidArgument(f"Cannot export as {fmt}: {err}", param="format") from None
    return export_lines(examples(), fmt)


def to_openai(row: DatasetVersion) -> dict[str, Any]:
    return {"id": row.id, "object": "dataset.version", "name": row.name, "sha256": row.sha256,
            "created_at": to_unix(row.created_at), "train_examples": row.train_examples,
            "validation_examples": row.validation_examples, "lineage": json.loads(row.lineage_json)}
