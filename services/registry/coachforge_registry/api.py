"""REST: OpenAI-compatible ``/v1/models``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from coachforge_registry import service
from coachforge_registry.schemas import Activate, CreateAvatar, Rollback
from coachforge_registry.service import RegistryDeps
from coachforge_shared.http import CurrentPrincipal

router = APIRouter(prefix="/v1", tags=["models"])


def _deps(request: Request) -> RegistryDeps:
    deps: RegistryDeps = request.app.state.registry
    return deps


@router.get("/models")
def list_models(request: Request, principal: CurrentPrincipal) -> dict[str, object]:
    models = service.list_models(_deps(request), principal.tenant_id)
    return {"object": "list", "data": [service.to_openai(m) for m in models]}


@router.get("/avatars")
def list_avatars(request: Request, principal: CurrentPrincipal) -> dict[str, object]:
    rows = service.list_avatars(_deps(request), principal.tenant_id)
    return {"object": "list", "data": [service.avatar_to_openai(a) for a in rows]}


@router.post("/avatars")
def create_avatar(request: Request, principal: CurrentPrincipal, body: CreateAvatar) -> dict[str, object]:
    """Create an alias (e.g. ``coach-anna``) that chat requests can name as their model."""
    a = service.create_avatar(_deps(request), principal.tenant_id, principal.actor, body.name, body.model,
                              body.fallback, body.reason)
    return service.avatar_to_openai(a)


@router.get("/avatars/{name}")
def retrieve_avatar(request: Request, principal: CurrentPrincipal, name: str) -> dict[str, object]:
    return service.avatar_to_openai(service.get_avatar(_deps(request), principal.tenant_id, name))


@router.post("/avatars/{name}/activate")
def activate(request: Request, principal: CurrentPrincipal, name: str, body: Activate) -> dict[str, object]:
    """Point the avatar at another model; recorded with who, when and why."""
    a = service.activate(_deps(request), principal.tenant_id, principal.actor, name, body.model, body.reason)
    return service.avatar_to_openai(a)


@router.post("/avatars/{name}/rollback")
def rollback(request: Request, principal: CurrentPrincipal, name: str,
             body: Rollback | None = None) -> dict[str, object]:
    """Point the avatar back at the model it had before its latest change."""
    a = service.rollback(_deps(request), principal.tenant_id, principal.actor, name, body.reason if body else "")
    return service.avatar_to_openai(a)


@router.get("/avatars/{name}/history")
def avatar_history(request: Request, principal: CurrentPrincipal, name: str) -> dict[str, object]:
    rows = service.history(_deps(request), principal.tenant_id, name)
    return {"object": "list", "data": [service.change_to_openai(c) for c in rows]}


@router.get("/models/{model_id:path}")
def retrieve_model(request: Request, principal: CurrentPrincipal, model_id: str) -> dict[str, object]:
    return service.to_openai(service.get_model(_deps(request), principal.tenant_id, model_id))
