"""REST: OpenAI-compatible ``/v1/fine_tuning/jobs``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from coachforge_shared.http import CurrentPrincipal
from coachforge_trainer import service
from coachforge_trainer.schemas import CreateJobRequest
from coachforge_trainer.service import TrainerDeps

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])


def _deps(request: Request) -> TrainerDeps:
    deps: TrainerDeps = request.app.state.trainer
    return deps


@router.post("/jobs")
def create_job(request: Request, principal: CurrentPrincipal, body: CreateJobRequest) -> dict[str, Any]:
    return service.to_openai(service.create_job(_deps(request), principal.tenant_id, body))


@router.get("/jobs")
def list_jobs(request: Request, principal: CurrentPrincipal, after: str | None = None,
              limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    jobs, more = service.list_jobs(_deps(request), principal.tenant_id, after, limit)
    return {"object": "list", "data": [service.to_openai(j) for j in jobs], "has_more": more}


@router.get("/jobs/{job_id}")
def retrieve_job(request: Request, principal: CurrentPrincipal, job_id: str) -> dict[str, Any]:
    return service.to_openai(service.get_job(_deps(request), principal.tenant_id, job_id))


@router.get("/jobs/{job_id}/events")
def list_events(request: Request, principal: CurrentPrincipal, job_id: str, after: str | None = None,
                limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
    events, more = service.list_events(_deps(request), principal.tenant_id, job_id, after, limit)
    return {"object": "list", "data": [service.event_to_openai(e) for e in events], "has_more": more}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, principal: CurrentPrincipal, job_id: str) -> dict[str, Any]:
    return service.to_openai(service.cancel_job(_deps(request), principal.tenant_id, job_id))


@router.get("/jobs/{job_id}/checkpoints")
def list_checkpoints(request: Request, principal: CurrentPrincipal, job_id: str, after: str | None = None,
                     limit: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    deps = _deps(request)
    job = service.get_job(deps, principal.tenant_id, job_id)
    rows, more = service.list_checkpoints(deps, principal.tenant_id, job_id, after, limit)
    return {"object": "list", "data": [service.checkpoint_to_openai(job, c) for c in rows], "has_more": more,
            "first_id": rows[0].id if rows else None, "last_id": rows[-1].id if rows else None}
