"""REST: OpenAI-compatible ``/v1/fine_tuning/jobs``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request

from coachforge_shared.http import CurrentPrincipal
from coachforge_shared.ids import to_unix
from coachforge_trainer import service
from coachforge_trainer.models import Job, JobCheckpoint, JobEvent
from coachforge_trainer.schemas import CreateJobRequest
from coachforge_trainer.service import TrainerDeps
from coachforge_trainer.spec import job_hyperparameters

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])


def _deps(request: Request) -> TrainerDeps:
    deps: TrainerDeps = request.app.state.trainer
    return deps


@router.post("/jobs")
def create_job(request: Request, principal: CurrentPrincipal, body: CreateJobRequest) -> dict[str, Any]:
    """Create a job; with ``"dry_run": true`` answer its ``fine_tuning.job.estimate`` and create nothing."""
    created = service.create_job(_deps(request), principal.tenant_id, body)
    return created.as_openai() if isinstance(created, service.JobPlan) else to_openai(created)


@router.get("/jobs")
def list_jobs(request: Request, principal: CurrentPrincipal, after: str | None = None,
              limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    jobs, more = service.list_jobs(_deps(request), principal.tenant_id, after, limit)
    return {"object": "list", "data": [to_openai(j) for j in jobs], "has_more": more}


@router.get("/jobs/{job_id}")
def retrieve_job(request: Request, principal: CurrentPrincipal, job_id: str) -> dict[str, Any]:
    return to_openai(service.get_job(_deps(request), principal.tenant_id, job_id))


@router.get("/jobs/{job_id}/events")
def list_events(request: Request, principal: CurrentPrincipal, job_id: str, after: str | None = None,
                limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
    events, more = service.list_events(_deps(request), principal.tenant_id, job_id, after, limit)
    return {"object": "list", "data": [event_to_openai(e) for e in events], "has_more": more}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, principal: CurrentPrincipal, job_id: str) -> dict[str, Any]:
    return to_openai(service.cancel_job(_deps(request), principal.tenant_id, job_id))


@router.get("/jobs/{job_id}/checkpoints")
def list_checkpoints(request: Request, principal: CurrentPrincipal, job_id: str, after: str | None = None,
                     limit: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    deps = _deps(request)
    job = service.get_job(deps, principal.tenant_id, job_id)
    rows, more = service.list_checkpoints(deps, principal.tenant_id, job_id, after, limit)
    return {"object": "list", "data": [checkpoint_to_openai(job, c) for c in rows], "has_more": more,
            "first_id": rows[0].id if rows else None, "last_id": rows[-1].id if rows else None}


def to_openai(job: Job) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job`` object, plus ``estimate``, ``eligibility``, ``preset``, ``valid_loss``,
    ``device``, ``attempts``, ``backend``, ``remote_job_id`` (backend openai_compatible: the remote job
    training it, once created), and for continued training ``parent_model`` (the fine-tuned model it
    started from, which ``model`` names as the request did) and ``base_model``."""
    error = None
    if job.status == "failed":
        error = {"code": job.error_code or "training_failed", "message": job.error_message or "", "param": None}
    hp = job_hyperparameters(job)
    stored = json.loads(job.estimate_json) if job.estimate_json else {}
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": to_unix(job.created_at), "error": error,
        "fine_tuned_model": job.fine_tuned_model, "finished_at": to_unix(job.finished_at) or None,
        "hyperparameters": hp, "model": job.parent_model or job.model, "organization_id": job.tenant_id,
        "result_files": [job.result_file] if job.result_file else [],
        "seed": job.seed, "status": job.status, "trained_tokens": job.trained_tokens,
        "training_file": job.training_file, "validation_file": job.validation_file, "suffix": job.suffix,
        "estimated_finish": to_unix(job.estimated_finish) or None, "integrations": [], "metadata": None,
        "method": {"type": job.method_type or "supervised", job.method_type or "supervised": {"hyperparameters": hp}},
        "estimate": {**stored.get("estimate", {}), "trained_tokens": job.estimated_tokens,
                     "seconds": job.estimated_seconds, "cost_usd": job.estimated_cost_usd},
        "eligibility": stored.get("eligibility"), "preset": job.preset,
        "valid_loss": job.valid_loss, "device": job.device, "attempts": job.attempts,
        "backend": job.backend or "trl", "parent_model": job.parent_model, "base_model": job.model,
        "remote_job_id": job.remote_job_id,
    }


def event_to_openai(ev: JobEvent) -> dict[str, Any]:
    return {"id": ev.id, "object": "fine_tuning.job.event", "created_at": to_unix(ev.created_at),
            "level": ev.level, "message": ev.message, "type": ev.type,
            "data": json.loads(ev.data_json) if ev.data_json else None}


def checkpoint_to_openai(job: Job, ckpt: JobCheckpoint) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job.checkpoint`` object (where its files lie on the server is not shown)."""
    return {"id": ckpt.id, "object": "fine_tuning.job.checkpoint", "created_at": to_unix(ckpt.created_at),
            "fine_tuned_model_checkpoint": f"{job.fine_tuned_model or job.id}:ckpt-step-{ckpt.step}",
            "fine_tuning_job_id": job.id, "step_number": ckpt.step,
            "metrics": {"step": ckpt.step, "epoch": ckpt.epoch, "train_loss": ckpt.train_loss,
                        "valid_loss": ckpt.valid_loss}}
