"""Stored completions and their feedback as the REST API shows them: OpenAI's ``chat.completion``
(plus a few fields of CoachForge's own, which the official SDK keeps as extra fields),
``ChatCompletionStoreMessage``, ``chat.completion.deleted`` and cursor pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from coachforge_inference.models import CompletionFeedback, StoredCompletion
from coachforge_shared.ids import to_unix

T = TypeVar("T")

NO_FEEDBACK = {"count": 0, "mean_rating": None, "gold_count": 0, "has_correction": False}


def completion(row: StoredCompletion, feedback: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stored completion as OpenAI's ``chat.completion`` object, with ``metadata``; its extra
    fields: the model or avatar as requested, the avatar and its variant, the request's ``user``,
    the latency, and a ``feedback`` summary (raters, mean rating, gold marks, any correction)."""
    usage = None
    if row.total_tokens is not None or row.prompt_tokens is not None:
        usage = {"prompt_tokens": row.prompt_tokens or 0, "completion_tokens": row.completion_tokens or 0,
                 "total_tokens": row.total_tokens or 0}
    return {
        "id": row.id,
        "object": "chat.completion",
        "created": row.created,
        "model": row.model,
        "choices": [{"index": c.get("index", i), "message": _message(c.get("message") or {}),
                     "finish_reason": c.get("finish_reason"), "logprobs": None}
                    for i, c in enumerate(row.choices)],
        "usage": usage,
        "metadata": dict(row.metadata_ or {}),
        "service_tier": None,
        "system_fingerprint": None,
        "requested_model": row.requested_model,
        "avatar": row.avatar or None,
        "variant": row.variant or None,
        "user": row.end_user or None,
        "latency_ms": round(row.latency_seconds * 1000, 1),
        "feedback": dict(feedback or NO_FEEDBACK),
    }


def _message(message: dict[str, Any]) -> dict[str, Any]:
    out = {"role": message.get("role") or "assistant", "content": message.get("content"), "refusal": None}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    return out


def message_id(completion_id: str, index: int) -> str:
    return f"{completion_id}-{index}"


def request_message(completion_id: str, index: int, message: Any) -> dict[str, Any]:
    """One request message as OpenAI's ``ChatCompletionStoreMessage``: its id (the completion's id
    and its position), its fields as sent; content given as parts is also kept as ``content_parts``,
    ``content`` then being the text of its text parts."""
    message = dict(message) if isinstance(message, dict) else {"role": "user", "content": str(message)}
    content = message.get("content")
    parts = None
    if isinstance(content, list):
        parts = content
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        message["content"] = "".join(texts) if texts else None
    return {**message, "id": message_id(completion_id, index), "content_parts": parts}


def deleted(completion_id: str) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion.deleted", "deleted": True}


def feedback(row: CompletionFeedback) -> dict[str, Any]:
    return {"id": row.id, "object": "chat.completion.feedback", "completion_id": row.completion_id,
            "rater": row.rater, "rating": row.rating, "gold": row.gold, "flagged": row.flagged,
            "correction": row.correction, "comment": row.comment, "created_at": to_unix(row.created_at),
            "updated_at": to_unix(row.updated_at)}


def page(items: Sequence[T], limit: int, render: Callable[[T], dict[str, Any]],
         ident: Callable[[dict[str, Any]], str] = lambda d: str(d["id"])) -> dict[str, Any]:
    """A cursor page of the first ``limit`` of ``items`` (one more was fetched to tell ``has_more``)."""
    data = [render(item) for item in items[:limit]]
    return {"object": "list", "data": data, "first_id": ident(data[0]) if data else None,
            "last_id": ident(data[-1]) if data else None, "has_more": len(items) > limit}
