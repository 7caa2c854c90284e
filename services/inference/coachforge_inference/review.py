"""The review queue of stored chat completions, and the feedback statistics per variant.

* The queue (``GET /v1/chat/completions/review_queue``): the stored completions waiting for a
  correction — rated ``max_rating`` or lower on average, or flagged by a rater — that nobody
  corrected and no reviewer dismissed, oldest first. Posting a correction (feedback) takes a
  completion off the queue; ``POST /v1/chat/completions/{id}/review`` dismisses it or reopens it.
  The queue is read from one review row per completion that every feedback post rewrites
  (:func:`coachforge_inference.repository.refresh_review`), not from the feedback rows.
* :func:`summarize` (gRPC ``SummarizeFeedback``): per (answering model, variant) of an avatar's
  completions, the mean rating with its Student's t-interval and the gold, thumbs-up (mean rating
  4 or more) and thumbs-down (2 or less) rates with their Wilson intervals, each completion
  counted once (its raters' mean rating).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from coachforge_inference import repository, serializers
from coachforge_inference.models import CompletionReview
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, Unavailable
from coachforge_shared.ids import to_unix
from coachforge_shared.stats import mean_interval, wilson_interval

if TYPE_CHECKING:
    from coachforge_inference.service import InferenceDeps

REASONS = ("low_rating", "flagged")
ACTIONS = {"dismiss": repository.REVIEW_DISMISSED, "reopen": repository.REVIEW_OPEN}
DEFAULT_MAX_RATING = 2.0
CONFIDENCE = 0.95


def _db(deps: InferenceDeps) -> Database:
    if deps.db is None:
        raise Unavailable("stored completions are not kept by this deployment")
    return deps.db


def _mean(rv: CompletionReview) -> float | None:
    return round(rv.rating_sum / rv.rated, 4) if rv.rated else None


def reasons(rv: CompletionReview, max_rating: float) -> list[str]:
    """Why a completion is (or would be) on the queue: "low_rating", "flagged", both or neither."""
    out = []
    if rv.rated and rv.rating_sum <= max_rating * rv.rated:
        out.append("low_rating")
    if rv.flags:
        out.append("flagged")
    return out


def queue(deps: InferenceDeps, tenant_id: str, *, max_rating: float = DEFAULT_MAX_RATING, reason: str | None = None,
          model: str | None = None, avatar: str | None = None, after: str | None = None,
          limit: int = 20) -> dict[str, Any]:
    """A cursor page of the review queue; each item is the stored completion with ``review``:
    its reasons, mean rating and number of flags."""
    if not 1 <= max_rating <= 5:
        raise InvalidArgument("max_rating must be between 1 and 5", param="max_rating")
    if reason is not None and reason not in REASONS:
        raise InvalidArgument(f"reason must be one of {', '.join(REASONS)}", param="reason")
    with _db(deps).session() as s:
        rows = repository.review_queue(s, tenant_id, max_rating=max_rating, reason=reason, model=model,
                                       avatar=avatar, after=after, limit=limit)
        summaries = repository.feedback_summaries(s, [c.id for c, _ in rows[:limit]])

        def item(pair: tuple[Any, CompletionReview]) -> dict[str, Any]:
            row, rv = pair
            return {**serializers.completion(row, summaries.get(row.id)),
                    "review": {"reasons": reasons(rv, max_rating), "mean_rating": _mean(rv), "flags": rv.flags}}

        return serializers.page(rows, limit, item)


def review_out(rv: CompletionReview, max_rating: float = DEFAULT_MAX_RATING) -> dict[str, Any]:
    return {"object": "chat.completion.review", "completion_id": rv.completion_id,
            "state": rv.state or repository.REVIEW_OPEN, "reviewer": rv.reviewer, "comment": rv.comment,
            "reviewed_at": to_unix(rv.reviewed_at) if rv.reviewed_at else None,
            "reasons": reasons(rv, max_rating), "mean_rating": _mean(rv), "flags": rv.flags,
            "corrected": rv.corrected, "in_queue": repository.in_review_queue(rv, max_rating)}


def record(deps: InferenceDeps, tenant_id: str, completion_id: str, body: dict[str, Any],
           default_reviewer: str) -> dict[str, Any]:
    """A reviewer's decision on a stored completion: ``dismiss`` (off the queue, whatever its
    feedback says, until reopened) or ``reopen``."""
    state = ACTIONS.get(body.get("action") or "")
    if state is None:
        raise InvalidArgument(f"action must be one of {', '.join(ACTIONS)}", param="action")
    reviewer = body.get("reviewer") or default_reviewer
    with _db(deps).session() as s:
        row = repository.completion(s, tenant_id, completion_id)
        return review_out(repository.set_review_state(s, row, state, reviewer, body.get("comment")))


# --- feedback per variant ---


def _rate(count: int, total: int) -> tuple[float, tuple[float, float]] | None:
    if total <= 0:
        return None
    return count / total, wilson_interval(count, total, CONFIDENCE)


def variant_stats(row: dict[str, Any]) -> dict[str, Any]:
    """The statistics of one (model, variant) from its counts and moments
    (:func:`coachforge_inference.repository.feedback_by_variant`): the mean rating with its
    t-interval (``rated - 1`` degrees of freedom; none below two rated completions), the gold rate
    over reviewed completions and the thumbs-up/down rates over rated ones with Wilson intervals."""
    rated, mean = row["rated"], row["mean"]
    sd = None
    interval = None
    if mean is not None and rated >= 2:
        variance = max(0.0, (row["mean_square"] - mean * mean) * rated / (rated - 1))
        sd = math.sqrt(variance)
        interval = mean_interval(mean, sd, rated, CONFIDENCE)
    return {"model": row["model"], "variant": row["variant"], "completions": row["completions"],
            "reviewed": row["reviewed"], "rated": rated, "mean_rating": mean, "rating_stddev": sd,
            "mean_rating_interval": interval, "gold": row["gold"], "gold_rate": _rate(row["gold"], row["reviewed"]),
            "thumbs_up": row["thumbs_up"], "thumbs_up_rate": _rate(row["thumbs_up"], rated),
            "thumbs_down": row["thumbs_down"], "thumbs_down_rate": _rate(row["thumbs_down"], rated)}


def summarize(deps: InferenceDeps, tenant_id: str, avatar: str, since: int) -> list[dict[str, Any]]:
    """:func:`variant_stats` of every (model, variant) of the avatar's completions since ``since``."""
    if not avatar:
        raise InvalidArgument("avatar is required", param="avatar")
    if since < 0:
        raise InvalidArgument("since must not be negative", param="since")
    with _db(deps).session() as s:
        rows = repository.feedback_by_variant(s, tenant_id, avatar, since)
    return [variant_stats(r) for r in rows]
