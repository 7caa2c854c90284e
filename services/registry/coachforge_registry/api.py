"""REST: OpenAI-compatible ``/v1/models``."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from coachforge.registry.v1 import registry_pb2
from coachforge_registry import service
from coachforge_registry.models import Avatar, AvatarChange
from coachforge_registry.schemas import Activate, Candidate, CreateAvatar, Evaluation, Pin, Rollback, Unpin
from coachforge_registry.service import RegistryDeps
from coachforge_shared.http import CurrentPrincipal
from coachforge_shared.ids import to_unix

router = APIRouter(prefix="/v1", tags=["models"])


def _deps(request: Request) -> RegistryDeps:
    deps: RegistryDeps = request.app.state.registry
    return deps


def to_openai(m: registry_pb2.Model) -> dict[str, object]:
    """OpenAI's model object; fine-tuned versions carry their registry facts as extra fields."""
    out: dict[str, object] = {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
    if m.adapter_name:
        out.update({
            "base_model": m.base_model, "suffix": m.suffix, "version": m.version, "status": m.status,
            "source": m.source, "job_id": m.job_id or None, "lora_rank": m.lora_rank,
            "target_modules": list(m.target_modules), "size_bytes": m.size_bytes, "sha256": m.artifact_sha256,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in m.files],
            "base_model_config_sha256": m.base_config_sha256, "lineage": json.loads(m.lineage_json or "{}"),
            "evaluations": json.loads(m.evaluations_json or "{}")})
    return out


def avatar_to_openai(a: Avatar) -> dict[str, object]:
    return {"object": "avatar", "name": a.name, "active_model": a.active_model, "fallback": a.fallback,
            "candidate_model": a.candidate_model, "candidate_share": a.candidate_share, "pinned": a.pinned,
            "created_at": to_unix(a.created_at), "updated_at": to_unix(a.updated_at)}


def change_to_openai(c: AvatarChange) -> dict[str, object]:
    return {"object": "avatar.change", "action": c.action, "from_model": c.from_model, "to_model": c.to_model,
            "actor": c.actor, "reason": c.reason, "detail": json.loads(c.detail_json or "{}"),
            "created_at": to_unix(c.created_at)}


@router.get("/models")
def list_models(request: Request, principal: CurrentPrincipal) -> dict[str, object]:
    models = service.list_models(_deps(request), principal.tenant_id)
    return {"object": "list", "data": [to_openai(m) for m in models]}


@router.get("/avatars")
def list_avatars(request: Request, principal: CurrentPrincipal) -> dict[str, object]:
    rows = service.list_avatars(_deps(request), principal.tenant_id)
    return {"object": "list", "data": [avatar_to_openai(a) for a in rows]}


@router.post("/avatars")
def create_avatar(request: Request, principal: CurrentPrincipal, body: CreateAvatar) -> dict[str, object]:
    """Create an alias (e.g. ``coach-anna``) that chat requests can name as their model."""
    a = service.create_avatar(_deps(request), principal.tenant_id, principal.actor, body.name, body.model,
                              body.fallback, body.reason)
    return avatar_to_openai(a)


@router.get("/avatars/{name}")
def retrieve_avatar(request: Request, principal: CurrentPrincipal, name: str) -> dict[str, object]:
    return avatar_to_openai(service.get_avatar(_deps(request), principal.tenant_id, name))


@router.post("/avatars/{name}/activate")
def activate(request: Request, principal: CurrentPrincipal, name: str, body: Activate) -> dict[str, object]:
    """Point the avatar at another model; recorded with who, when and why."""
    a = service.activate(_deps(request), principal.tenant_id, principal.actor, name, body.model, body.reason)
    return avatar_to_openai(a)


@router.post("/avatars/{name}/rollback")
def rollback(request: Request, principal: CurrentPrincipal, name: str,
             body: Rollback | None = None) -> dict[str, object]:
    """Point the avatar back at the model it had before its latest change."""
    a = service.rollback(_deps(request), principal.tenant_id, principal.actor, name, body.reason if body else "")
    return avatar_to_openai(a)


@router.get("/avatars/{name}/history")
def avatar_history(request: Request, principal: CurrentPrincipal, name: str) -> dict[str, object]:
    rows = service.history(_deps(request), principal.tenant_id, name)
    return {"object": "list", "data": [change_to_openai(c) for c in rows]}


@router.post("/avatars/{name}/pin")
def pin(request: Request, principal: CurrentPrincipal, name: str, body: Pin) -> dict[str, object]:
    """Point the avatar at a version and keep it there (activate/rollback refused until unpinned)."""
    a = service.pin(_deps(request), principal.tenant_id, principal.actor, name, body.model, body.reason)
    return avatar_to_openai(a)


@router.post("/avatars/{name}/unpin")
def unpin(request: Request, principal: CurrentPrincipal, name: str, body: Unpin | None = None) -> dict[str, object]:
    a = service.unpin(_deps(request), principal.tenant_id, principal.actor, name, body.reason if body else "")
    return avatar_to_openai(a)


@router.post("/avatars/{name}/candidate")
def set_candidate(request: Request, principal: CurrentPrincipal, name: str, body: Candidate) -> dict[str, object]:
    """Set (or clear, with ``model: null``) the avatar's candidate version and its traffic share."""
    a = service.set_candidate(_deps(request), principal.tenant_id, principal.actor, name, body.model,
                              body.traffic_share, body.reason)
    return avatar_to_openai(a)


@router.get("/models/{model_id:path}/versions")
def list_versions(request: Request, principal: CurrentPrincipal, model_id: str) -> dict[str, object]:
    """Versions of a fine-tuned model's line, or of every line of the tenant on a base model."""
    rows = service.list_versions(_deps(request), principal.tenant_id, model_id)
    return {"object": "list", "data": [to_openai(m) for m in rows]}


@router.post("/models/{base_model:path}/versions")
def upload_version(request: Request, principal: CurrentPrincipal, base_model: str,
                   file: Annotated[list[UploadFile], File(description="Adapter files, or one .tar.gz/.tgz/.tar/.zip")],
                   suffix: Annotated[str, Form(max_length=64)] = "") -> dict[str, object]:
    """Register an existing PEFT LoRA adapter as a candidate version of ``base_model``."""
    v = service.upload_version(_deps(request), principal.tenant_id, principal.actor, base_model, suffix,
                               [(f.filename or "", f.file) for f in file])
    return to_openai(service.version_proto(v))


@router.post("/models/{model_id:path}/evaluations")
def record_evaluation(request: Request, principal: CurrentPrincipal, model_id: str,
                      body: Evaluation) -> dict[str, object]:
    """Keep evaluation results on a fine-tuned version (shown under ``evaluations``)."""
    m = service.record_evaluation(_deps(request), principal.tenant_id, principal.actor, model_id, body.name,
                                  body.metrics)
    return to_openai(m)


@router.delete("/models/{model_id:path}")
def delete_model(request: Request, principal: CurrentPrincipal, model_id: str) -> dict[str, object]:
    """Delete a fine-tuned version (409 while an avatar points at it)."""
    return service.delete_model(_deps(request), principal.tenant_id, model_id)


@router.get("/models/{model_id:path}")
def retrieve_model(request: Request, principal: CurrentPrincipal, model_id: str) -> dict[str, object]:
    return to_openai(service.get_model(_deps(request), principal.tenant_id, model_id))
