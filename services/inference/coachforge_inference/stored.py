"""Stored chat completions (OpenAI's ``store: true``) and their feedback.

* On the request path: :func:`coachforge_inference.validation.take_store` checks and strips
  ``store`` and ``metadata`` (only requests with either pay for it); whether the answer is kept is
  the request's ``store``, else the avatar's, else the tenant's ``store_by_default``
  (:mod:`coachforge_inference.policies`, cached); once answered, :func:`publish` sends the completion
  as a ``completion.stored`` event without waiting for the broker (like ``usage.recorded``; the
  publisher's own thread sends it, and one the producer cannot deliver is kept in the outbox table
  and sent when the broker is back, same event id); a stream is passed through :func:`collect`, which keeps its
  data lines and, at its end (not when it broke or the client went away), adds up each choice's
  text and publishes from a worker thread.
* The consumer (:func:`on_completion_stored`, its own consumer group) keeps one
  ``stored_completions`` row per completion, idempotently; when the tenant's policy says
  ``scrub_pii`` (the default), e-mail addresses, phone numbers and URLs carrying credentials in the
  messages, the answers and the metadata values are replaced first (off the request path).
* The REST API's logic: read, list, messages, metadata update, delete; feedback per rater.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.inference.v1 import inference_pb2
from coachforge_inference import policies, repository, serializers
from coachforge_inference.metrics import STORED, STORED_SCRUBBED
from coachforge_inference.validation import METADATA_VALUE_CHARS, check_metadata
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, NotFound, Unavailable
from coachforge_shared.ids import utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.pii import scrub_value

if TYPE_CHECKING:
    from coachforge_inference.service import InferenceDeps, Routed

log = get_logger("coachforge.inference.stored")

TOPIC = "completion.stored"

#: Request fields that are not sampling parameters (kept apart, or not kept).
_NOT_PARAMS = frozenset({"model", "messages", "stream", "stream_options", "user", "store", "metadata"})


@dataclass(frozen=True)
class StoreRequest:
    """What a request to be stored keeps besides the answer."""

    requested_model: str
    metadata: dict[str, str]
    request: dict[str, Any]
    """The request's body (without store and metadata)."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _choice(choice: dict[str, Any]) -> dict[str, Any]:
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    kept: dict[str, Any] = {"role": message.get("role") or "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        kept["tool_calls"] = message["tool_calls"]
    return {"index": int(choice.get("index") or 0), "message": kept, "finish_reason": choice.get("finish_reason")}


def publish(deps: InferenceDeps, tenant_id: str, routed: Routed, answer: dict[str, Any], started: float,
            *, stream: bool = False, ended: float | None = None) -> None:
    """Send an answered completion asked with ``store`` as a ``completion.stored`` event (never
    waited for, never failing the answered request). ``answer`` is the engine's chat completion
    (id, created, choices with their message, usage); its latency runs from ``started`` to
    ``ended`` (``time.perf_counter``; default now)."""
    store = routed.store
    if store is None or deps.publisher is None:
        return
    try:
        ident = answer.get("id")
        if not isinstance(ident, str) or not ident:
            raise ValueError("the engine's answer has no id")
        request = store.request
        user = request.get("user")
        usage = answer.get("usage") or routed.usage
        event = inference_pb2.CompletionStored(
            id=ident, created=int(answer.get("created") or time.time()), model=routed.model.id,
            requested_model=store.requested_model, avatar=routed.avatar, variant=routed.arm,
            user=user if isinstance(user, str) else "", metadata_json=_dumps(store.metadata),
            messages_json=_dumps(request.get("messages") or []),
            params_json=_dumps({k: v for k, v in request.items() if k not in _NOT_PARAMS}),
            choices_json=_dumps([_choice(c) for c in answer.get("choices") or () if isinstance(c, dict)]),
            latency_seconds=(time.perf_counter() if ended is None else ended) - started,
            fallback_from=routed.fallback_from or "",
            stream=stream, purpose=routed.purpose)
        if isinstance(usage, dict):
            event.usage.CopyFrom(inference_pb2.Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                total_tokens=int(usage.get("total_tokens") or 0)))
        deps.publisher.publish(TOPIC, event, tenant_id, key=ident, wait=False)
    except Exception:  # storing must never fail an answered request
        STORED.labels(tenant_id, "failed").inc()
        log.exception("stored completion not published", model=routed.model.id)
        return
    STORED.labels(tenant_id, "published").inc()


async def collect(deps: InferenceDeps, tenant_id: str, events: AsyncIterator[bytes], routed: Routed,
                  started: float) -> AsyncIterator[bytes]:
    """``events`` (a chat completion's server-sent event lines) passed on unchanged, their data lines
    kept as they are; once the stream ended without an error, each choice's delta text is added up
    and the whole answer published as :func:`publish` does, from a worker thread (the request path
    pays for keeping each line, not for parsing it: a few microseconds per chunk)."""
    data: list[bytes] = []
    try:
        async for line in events:
            if line.startswith(b"data: {"):
                data.append(line)
            yield line
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    if routed.error is not None:
        return
    await anyio.to_thread.run_sync(_publish_stream, deps, tenant_id, data, routed, started, time.perf_counter())


def _publish_stream(deps: InferenceDeps, tenant_id: str, data: list[bytes], routed: Routed, started: float,
                    ended: float) -> None:
    """A finished stream's answer (its data lines added up: each choice's text and finish reason)
    published as :func:`publish` does."""
    ident, created = "", 0
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    try:
        for line in data:
            try:
                chunk = json.loads(line[6:])
            except ValueError:
                chunk = {}
            if not ident and isinstance(chunk.get("id"), str):
                ident, created = chunk["id"], int(chunk.get("created") or 0)
            for choice in chunk.get("choices") or ():
                index = int(choice.get("index") or 0)
                delta = choice.get("delta") or {}
                texts.setdefault(index, [])
                if isinstance(delta.get("content"), str):
                    texts[index].append(delta["content"])
                if choice.get("finish_reason"):
                    finish[index] = choice["finish_reason"]
    except Exception:  # storing must never fail an answered request
        STORED.labels(tenant_id, "failed").inc()
        log.exception("stored completion not published: a chunk could not be read", model=routed.model.id)
        return
    choices = [{"index": i, "message": {"role": "assistant", "content": "".join(texts[i])},
                "finish_reason": finish.get(i)} for i in sorted(texts)]
    publish(deps, tenant_id, routed, {"id": ident, "created": created, "choices": choices}, started, stream=True,
            ended=ended)


def _json(value: str, default: Any) -> Any:
    return json.loads(value) if value else default


def on_completion_stored(s: Session, env: Envelope, event: inference_pb2.CompletionStored) -> None:
    """Keep one stored completion (a completion already kept, e.g. a republished event, is left as it is)."""
    if not event.id:
        log.warning("completion.stored event without an id dropped", event_id=env.event_id)
        return
    metadata = {str(k): str(v) for k, v in _json(event.metadata_json, {}).items()}
    messages, choices = _json(event.messages_json, []), _json(event.choices_json, [])
    scrubbed: Counter[str] = Counter()
    if policies.scrubs(s, env.tenant_id):  # personal data never reaches the table
        messages, choices = scrub_value(messages, scrubbed), scrub_value(choices, scrubbed)
        metadata = {k: scrub_value(v, scrubbed)[:METADATA_VALUE_CHARS] for k, v in metadata.items()}
    usage = event.usage if event.HasField("usage") else None
    inserted = repository.insert_completion(s, {
        "id": event.id, "tenant_id": env.tenant_id, "created": event.created,
        "created_at": (env.occurred_at.ToDatetime(tzinfo=UTC) if env.HasField("occurred_at") else utcnow()),
        "model": event.model, "requested_model": event.requested_model or event.model, "avatar": event.avatar,
        "variant": event.variant, "end_user": event.user, "purpose": event.purpose or "app",
        "fallback_from": event.fallback_from, "stream": event.stream, "metadata": metadata,
        "messages": messages, "params": _json(event.params_json, {}), "choices": choices,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "total_tokens": usage.total_tokens if usage else None,
        "latency_seconds": event.latency_seconds, "stored_at": utcnow()}, metadata)
    if inserted and scrubbed:
        STORED_SCRUBBED.labels(env.tenant_id).inc()


# --- the REST API's logic ---


def _db(deps: InferenceDeps) -> Database:
    if deps.db is None:
        raise Unavailable("stored completions are not kept by this deployment")
    return deps.db


def get_completion(deps: InferenceDeps, tenant_id: str, completion_id: str) -> dict[str, Any]:
    with _db(deps).session() as s:
        row = repository.completion(s, tenant_id, completion_id)
        return serializers.completion(row, repository.feedback_summaries(s, [row.id]).get(row.id))


def list_completions(deps: InferenceDeps, tenant_id: str, *, model: str | None, metadata: dict[str, str],
                     after: str | None, limit: int, order: str) -> dict[str, Any]:
    with _db(deps).session() as s:
        rows = repository.completions(s, tenant_id, model=model, metadata=metadata, after=after, limit=limit,
                                      descending=order == "desc")
        summaries = repository.feedback_summaries(s, [r.id for r in rows[:limit]])
        return serializers.page(rows, limit, lambda r: serializers.completion(r, summaries.get(r.id)))


def list_messages(deps: InferenceDeps, tenant_id: str, completion_id: str, *, after: str | None, limit: int,
                  order: str) -> dict[str, Any]:
    """The completion's request messages, each with its id (``<completion id>-<position>``)."""
    with _db(deps).session() as s:
        row = repository.completion(s, tenant_id, completion_id)
        messages = list(enumerate(row.messages or []))
    if order == "desc":
        messages.reverse()
    if after:
        ids = [serializers.message_id(completion_id, i) for i, _ in messages]
        if after not in ids:
            raise NotFound(f"No message {after!r} in chat completion {completion_id!r}.", param="after")
        messages = messages[ids.index(after) + 1:]
    return serializers.page(messages, limit, lambda m: serializers.request_message(completion_id, m[0], m[1]))


def update_completion(deps: InferenceDeps, tenant_id: str, completion_id: str, metadata: Any) -> dict[str, Any]:
    """Replace the completion's metadata (the only thing of a stored completion that can change)."""
    checked = check_metadata(metadata)
    with _db(deps).session() as s:
        row = repository.completion(s, tenant_id, completion_id)
        repository.replace_metadata(s, row, checked)
        return serializers.completion(row, repository.feedback_summaries(s, [row.id]).get(row.id))


def delete_completion(deps: InferenceDeps, tenant_id: str, completion_id: str) -> dict[str, Any]:
    with _db(deps).session() as s:
        repository.delete_completion(s, repository.completion(s, tenant_id, completion_id))
    return serializers.deleted(completion_id)


def post_feedback(deps: InferenceDeps, tenant_id: str, completion_id: str, body: dict[str, Any],
                  default_rater: str) -> dict[str, Any]:
    """One rater's feedback (``body``: rating, gold, correction, comment, rater), replacing what the
    same rater said before; at least one of rating, gold, flagged or correction."""
    if (body.get("rating") is None and not body.get("gold") and not body.get("flagged")
            and body.get("correction") is None):
        raise InvalidArgument("feedback needs at least one of rating (1-5), gold (true), flagged (true) or "
                              "correction", param="rating")
    rater = body.get("rater") or default_rater
    with _db(deps).session() as s:
        row = repository.completion(s, tenant_id, completion_id)
        return serializers.feedback(repository.upsert_feedback(s, row, rater, body))


def list_feedback(deps: InferenceDeps, tenant_id: str, completion_id: str) -> dict[str, Any]:
    with _db(deps).session() as s:
        rows = repository.feedback(s, repository.completion(s, tenant_id, completion_id).id)
        return serializers.page(rows, len(rows), serializers.feedback)


# --- training examples (gRPC ListStoredCompletions, read by the dataset service) ---


@dataclass(frozen=True)
class TrainingFilter:
    """Which stored completions a training set is built from (see ``ListStoredCompletionsRequest``)."""

    min_rating: int | None = None
    gold: bool = False
    model: str | None = None
    avatar: str | None = None
    metadata: dict[str, str] | None = None
    created_after: int | None = None


def _answer(row: Any) -> str:
    first: dict[str, Any] = min(row.choices or [], key=lambda c: int(c.get("index") or 0), default={})
    message = first.get("message") or {}
    return str(message.get("content") or "")


def training_page(deps: InferenceDeps, tenant_id: str, flt: TrainingFilter, after: tuple[Any, ...] | None,
                  limit: int) -> tuple[list[inference_pb2.StoredCompletionExample], tuple[Any, ...] | None]:
    """One page of stored completions as training examples (the request's messages, then the
    latest correction or else the first choice as the assistant's answer), and the cursor of the
    next page (None when this one was the last)."""
    if flt.min_rating is not None and not 1 <= flt.min_rating <= 5:
        raise InvalidArgument("min_rating must be between 1 and 5", param="min_rating")
    with _db(deps).session() as s:
        rows = repository.training_page(s, tenant_id, min_rating=flt.min_rating, gold=flt.gold, model=flt.model,
                                        avatar=flt.avatar, metadata=flt.metadata,
                                        created_after=flt.created_after, after=after, limit=limit)
        ids = [r.id for r in rows]
        summaries = repository.feedback_summaries(s, ids)
        corrections = repository.latest_corrections(s, ids)
        examples = []
        for r in rows:
            summary = summaries.get(r.id) or {}
            correction = corrections.get(r.id)
            messages = [*(r.messages or []),
                        {"role": "assistant", "content": correction if correction is not None else _answer(r)}]
            examples.append(inference_pb2.StoredCompletionExample(
                id=r.id, messages_json=json.dumps(messages), mean_rating=summary.get("mean_rating") or 0.0,
                gold=bool(summary.get("gold_count")), corrected=correction is not None))
        cursor = (rows[-1].created, rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
    return examples, cursor
