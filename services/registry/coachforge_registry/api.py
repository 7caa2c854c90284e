"""REST: OpenAI-compatible ``/v1/models``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from coachforge.registry.v1 import registry_pb2
from coachforge_registry import experiment, export_jobs, retrain, service
from coachforge_registry.models import Avatar, AvatarChange, AvatarPersona
from coachforge_registry.schemas import (
    Activate,
    Candidate,
    CreateAvatar,
    CreateExport,
    Evaluation,
    PersonaBody,
    PersonaRollback,
    Pin,
    Retrain,
    RetrainPolicyBody,
    Rollback,
    Unpin,
    UpdateAvatar,
)
from coachforge_registry.service import RegistryDeps
from coachforge_shared.http import CurrentPrincipal
from coachforge_shared.ids import to_unix

router = APIRouter(prefix="/v1", tags=["models"])
EXPORT_MEDIA_TYPE = "application/octet-stream"


def _deps(request: Request) -> RegistryDeps:
    deps: RegistryDeps = request.app.state.registry
    return deps


def to_openai(m: registry_pb2.Model) -> dict[str, object]:
    """OpenAI's model object; fine-tuned versions carry their registry facts as extra fields (with
    ``parent_model``, from the lineage: the version a continued training started from, else null; and
    ``external``: for an external model, the remote model and base URL inference forwards its requests
    to, else null)."""
    out: dict[str, object] = {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
    if m.adapter_name:
        lineage = json.loads(m.lineage_json or "{}")
        out.update({
            "base_model": m.base_model, "suffix": m.suffix, "version": m.version, "status": m.status,
            "source": m.source, "job_id": m.job_id or None, "lora_rank": m.lora_rank,
            "target_modules": list(m.target_modules), "size_bytes": m.size_bytes, "sha256": m.artifact_sha256,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in m.files],
            "base_model_config_sha256": m.base_config_sha256, "lineage": lineage,
            "parent_model": lineage.get("parent_model") if isinstance(lineage, dict) else None,
            "evaluations": json.loads(m.evaluations_json or "{}"),
            "external": {"model": m.external_model, "base_url": m.external_base_url} if m.external_model else None})
    return out


def avatar_to_openai(a: Avatar) -> dict[str, object]:
    return {"object": "avatar", "name": a.name, "active_model": a.active_model, "fallback": a.fallback,
            "candidate_model": a.candidate_model, "candidate_share": a.candidate_share, "pinned": a.pinned,
            "store": a.store, "persona_version": a.persona_version,
            "candidate_persona_version": a.candidate_persona_version, "created_at": to_unix(a.created_at),
            "updated_at": to_unix(a.updated_at)}


def persona_to_openai(a: Avatar, p: AvatarPersona) -> dict[str, object]:
    """A persona version: its settings (for the active one, ``store`` is the avatar's), who, when, why."""
    return {"object": "avatar.persona", "avatar": a.name, "version": p.version,
            "active": p.version == a.persona_version, **service.persona_settings(a, p), "actor": p.actor,
            "reason": p.reason, "created_at": to_unix(p.created_at)}


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
                              body.fallback, body.reason, body.store)
    return avatar_to_openai(a)


@router.get("/avatars/{name}")
def retrieve_avatar(request: Request, principal: CurrentPrincipal, name: str) -> dict[str, object]:
    return avatar_to_openai(service.get_avatar(_deps(request), principal.tenant_id, name))


@router.patch("/avatars/{name}")
def update_avatar(request: Request, principal: CurrentPrincipal, name: str, body: UpdateAvatar) -> dict[str, object]:
    """Change the avatar's settings (``store``: keep its chat completions when a request does not
    say; null follows the tenant's default); fields left out keep their value, a change is kept
    in the avatar's history."""
    changes = body.model_dump(include=body.model_fields_set - {"reason"})
    a = service.update_avatar(_deps(request), principal.tenant_id, principal.actor, name, changes, body.reason)
    return avatar_to_openai(a)


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


@router.get("/avatars/{name}/experiment")
def avatar_experiment(request: Request, principal: CurrentPrincipal, name: str,
                      since: int | None = Query(None, ge=0)) -> dict[str, Any]:
    """The avatar's active and candidate models on the feedback of their stored completions since
    ``since`` (unix seconds; default: when the current candidate was set): per (model, variant) the
    mean rating (t-interval), gold and thumbs up/down rates (Wilson intervals), and the candidate
    minus the active model (Welch's interval for the mean rating, Newcombe's for the gold rate)."""
    return experiment.experiment(_deps(request), principal.tenant_id, name, since)


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
                              body.traffic_share, body.reason,
                              candidate_persona_version=body.candidate_persona_version)
    return avatar_to_openai(a)


@router.put("/avatars/{name}/persona")
def put_persona(request: Request, principal: CurrentPrincipal, name: str, body: PersonaBody) -> dict[str, object]:
    """Replace the avatar's persona (a new version, kept in its history): the system prompt (a
    template: ``{metadata.<key>}`` becomes the request's metadata value), whether it is prepended
    or replaces the request's system messages, sampling defaults, few-shot turns, a default
    response format, and the avatar's ``store`` setting."""
    a, p = service.set_persona(_deps(request), principal.tenant_id, principal.actor, name, body.settings(),
                               body.reason)
    return persona_to_openai(a, p)


@router.get("/avatars/{name}/persona")
def get_persona(request: Request, principal: CurrentPrincipal, name: str) -> dict[str, object]:
    """The avatar's active persona with its version."""
    a, p = service.get_persona(_deps(request), principal.tenant_id, name)
    return persona_to_openai(a, p)


@router.get("/avatars/{name}/persona/versions")
def list_persona_versions(request: Request, principal: CurrentPrincipal, name: str) -> dict[str, object]:
    """The avatar's persona versions, newest first."""
    a, rows = service.persona_versions(_deps(request), principal.tenant_id, name)
    return {"object": "list", "data": [persona_to_openai(a, p) for p in rows]}


@router.post("/avatars/{name}/persona/rollback")
def rollback_persona(request: Request, principal: CurrentPrincipal, name: str,
                     body: PersonaRollback | None = None) -> dict[str, object]:
    """A new persona version with an earlier version's settings (default: the version before the
    active one)."""
    a, p = service.rollback_persona(_deps(request), principal.tenant_id, principal.actor, name,
                                    body.version if body else None, body.reason if body else "")
    return persona_to_openai(a, p)


@router.put("/avatars/{name}/retrain-policy")
def put_retrain_policy(request: Request, principal: CurrentPrincipal, name: str,
                       body: RetrainPolicyBody) -> dict[str, Any]:
    """Create or replace how the avatar retrains itself: trigger, data, training, the eval that gates
    promotion, and what a proven model becomes (candidate at a share, or active)."""
    return retrain.put_policy(_deps(request), principal.tenant_id, principal.actor, name, body)


@router.get("/avatars/{name}/retrain-policy")
def get_retrain_policy(request: Request, principal: CurrentPrincipal, name: str) -> dict[str, Any]:
    return retrain.get_policy(_deps(request), principal.tenant_id, name)


@router.delete("/avatars/{name}/retrain-policy")
def delete_retrain_policy(request: Request, principal: CurrentPrincipal, name: str) -> dict[str, Any]:
    return retrain.delete_policy(_deps(request), principal.tenant_id, principal.actor, name)


@router.post("/avatars/{name}/retrain")
def start_retrain(request: Request, principal: CurrentPrincipal, name: str,
                  body: Retrain | None = None) -> dict[str, Any]:
    """Retrain the avatar now under its policy: dataset version, fine-tune, evaluation against the
    active model, then promotion or rejection (follow it at ``/retrains/{id}``)."""
    return retrain.start_retrain(_deps(request), principal.tenant_id, principal.actor, name,
                                 body.reason if body else "")


@router.get("/avatars/{name}/retrains")
def list_retrains(request: Request, principal: CurrentPrincipal, name: str, limit: int = 20) -> dict[str, Any]:
    return retrain.list_runs(_deps(request), principal.tenant_id, name, limit)


@router.get("/avatars/{name}/retrains/{retrain_id}")
def get_retrain(request: Request, principal: CurrentPrincipal, name: str, retrain_id: str) -> dict[str, Any]:
    return retrain.get_run(_deps(request), principal.tenant_id, name, retrain_id)


@router.post("/avatars/{name}/retrains/{retrain_id}/cancel")
def cancel_retrain(request: Request, principal: CurrentPrincipal, name: str, retrain_id: str) -> dict[str, Any]:
    return retrain.cancel_run(_deps(request), principal.tenant_id, principal.actor, name, retrain_id)


@router.post("/models/{model_id:path}/exports")
def create_export(request: Request, principal: CurrentPrincipal, model_id: str, body: CreateExport) -> dict[str, Any]:
    """Export a fine-tuned model to take it elsewhere: the adapter, the merged model (safetensors),
    a GGUF (f16, q8_0 or q4_0) or an Ollama bundle (GGUF + Modelfile). Made in the background (follow
    its status); the same export asked for again is the one already made (a failed one is queued
    again)."""
    row = export_jobs.create_export(_deps(request), principal.tenant_id, model_id, body.format, body.quantization,
                                    body.avatar)
    return export_jobs.export_to_openai(row)


@router.get("/models/{model_id:path}/exports/{export_id}/content", response_model=None, response_class=Response,
            responses={200: {"description": "The export's file.", "content": {
                           EXPORT_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
                       304: {"description": "Not modified: If-None-Match names the file's ETag."}},
            openapi_extra={"responses": {"409": {"$ref": "#/components/responses/Conflict"}}})
def export_content(request: Request, principal: CurrentPrincipal, model_id: str, export_id: str) -> Response:
    """The export's file (409 until it succeeded), with its sha256 as ``ETag`` and ``Digest``."""
    found = export_jobs.export_content(_deps(request), principal.tenant_id, model_id, export_id)
    e = found.export
    headers = {"ETag": f'"{e.sha256}"', "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(e.sha256)).decode(),
               "Cache-Control": "private, no-cache"}
    if request.headers.get("if-none-match", "").strip() in (f'"{e.sha256}"', e.sha256):
        return Response(status_code=304, headers=headers)
    if found.path is not None:
        return FileResponse(found.path, media_type=EXPORT_MEDIA_TYPE, filename=e.filename, headers=headers)
    stream = found.stream()

    def chunks() -> Iterator[bytes]:
        with stream:
            while chunk := stream.read(1 << 20):
                yield chunk

    headers.update({"Content-Length": str(e.size_bytes),
                    "Content-Disposition": f'attachment; filename="{e.filename}"'})
    return StreamingResponse(chunks(), media_type=EXPORT_MEDIA_TYPE, headers=headers)


@router.get("/models/{model_id:path}/exports/{export_id}")
def get_export(request: Request, principal: CurrentPrincipal, model_id: str, export_id: str) -> dict[str, Any]:
    return export_jobs.export_to_openai(export_jobs.get_export(_deps(request), principal.tenant_id, model_id,
                                                               export_id))


@router.get("/models/{model_id:path}/exports")
def list_exports(request: Request, principal: CurrentPrincipal, model_id: str) -> dict[str, Any]:
    """The model's exports, newest first."""
    rows = export_jobs.list_exports(_deps(request), principal.tenant_id, model_id)
    return {"object": "list", "data": [export_jobs.export_to_openai(e) for e in rows]}


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
