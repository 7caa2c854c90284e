"""REST: OpenAI-compatible ``/v1/models``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from coachforge_registry import service
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


@router.get("/models/{model_id:path}")
def retrieve_model(request: Request, principal: CurrentPrincipal, model_id: str) -> dict[str, object]:
    return service.to_openai(service.get_model(_deps(request), principal.tenant_id, model_id))
