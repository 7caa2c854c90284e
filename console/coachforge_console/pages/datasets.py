"""Datasets: uploaded files, dataset versions with their stats and cleaning report, a version's
export download, uploads (a refused one shows its line-by-line report) and file reports."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.responses import Response

from coachforge_console.client import ApiError, error_from
from coachforge_console.pages.common import optional_part, parts, seg
from coachforge_console.web import UserPage, form_str, router

REPORT_ROWS = 1000
REPORT_ID = re.compile(r"\bfrep-[A-Za-z0-9_-]+")
PURPOSES = ("fine-tune", "evals")
POLICIES = ("strict", "lenient")
EXPORT_FORMATS = ("openai", "chatml", "alpaca")
SPLITS = ("train", "validation")


async def read_report(page: UserPage, path: str) -> dict[str, Any]:
    """A validation report (JSON lines: the summary, then one issue per line), at most REPORT_ROWS issues."""
    response = await page.api.raw("GET", path, params={"format": "jsonl"})
    if response.status_code >= 400:
        raise error_from(response)
    lines = response.text.splitlines()
    summary = json.loads(lines[0]) if lines else {}
    issues = [json.loads(line) for line in lines[1:REPORT_ROWS + 1] if line.strip()]
    return {"summary": summary, "issues": issues, "shown": len(issues),
            "total": summary.get("issues_total", len(lines) - 1)}


@router.get("/datasets")
async def datasets_page(page: UserPage) -> Response:
    files, versions = await parts(page.api.get("/v1/files", limit=200), page.api.get("/v1/datasets"))
    return page.render("datasets.html", title="Datasets", files=files, versions=versions, purposes=PURPOSES,
                       policies=POLICIES, refused=None)


@router.post("/datasets/upload")
async def upload(page: UserPage) -> Response:
    form = await page.form()
    upload = form.get("file")
    purpose, policy = form_str(form, "purpose", "fine-tune"), form_str(form, "policy", "strict")
    if upload is None or isinstance(upload, str) or not upload.filename:
        page.notify("error", "Choose a file to upload.")
        return page.redirect("/console/datasets")
    content = await upload.read()
    response = await page.api.raw("POST", "/v1/files", data={"purpose": purpose, "policy": policy},
                                  files={"file": (upload.filename, content, "application/jsonl")})
    if response.status_code < 400:
        created = response.json()
        page.notify("ok", f"Uploaded {created.get('filename')} as {created.get('id')} "
                          f"({created.get('status_details') or created.get('status')}).")
        return page.redirect("/console/datasets")
    err = error_from(response)
    if err.status == 401:
        raise err
    report_id = REPORT_ID.search(err.message)
    report = await optional_part(read_report(page, f"/v1/files/reports/{seg(report_id.group(0))}")) \
        if report_id else None
    files, versions = await parts(page.api.get("/v1/files", limit=200), page.api.get("/v1/datasets"))
    return page.render("datasets.html", status=err.status, title="Datasets", files=files, versions=versions,
                       purposes=PURPOSES, policies=POLICIES,
                       refused={"message": err.message, "filename": upload.filename,
                                "report_id": report_id.group(0) if report_id else None, "report": report})


@router.get("/datasets/reports/{report_id}")
async def upload_report(page: UserPage, report_id: str) -> Response:
    report = await read_report(page, f"/v1/files/reports/{seg(report_id)}")
    return page.render("file_report.html", title=f"Report {report_id}", name=report_id, report=report)


@router.get("/datasets/files/{file_id}/report")
async def file_report(page: UserPage, file_id: str) -> Response:
    report = await read_report(page, f"/v1/files/{seg(file_id)}/report")
    return page.render("file_report.html", title=f"Report of {file_id}", name=file_id, report=report)


@router.get("/datasets/{version_id}")
async def version_page(page: UserPage, version_id: str) -> Response:
    base = f"/v1/datasets/{seg(version_id)}"
    version = await page.api.get(base)
    stats, report = await parts(page.api.get(f"{base}/stats"), page.api.get(f"{base}/report"))
    return page.render("dataset_version.html", title=f"Dataset version {version_id}", v=version, stats=stats,
                       report=report, formats=EXPORT_FORMATS, splits=SPLITS)


@router.get("/datasets/{version_id}/export")
async def export(page: UserPage, version_id: str, format: str = "openai", split: str = "train") -> Response:
    if format not in EXPORT_FORMATS or split not in SPLITS:
        raise ApiError(400, f"format is one of {', '.join(EXPORT_FORMATS)}; split one of {', '.join(SPLITS)}.")
    response = await page.api.raw("GET", f"/v1/datasets/{seg(version_id)}/export",
                                  params={"format": format, "split": split})
    if response.status_code >= 400:
        raise error_from(response)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", version_id)
    return Response(response.content, media_type="application/jsonl",
                    headers={"Content-Disposition": f'attachment; filename="{safe}-{split}-{format}.jsonl"'})
