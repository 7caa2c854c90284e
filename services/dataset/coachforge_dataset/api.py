"""REST: OpenAI-compatible ``/v1/files`` (with validation reports) and ``/v1/datasets``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from coachforge_dataset import service, versions
from coachforge_dataset.models import FileReport
from coachforge_dataset.schemas import CreateDatasetVersion, CreateSyntheticData
from coachforge_dataset.service import DatasetDeps
from coachforge_shared.http import CurrentPrincipal

router = APIRouter(prefix="/v1", tags=["files"])

ReportFormat = Literal["json", "jsonl"]
JSONL = {"application/jsonl": {"schema": {"type": "string", "description": "One JSON object a line."}}}
REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": JSONL}}
"""A report is JSON, or JSON lines with ``format=jsonl`` (declared beside the default JSON)."""


def _deps(request: Request) -> DatasetDeps:
    deps: DatasetDeps = request.app.state.dataset
    return deps


@router.post("/files")
def create_file(request: Request, principal: CurrentPrincipal, file: UploadFile, purpose: str = Form(...),
                policy: str | None = Form(None), assistant_speaker: str | None = Form(None),
                screenshot_right: str | None = Form(None)) -> dict[str, object]:
    """Upload a JSONL file; every line is validated. ``policy=strict`` (default) refuses a file with
    any invalid line, naming the lines; ``policy=lenient`` drops invalid lines and reports them in
    the file object's ``status_details``/``validation`` and in ``GET /v1/files/{id}/report``.
    ``purpose`` is ``fine-tune`` (training data) or ``evals`` (``{"item": …, "sample"?: …}`` lines
    that an eval run reads through ``source: {"type": "file_id"}``; never training data), or
    ``knowledge``: a UTF-8 text or markdown document (not JSONL, no policy) to add to knowledge
    bases (``POST /v1/knowledge_bases/{id}/documents``).

    Training data may also be a chat transcript (``.txt``/``.md``: ``Name: text`` lines, with or
    without timestamps, or name lines above the messages), a PDF or a screenshot of a chat (PNG,
    JPEG, WebP): it is read into conversation pairs, stored as OpenAI chat JSONL and validated like
    JSONL; ``validation.ingest`` gives each pair's confidence and the original stays downloadable
    (``GET /v1/files/{id}/source``). ``assistant_speaker`` names the assistant's speaker when the
    names do not tell (coach, assistant, bot … do); ``screenshot_right`` is the role of a screenshot's
    right-aligned messages (``assistant``, the default, or ``user``)."""
    deps = _deps(request)  # the body was size-limited while it arrived (the service's body_limits)

    def chunks() -> Iterator[bytes]:
        while chunk := file.file.read(deps.settings.chunk_bytes):
            yield chunk

    row = service.store_upload(deps, principal.tenant_id, file.filename or "upload.jsonl", purpose, chunks(),
                               policy=policy or None, assistant_speaker=assistant_speaker or None,
                               screenshot_right=screenshot_right or None)
    return service.to_openai(row)


@router.get("/files")
def list_files(request: Request, principal: CurrentPrincipal, purpose: str | None = None,
               limit: int = 10000, after: str | None = None,
               order: Literal["asc", "desc"] = "desc") -> dict[str, object]:
    """The tenant's files, newest first (``order=asc``: oldest first); ``after`` is a file id cursor."""
    rows, has_more = service.page_files(_deps(request), principal.tenant_id, purpose, limit, after, order)
    return {"object": "list", "data": [service.to_openai(r) for r in rows], "has_more": has_more,
            "first_id": rows[0].id if rows else None, "last_id": rows[-1].id if rows else None}


def _report_response(report: FileReport, format: ReportFormat) -> StreamingResponse:
    if format == "jsonl":
        return StreamingResponse(service.report_lines(report), media_type="application/jsonl")
    return StreamingResponse(service.report_json_chunks(report), media_type="application/json")


@router.get("/files/reports/{report_id}", responses=REPORT_RESPONSES)
def upload_report(request: Request, principal: CurrentPrincipal, report_id: str,
                  format: ReportFormat = "json") -> StreamingResponse:
    """The report of any upload, rejected ones included: totals and every problem."""
    report = service.get_report(_deps(request), principal.tenant_id, report_id=report_id)
    return _report_response(report, format)


@router.get("/files/{file_id}")
def retrieve_file(request: Request, principal: CurrentPrincipal, file_id: str) -> dict[str, object]:
    return service.to_openai(service.get_file(_deps(request), principal.tenant_id, file_id))


@router.delete("/files/{file_id}")
def delete_file(request: Request, principal: CurrentPrincipal, file_id: str) -> dict[str, object]:
    """Delete a file; 409 while a dataset version was built from it or an unfinished job uses it."""
    service.delete_file(_deps(request), principal.tenant_id, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/files/{file_id}/content", response_class=StreamingResponse, responses={200: {
    "description": "The file's bytes.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
def file_content(request: Request, principal: CurrentPrincipal, file_id: str) -> StreamingResponse:
    chunks = service.read_content(_deps(request), principal.tenant_id, file_id)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.get("/files/{file_id}/source", response_class=StreamingResponse, responses={200: {
    "description": "The original upload of a file converted from a transcript, PDF or screenshot.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
def file_source(request: Request, principal: CurrentPrincipal, file_id: str) -> StreamingResponse:
    row, chunks = service.read_source(_deps(request), principal.tenant_id, file_id)
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"Content-Disposition": f'attachment; filename="{row.id}-source"'})


@router.get("/files/{file_id}/report", responses=REPORT_RESPONSES)
def file_report(request: Request, principal: CurrentPrincipal, file_id: str,
                format: ReportFormat = "json") -> StreamingResponse:
    """The file's validation report: totals and every problem (``format=jsonl``: a summary line,
    then one ``{"line", "field", "reason"}`` per line)."""
    report = service.get_report(_deps(request), principal.tenant_id, file_id=file_id)
    return _report_response(report, format)


datasets = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@datasets.post("")
def create_dataset_version(request: Request, principal: CurrentPrincipal,
                           body: CreateDatasetVersion) -> dict[str, Any]:
    """Validate, clean and split uploaded files into an immutable, content-addressed version."""
    return versions.to_openai(versions.create_version(_deps(request), principal.tenant_id, body))


@datasets.post("/synthetic")
def create_synthetic_data(request: Request, principal: CurrentPrincipal,
                          body: CreateSyntheticData) -> dict[str, object]:
    """Generate synthetic Polarize coach examples and store them as a file (the file object)."""
    row = service.generate_synthetic(_deps(request), principal.tenant_id, body.count, body.seed, body.filename)
    return service.to_openai(row)


@datasets.get("")
def list_dataset_versions(request: Request, principal: CurrentPrincipal, name: str | None = None) -> dict[str, Any]:
    rows = versions.list_versions(_deps(request), principal.tenant_id, name)
    return {"object": "list", "data": [versions.to_openai(r) for r in rows], "has_more": False}


@datasets.get("/{version_id}")
def retrieve_dataset_version(request: Request, principal: CurrentPrincipal, version_id: str) -> dict[str, Any]:
    return versions.to_openai(versions.get_version(_deps(request), principal.tenant_id, version_id))


@datasets.delete("/{version_id}")
def delete_dataset_version(request: Request, principal: CurrentPrincipal, version_id: str) -> dict[str, Any]:
    versions.delete_version(_deps(request), principal.tenant_id, version_id)
    return {"id": version_id, "object": "dataset.version", "deleted": True}


@datasets.get("/{version_id}/report")
def dataset_report(request: Request, principal: CurrentPrincipal, version_id: str) -> dict[str, Any]:
    """Every line issue and what each cleaning stage removed, with samples."""
    row = versions.get_version(_deps(request), principal.tenant_id, version_id)
    report: dict[str, Any] = json.loads(row.report_json)
    return report


@datasets.get("/{version_id}/stats")
def dataset_stats(request: Request, principal: CurrentPrincipal, version_id: str) -> dict[str, Any]:
    row = versions.get_version(_deps(request), principal.tenant_id, version_id)
    stats: dict[str, Any] = json.loads(row.stats_json)
    return stats


@datasets.get("/{version_id}/export", response_class=StreamingResponse,
              responses={200: {"description": "One JSON line per example.", "content": JSONL}})
def export_dataset_version(request: Request, principal: CurrentPrincipal, version_id: str,
                           format: str = "openai", split: str = "train") -> StreamingResponse:
    """One split as JSONL in ``openai``, ``chatml`` or ``alpaca`` format."""
    lines = versions.export(_deps(request), principal.tenant_id, version_id, format, split)
    return StreamingResponse((line + "\n" for line in lines), media_type="application/jsonl")
