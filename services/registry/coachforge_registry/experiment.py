"""An avatar's experiment: how its active and candidate models do on the feedback their stored
completions got (``GET /v1/avatars/{name}/experiment``).

Inference summarizes the feedback per (answering model, variant) (``SummarizeFeedback``: each
completion counts once, with its raters' mean rating; the mean rating with a Student's
t-interval, gold and thumbs rates with Wilson intervals, all 95%). Here the rows are put next to
the avatar and compared: the candidate's mean rating minus the active model's with Welch's
interval, and its gold rate minus the active model's with Newcombe's hybrid score interval. The
two arms are the completions the avatar's current active model answered as the "active" variant
and those its current candidate answered as the "candidate" variant (answers of the base model on
fallback are listed, not compared).

The period starts, unless the caller names ``since``, when the current candidate was set (the
avatar's history), or without a candidate when the current active model became active.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from coachforge.inference.v1 import inference_pb2
from coachforge_registry import repository
from coachforge_registry.models import Avatar, AvatarChange
from coachforge_registry.service import ACTIVE_CHANGES, RegistryDeps
from coachforge_shared.errors import InvalidArgument, Unavailable
from coachforge_shared.ids import to_unix
from coachforge_shared.stats import Difference, newcombe_interval, welch_interval

CONFIDENCE = 0.95


def default_since(avatar: Avatar, changes: Sequence[AvatarChange]) -> datetime:
    """When the experiment under way began (``changes``: the avatar's history, newest first): the
    change that made the current candidate the candidate (a later change of its traffic share does
    not restart it); without a candidate, the change that made the active model active; else the
    avatar's creation."""
    if avatar.candidate_model:
        named = [c for c in changes if c.action == "candidate_set"
                 and json.loads(c.detail_json or "{}").get("candidate_model") == avatar.candidate_model]
        for c in named:
            if json.loads(c.detail_json or "{}").get("previous_candidate") != avatar.candidate_model:
                return c.created_at
        if named:
            return named[-1].created_at
    else:
        for c in changes:
            if c.action in ACTIVE_CHANGES and c.to_model == avatar.active_model and c.from_model != c.to_model:
                return c.created_at
    return avatar.created_at


def _interval(msg: inference_pb2.VariantFeedback, name: str) -> dict[str, float] | None:
    if not msg.HasField(name):
        return None
    interval: inference_pb2.Interval = getattr(msg, name)
    return {"low": interval.low, "high": interval.high}


def _optional(msg: inference_pb2.VariantFeedback, name: str) -> float | None:
    return float(getattr(msg, name)) if msg.HasField(name) else None


def variant_out(v: inference_pb2.VariantFeedback) -> dict[str, Any]:
    """One (model, variant) row as the REST answer shows it."""
    return {"model": v.model, "variant": v.variant or None, "completions": v.completions, "reviewed": v.reviewed,
            "rated": v.rated, "mean_rating": _optional(v, "mean_rating"),
            "rating_stddev": _optional(v, "rating_stddev"),
            "mean_rating_interval": _interval(v, "mean_rating_interval"),
            "gold": v.gold, "gold_rate": _optional(v, "gold_rate"),
            "gold_rate_interval": _interval(v, "gold_rate_interval"),
            "thumbs_up": v.thumbs_up, "thumbs_up_rate": _optional(v, "thumbs_up_rate"),
            "thumbs_up_interval": _interval(v, "thumbs_up_interval"),
            "thumbs_down": v.thumbs_down, "thumbs_down_rate": _optional(v, "thumbs_down_rate"),
            "thumbs_down_interval": _interval(v, "thumbs_down_interval")}


def _difference(d: Difference | None, method: str) -> dict[str, Any] | None:
    if d is None:
        return None
    out: dict[str, Any] = {"estimate": d.estimate, "low": d.low, "high": d.high, "method": method}
    if method == "welch":
        out["df"] = d.df
    return out


def difference(active: dict[str, Any] | None, candidate: dict[str, Any] | None) -> dict[str, Any] | None:
    """The candidate minus the active model (rows as :func:`variant_out` writes them): the mean
    rating with Welch's t-interval (each arm's own variance, Welch-Satterthwaite degrees of freedom;
    null below two rated completions per arm) and the gold rate with Newcombe's hybrid score
    interval (null without a reviewed completion in either arm); null without both arms."""
    if active is None or candidate is None:
        return None
    mean = None
    if (active["mean_rating"] is not None and candidate["mean_rating"] is not None
            and active["rating_stddev"] is not None and candidate["rating_stddev"] is not None):
        mean = welch_interval(active["mean_rating"], active["rating_stddev"], active["rated"],
                              candidate["mean_rating"], candidate["rating_stddev"], candidate["rated"], CONFIDENCE)
    gold = newcombe_interval(active["gold"], active["reviewed"], candidate["gold"], candidate["reviewed"], CONFIDENCE)
    return {"mean_rating": _difference(mean, "welch"), "gold_rate": _difference(gold, "newcombe")}


def _arm(rows: Sequence[dict[str, Any]], model: str | None, variant: str) -> dict[str, Any] | None:
    if not model:
        return None
    return next((r for r in rows if r["model"] == model and r["variant"] == variant), None)


LATEST_SINCE = 253_402_300_799
"""The last second of year 9999 (UTC): the latest ``since`` a unix time can name here."""


def experiment(deps: RegistryDeps, tenant_id: str, name: str, since: int | None = None) -> dict[str, Any]:
    """The avatar's active and candidate models side by side on their completions' feedback since
    ``since`` (unix seconds; default: :func:`default_since`)."""
    if since is not None and not 0 <= since <= LATEST_SINCE:
        raise InvalidArgument(f"since must be a unix time from 0 to {LATEST_SINCE}, got {since}", param="since")
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name)
        start = since if since is not None else to_unix(default_since(avatar, repository.changes(s, avatar.id)))
    if deps.feedback is None:
        raise Unavailable("the registry reaches no inference service for feedback statistics")
    rows = [variant_out(v) for v in deps.feedback.summarize(tenant_id, avatar.name, start)]
    active = _arm(rows, avatar.active_model, "active")
    candidate = _arm(rows, avatar.candidate_model, "candidate")
    return {"object": "avatar.experiment", "avatar": avatar.name, "active_model": avatar.active_model,
            "candidate_model": avatar.candidate_model, "candidate_share": avatar.candidate_share, "since": start,
            "confidence": CONFIDENCE, "variants": rows, "difference": difference(active, candidate)}
