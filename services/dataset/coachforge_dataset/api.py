"""REST: OpenAI-compatible ``/v1/files``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from coachforge_dataset import service, versions
from coachforge_dataset.schemas import CreateDatasetVersion
from coachforge_dataset.service import DatasetDeps
from coachforge_shared.errors import PayloadTooLarge
from coachforge_shared.http import CurrentPrincipal

router = APIRouter(prefix="/v1", tags=["files"])


def _deps(request: Request) -> DatasetDeps:
    deps: DatasetDeps = request.app.state.dataset
    return deps


@router.post("/files")
def create_file(request: Request, principal: CurrentPrincipal, file: UploadFile,
                purpose: str = Form(...)) -> dict[str, object]:
    """Upload a JSONL file; every line is validated and the file is refused if any line is bad."""
    deps = _deps(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > deps.settings.max_upload_bytes + 64 * 1024:
        raise PayloadTooLarge(f"File is larger than the limit of {deps.settings.max_upload_bytes} bytes.",
                              param="file")

    def chunks() -> Iterator[bytes]:
        while chunk := file.file.read(deps.settings.chunk_bytes):
            yield chunk

    row = service.store_upload(deps, principal.tenant_id, file.filename or "upload.jsonl", purpose, chunks())
    return service.to_openai(row)


@router.get("/files")
def list_files(request: Request, principal: CurrentPrincipal, purpose: str | None = None) -> dict[str, object]:
    rows = service.list_files(_deps(request), principal.tenant_id, purpose)
    return {"object": "list", "data": [service.to_openai(r) for r in rows], "has_more": False}


@router.get("/files/{file_id}")
def retrieve_file(request: Request, principal: CurrentPrincipal, file_id: str) -> dict[str, object]:
    return service.to_openai(service.get_file(_deps(request), principal.tenant_id, file_id))


@router.delete("/files/{file_id}")
def delete_file(request: Request, principal: CurrentPrincipal, file_id: str) -> dict[str, object]:
    service.delete_file(_deps(request), principal.tenant_id, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/files/{file_id}/content")
def file_content(request: Request, principal: CurrentPrincipal, file_id: str) -> StreamingResponse:
    chunks = service.read_content(_deps(request), principal.tenant_id, file_id)
    return StreamingResponse(chunks, media_type="application/octet-stream")


datasets = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@datasets.post("")
def create_dataset_version(request: Request, principal: CurrentPrincipal,
                           body: CreateDatasetVersion) -> dict[str, Any]:
    """Validate, clean and split uploaded files into an immutable, content-addressed version."""
    return versions.to_openai(versions.create_version(_deps(request), principal.tenant_id, body))


@datasets.get("")
def list_dataset_versions(request: Request, principal: CurrentPrincipal, name: str | None = None) -> dict[str, Any]:
    rows = versions.list_versions(_deps(request), principal.tenant_id, name)
    return {"object": "list", "data": [versions.to_openai(r) for r in rows], "has_more": False}


@datasets.get("/{version_id}")
def retrieve_dataset_version(request: Request, principal: CurrentPrincipal, version_id: str) -> dict[str, Any]:
    return versions.to_openai(versions.get_version(_deps(request), principal.tenant_id, version_id))


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


@datasets.get("/{version_id}/export")
def export_dataset_version(request: Request, principal: CurrentPrincipal, version_id: str,
                           format: str = "openai", split: str = "train") -> StreamingResponse:
    """One split as JSONL in ``openai``, ``chatml`` or ``alpaca`` format."""
    lines = versions.export(_deps(request), principal.tenant_id, version_id, format, split)
    return StreamingResponse((line + "\n" for line in lines), media_type="application/jsonl")
