"""REST: OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, StreamingResponse

from coachforge_inference import service
from coachforge_inference.service import InferenceDeps
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.http import CurrentPrincipal

router = APIRouter(prefix="/v1", tags=["inference"])


def _deps(request: Request) -> InferenceDeps:
    deps: InferenceDeps = request.app.state.inference
    return deps


FALLBACK_HEADER = "x-coachforge-fallback"


def _headers(routed: service.Routed) -> dict[str, str]:
    """A fallback answer says so: ``x-coachforge-fallback: base; from=<model that could not be served>``."""
    return {FALLBACK_HEADER: f"base; from={routed.fallback_from}"} if routed.fallback_from else {}


def _answer(request: Request, tenant_id: str, path: str, body: dict[str, Any]) -> Any:
    if body.get("stream"):
        events, routed = service.stream(_deps(request), tenant_id, path, body)
        return StreamingResponse(events, media_type="text/event-stream", headers=_headers(routed))
    result, routed = service.complete(_deps(request), tenant_id, path, body)
    return JSONResponse(result, headers=_headers(routed))


@router.post("/chat/completions")
def chat_completions(request: Request, principal: CurrentPrincipal,
                     body: dict[str, Any] = Body(...)) -> Any:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages must be a non-empty list", param="messages")
    return _answer(request, principal.tenant_id, "/v1/chat/completions", body)


@router.post("/completions")
def completions(request: Request, principal: CurrentPrincipal, body: dict[str, Any] = Body(...)) -> Any:
    if "prompt" not in body:
        raise InvalidArgument("you must provide a prompt parameter", param="prompt")
    return _answer(request, principal.tenant_id, "/v1/completions", body)
