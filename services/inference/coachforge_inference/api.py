"""REST: OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions``; stored chat completions
(OpenAI's ``/v1/chat/completions/{id}…``), their feedback and the review queue; daily usage."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from coachforge_inference import policies, review, service, stored
from coachforge_inference import usage as usage_mod
from coachforge_inference.schemas import CompletionSettingsIn, FeedbackIn, ReviewIn, UpdateCompletion
from coachforge_inference.service import InferenceDeps
from coachforge_inference.validation import CHAT, COMPLETIONS, parse_body
from coachforge_shared.auth import READ
from coachforge_shared.errors import Unavailable
from coachforge_shared.http import ARRIVED, CurrentPrincipal, needs_scope

router = APIRouter(prefix="/v1", tags=["inference"])


def _deps(request: Request) -> InferenceDeps:
    deps: InferenceDeps = request.app.state.inference
    return deps


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object, parsed once (no pydantic pass over an arbitrary dict); its size was
    limited while it arrived (the platform's ``max_request_bytes``)."""
    return parse_body(await request.body(), _deps(request).settings.max_json_depth)


class _ClosingStream(StreamingResponse):
    """A streamed answer whose event generator is closed as soon as the response is over, also
    when the client went away in the middle of it: the generator's cleanup (the engine lease
    released, the tokens generated until then billed) runs now, not whenever the garbage collector
    finalizes the abandoned generator."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def _answer(request: Request, tenant_id: str, path: str) -> Any:
    body = await _body(request)
    arrived = request.scope.get(ARRIVED)
    if body.get("stream"):
        events, routed = await service.stream(_deps(request), tenant_id, path, body, arrived)
        return _ClosingStream(events, media_type="text/event-stream", headers=routed.headers())
    content, routed = await service.complete(_deps(request), tenant_id, path, body, arrived)
    return Response(content, media_type="application/json", headers=routed.headers())


@router.post("/chat/completions", openapi_extra=needs_scope(READ))
async def chat_completions(request: Request, principal: CurrentPrincipal) -> Any:
    """OpenAI chat completions (``stream`` for server-sent events); checked by
    :func:`coachforge_inference.validation.validate` like the gRPC ones."""
    return await _answer(request, principal.tenant_id, CHAT)


@router.post("/completions", openapi_extra=needs_scope(READ))
async def completions(request: Request, principal: CurrentPrincipal) -> Any:
    """OpenAI text completions (``stream`` for server-sent events)."""
    return await _answer(request, principal.tenant_id, COMPLETIONS)


@router.get("/usage")
def usage(request: Request, principal: CurrentPrincipal, start_date: str | None = None,
          end_date: str | None = None, model: str | None = None, avatar: str | None = None,
          group_by: str | None = None, purpose: str | None = None) -> dict[str, Any]:
    """Daily usage of the caller's tenant: one row per day (and model/avatar/purpose unless
    ``group_by`` says otherwise), with messages, input/output tokens and cost. Dates are UTC,
    inclusive; ``purpose`` keeps only "app" (applications' requests, every REST completion) or
    "evaluation" (eval runs' samples and judges)."""
    deps = _deps(request)
    if deps.db is None:
        raise Unavailable("usage is not stored by this deployment")
    q = usage_mod.make_query(start_date, end_date, model, avatar, group_by, purpose)
    rows = usage_mod.daily_usage(deps.db, principal.tenant_id, q)
    totals = {k: sum(r[k] for r in rows) for k in ("messages", "input_tokens", "output_tokens")}
    totals["cost_usd"] = round(sum(r["cost_usd"] for r in rows), 10)
    return {"object": "list", "data": rows, "totals": totals}


# --- stored chat completions (asked with "store": true) and their feedback ---

Order = Literal["asc", "desc"]


def _metadata_filter(request: Request) -> dict[str, str]:
    """The ``metadata[key]=value`` query parameters (OpenAI's list filter)."""
    return {k[len("metadata["):-1]: v for k, v in request.query_params.multi_items()
            if k.startswith("metadata[") and k.endswith("]") and len(k) > len("metadata[]")}


@router.get("/chat/completions")
def list_chat_completions(request: Request, principal: CurrentPrincipal, model: str | None = None,
                          after: str | None = None, limit: int = Query(20, ge=1, le=100),
                          order: Order = "asc") -> dict[str, Any]:
    """The tenant's stored chat completions by ``created`` (a cursor page): ``model`` keeps those
    answered by that model or asked for it (a model id or an avatar), ``metadata[key]=value`` those
    with each pair."""
    return stored.list_completions(_deps(request), principal.tenant_id, model=model,
                                   metadata=_metadata_filter(request), after=after, limit=limit, order=order)


# (before the /{completion_id} routes: "settings" is no completion id, those all start with "chatcmpl-")
@router.get("/chat/completions/settings")
def get_stored_completion_settings(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """The tenant's stored completion policy: ``store_by_default``, ``retention_days`` (0 = kept
    forever), ``scrub_pii``; the defaults (``updated_at`` null) until it sets one."""
    return policies.get_settings(_deps(request), principal.tenant_id)


@router.put("/chat/completions/settings")
def put_stored_completion_settings(request: Request, principal: CurrentPrincipal,
                                   body: CompletionSettingsIn) -> dict[str, Any]:
    """Change the tenant's stored completion policy (fields left out keep their value)."""
    return policies.put_settings(_deps(request), principal.tenant_id, body.changes())


# (before the /{completion_id} routes: completion ids all start with "chatcmpl-")
@router.get("/chat/completions/review_queue")
def chat_completion_review_queue(request: Request, principal: CurrentPrincipal,
                                 max_rating: float = Query(review.DEFAULT_MAX_RATING, ge=1, le=5),
                                 reason: Literal["low_rating", "flagged"] | None = None, model: str | None = None,
                                 avatar: str | None = None, after: str | None = None,
                                 limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    """The stored chat completions waiting for a correction, oldest first (a cursor page): mean
    rating at most ``max_rating`` or flagged by a rater (``reason`` keeps one of both), not
    corrected, not dismissed; ``model`` (answered by or asked for) and ``avatar`` narrow it. Each
    item is the stored completion with ``review``: its reasons, mean rating and flags."""
    return review.queue(_deps(request), principal.tenant_id, max_rating=max_rating, reason=reason, model=model,
                        avatar=avatar, after=after, limit=limit)


@router.get("/chat/completions/{completion_id}")
def get_chat_completion(request: Request, principal: CurrentPrincipal, completion_id: str) -> dict[str, Any]:
    """A stored chat completion, with a summary of its feedback."""
    return stored.get_completion(_deps(request), principal.tenant_id, completion_id)


@router.post("/chat/completions/{completion_id}")
def update_chat_completion(request: Request, principal: CurrentPrincipal, completion_id: str,
                           body: UpdateCompletion) -> dict[str, Any]:
    """Replace a stored chat completion's metadata."""
    return stored.update_completion(_deps(request), principal.tenant_id, completion_id, body.metadata)


@router.delete("/chat/completions/{completion_id}")
def delete_chat_completion(request: Request, principal: CurrentPrincipal, completion_id: str) -> dict[str, Any]:
    """Forget a stored chat completion and its feedback."""
    return stored.delete_completion(_deps(request), principal.tenant_id, completion_id)


@router.get("/chat/completions/{completion_id}/messages")
def list_chat_completion_messages(request: Request, principal: CurrentPrincipal, completion_id: str,
                                  after: str | None = None, limit: int = Query(20, ge=1, le=100),
                                  order: Order = "asc") -> dict[str, Any]:
    """The request messages of a stored chat completion (a cursor page)."""
    return stored.list_messages(_deps(request), principal.tenant_id, completion_id, after=after, limit=limit,
                                order=order)


@router.post("/chat/completions/{completion_id}/feedback")
def post_chat_completion_feedback(request: Request, principal: CurrentPrincipal, completion_id: str,
                                  body: FeedbackIn) -> dict[str, Any]:
    """One rater's feedback on a stored chat completion (``rater`` defaults to the caller's API
    key); posting again as the same rater replaces it."""
    return stored.post_feedback(_deps(request), principal.tenant_id, completion_id, body.model_dump(),
                                principal.actor)


@router.get("/chat/completions/{completion_id}/feedback")
def list_chat_completion_feedback(request: Request, principal: CurrentPrincipal,
                                  completion_id: str) -> dict[str, Any]:
    """Every rater's feedback on a stored chat completion, oldest first."""
    return stored.list_feedback(_deps(request), principal.tenant_id, completion_id)


@router.post("/chat/completions/{completion_id}/review")
def review_chat_completion(request: Request, principal: CurrentPrincipal, completion_id: str,
                           body: ReviewIn) -> dict[str, Any]:
    """A reviewer's decision on a stored chat completion: ``dismiss`` takes it off the review queue,
    ``reopen`` puts it back when its feedback says so (``reviewer`` defaults to the caller's API key)."""
    return review.record(_deps(request), principal.tenant_id, completion_id, body.model_dump(), principal.actor)
