"""Jobs: the fine-tuning jobs, a job with its live loss curves, progress, ETA, events and
checkpoints, cancel, and a create form."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from starlette.responses import JSONResponse, Response

from coachforge_console.client import Api, ApiError
from coachforge_console.web import UserPage, act, form_float, form_int, form_str, router

FINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running")
EVENT_PAGE = 1000
MAX_EVENTS = 20_000


def _job_path(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{quote(job_id, safe='')}"


async def list_jobs(api: Api, after: str | None = None, limit: int = 50) -> dict[str, Any]:
    page: dict[str, Any] = await api.get("/v1/fine_tuning/jobs", limit=limit, after=after)
    return page


async def new_events(api: Api, job_id: str, since: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The job's events newer than ``since`` (an event id; ``None``: all), oldest first, and the id
    of the newest event (the next call's ``since``)."""
    collected: list[dict[str, Any]] = []
    after: str | None = None
    while len(collected) < MAX_EVENTS:
        page = await api.get(f"{_job_path(job_id)}/events", limit=EVENT_PAGE, after=after)
        data = page.get("data") or []
        reached = False
        for event in data:
            if since is not None and event.get("id") == since:
                reached = True
                break
            collected.append(event)
        if reached or not page.get("has_more") or not data:
            break
        after = data[-1]["id"]
    newest = collected[0]["id"] if collected else since
    collected.reverse()
    return collected, newest


def metric_points(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The loss curves' points from ``metrics`` events (oldest first)."""
    points = []
    for event in events:
        data = event.get("data")
        if event.get("type") != "metrics" or not isinstance(data, dict) or data.get("step") is None:
            continue
        points.append({k: data.get(k) for k in ("step", "total_steps", "epoch", "train_loss", "valid_loss",
                                                 "tokens_per_second", "eta_seconds", "learning_rate")}
                      | {"at": event.get("created_at")})
    return points


def progress(job: dict[str, Any], latest: dict[str, Any] | None) -> dict[str, Any]:
    """Step of total, percent, ETA (seconds) and tokens/s from the job and its latest metrics."""
    out: dict[str, Any] = {"step": None, "total": None, "percent": None, "eta_s": None, "tokens_per_second": None}
    if latest:
        out.update(step=latest.get("step"), total=latest.get("total_steps"),
                   tokens_per_second=latest.get("tokens_per_second"))
        if out["step"] is not None and out["total"]:
            out["percent"] = max(0.0, min(100.0, 100.0 * float(out["step"]) / float(out["total"])))
    if job.get("status") == "succeeded":
        out["percent"] = 100.0
    if job.get("status") in ACTIVE and job.get("estimated_finish"):
        out["eta_s"] = max(0.0, float(job["estimated_finish"]) - time.time())
    return out


async def _job_state(api: Api, job_id: str, *, curves: bool) -> dict[str, Any]:
    """What the job page shows; ``curves``: also every loss point (the live fragment needs none)."""
    job = await api.get(_job_path(job_id))
    latest = await api.get(f"{_job_path(job_id)}/events", limit=50)
    recent = latest.get("data") or []
    points: list[dict[str, Any]] = []
    newest = recent[0]["id"] if recent else None
    if curves:
        events, newest = await new_events(api, job_id, None)
        points = metric_points(events)
    last_point = (points or metric_points(list(reversed(recent))) or [None])[-1]
    checkpoints = await api.get(f"{_job_path(job_id)}/checkpoints", limit=100)
    return {"job": job, "events": recent, "newest": newest, "points": points,
            "checkpoints": checkpoints.get("data") or [], "progress": progress(job, last_point),
            "final": job.get("status") in FINAL}


@router.get("/jobs")
async def jobs_page(page: UserPage, after: str | None = None) -> Response:
    jobs = await list_jobs(page.api, after)
    models = await page.api.get("/v1/models")
    files = await page.api.get("/v1/files", purpose="fine-tune", limit=200)
    versions = await page.api.optional("/v1/datasets")
    bases = [m["id"] for m in models.get("data") or [] if not m.get("base_model")]
    return page.render("jobs.html", title="Jobs", jobs=jobs, after=after, bases=bases,
                       files=files.get("data") or [], versions=(versions or {}).get("data") or [],
                       active=any(j.get("status") in ACTIVE for j in jobs.get("data") or []))


@router.get("/jobs/table")
async def jobs_table(page: UserPage, after: str | None = None) -> Response:
    jobs = await list_jobs(page.api, after)
    return page.render("_jobs_table.html", jobs=jobs, after=after,
                       active=any(j.get("status") in ACTIVE for j in jobs.get("data") or []))


@router.post("/jobs")
async def create_job(page: UserPage) -> Response:
    form = await page.form()
    body: dict[str, Any] = {"model": form_str(form, "model"), "training_file": form_str(form, "training_file")}
    for name in ("validation_file", "suffix"):
        if form_str(form, name):
            body[name] = form_str(form, name)
    hyper: dict[str, Any] = {}
    for name in ("n_epochs", "batch_size", "lora_r", "lora_alpha", "max_length"):
        value = form_int(form, name)
        if value is not None:
            hyper[name] = value
    lr = form_float(form, "learning_rate_multiplier")
    if lr is not None:
        hyper["learning_rate_multiplier"] = lr
    if hyper:
        body["hyperparameters"] = hyper
    seed = form_int(form, "seed")
    if seed is not None:
        body["seed"] = seed
    try:
        job = await page.api.post("/v1/fine_tuning/jobs", body)
    except ApiError as err:
        if err.status == 401:
            raise
        page.notify("error", err.message)
        return page.redirect("/console/jobs")
    page.notify("ok", f"Created {job['id']}.")
    return page.redirect(f"/console/jobs/{quote(job['id'], safe='')}")


@router.get("/jobs/{job_id}")
async def job_page(page: UserPage, job_id: str) -> Response:
    state = await _job_state(page.api, job_id, curves=True)
    return page.render("job.html", title=f"Job {job_id}", **state)


@router.get("/jobs/{job_id}/live")
async def job_live(page: UserPage, job_id: str) -> Response:
    """The parts of the job page that change while it runs (an htmx fragment)."""
    state = await _job_state(page.api, job_id, curves=False)
    return page.render("_job_live.html", **state)


@router.get("/jobs/{job_id}/metrics.json")
async def job_metrics(page: UserPage, job_id: str, since: str | None = None) -> Response:
    """The loss points newer than the event ``since``, the job's status and progress (polled by the chart)."""
    job = await page.api.get(_job_path(job_id))
    try:
        events, newest = await new_events(page.api, job_id, since or None)
    except ApiError as err:
        if err.param != "after":
            raise
        events, newest = await new_events(page.api, job_id, None)  # an unknown cursor: start over
        since = None
    points = metric_points(events)
    return JSONResponse({"status": job.get("status"), "final": job.get("status") in FINAL, "since": newest,
                         "reset": not since, "points": points,
                         "progress": progress(job, points[-1] if points else None)})


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(page: UserPage, job_id: str) -> Response:
    return await act(page, page.api.post(f"{_job_path(job_id)}/cancel"),
                     "Cancellation requested; a running job stops after its current step.",
                     f"/console/jobs/{quote(job_id, safe='')}")
