"""REST: OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from coachforge_inference import service
from coachforge_inference import usage as usage_mod
from coachforge_inference.service import InferenceDeps
from coachforge_shared.errors import InvalidArgument, Unavailable
from coachforge_shared.http import ARRIVED, CurrentPrincipal

router = APIRouter(prefix="/v1", tags=["inference"])


def _deps(request: Request) -> InferenceDeps:
    deps: InferenceDeps = request.app.state.inference
    return deps


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object, parsed once (no pydantic pass over an arbitrary dict)."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise InvalidArgument(f"The request body is not valid JSON: {err}", param="body") from None
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a JSON object.", param="body")
    return body


async def _answer(request: Request, tenant_id: str, path: str, body: dict[str, Any]) -> Any:
    arrived = request.scope.get(ARRIVED)
    if body.get("stream"):
        events, routed = await service.astream(_deps(request), tenant_id, path, body, arrived)
        return StreamingResponse(events, media_type="text/event-stream", headers=routed.headers())
    content, routed = await service.acomplete(_deps(request), tenant_id, path, body, arrived)
    return Response(content, media_type="application/json", headers=routed.headers())


@router.post("/chat/completions")
async def chat_completions(request: Request, principal: CurrentPrincipal) -> Any:
    body = await _body(request)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages must be a non-empty list", param="messages")
    return await _answer(request, principal.tenant_id, "/v1/chat/completions", body)


@router.post("/completions")
async def completions(request: Request, principal: CurrentPrincipal) -> Any:
    body = await _body(request)
    if "prompt" not in body:
        raise InvalidArgument("you must provide a prompt parameter", param="prompt")
    return await _answer(request, principal.tenant_id, "/v1/completions", body)


@router.get("/usage")
def usage(request: Request, principal: CurrentPrincipal, start_date: str | None = None,
          end_date: str | None = None, model: str | None = None, avatar: str | None = None,
          group_by: str | None = None) -> dict[str, Any]:
    """Daily usage of the caller's tenant: one row per day (and model/avatar unless ``group_by`` says
    otherwise), with messages, input/output tokens and cost. Dates are UTC, inclusive."""
    deps = _deps(request)
    if deps.db is None:
        raise Unavailable("usage is not stored by this deployment")
    q = usage_mod.make_query(start_date, end_date, model, avatar, group_by)
    rows = usage_mod.daily_usage(deps.db, principal.tenant_id, q)
    totals = {k: sum(r[k] for r in rows) for k in ("messages", "input_tokens", "output_tokens")}
    totals["cost_usd"] = round(sum(r["cost_usd"] for r in rows), 10)
    return {"object": "list", "data": rows, "totals": totals}
