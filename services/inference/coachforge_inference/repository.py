"""Queries of stored chat completions, their metadata pairs and their feedback, and of the tenants'
stored completion policies (the caller's session commits). Lists are ordered by ``created`` (then by
when the answer was published, then id) and paged with an ``after`` cursor, as OpenAI's lists are."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Float, and_, case, cast, delete, exists, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from coachforge_inference.models import (
    CompletionFeedback,
    CompletionReview,
    StoredCompletion,
    StoredCompletionMetadata,
    StoredCompletionPolicy,
)
from coachforge_shared.errors import NotFound
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.models import Tenant


def _dialect_insert(s: Session) -> Any:
    return postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert


@functools.cache
def _insert_completion(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = StoredCompletion.__table__
    return insert(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)


def insert_completion(s: Session, values: Mapping[str, Any], metadata: Mapping[str, str]) -> bool:
    """Keep one completion and its metadata pairs unless a completion with its id is already kept
    (a redelivered or republished event inserts nothing); whether it was inserted."""
    inserted = s.execute(_insert_completion(s.get_bind().dialect.name), dict(values)).first()
    if inserted is None:  # (RETURNING tells it on every backend; rowcount does not)
        return False
    _add_metadata(s, str(values["id"]), str(values["tenant_id"]), values["created"], values["created_at"], metadata)
    return True


def _add_metadata(s: Session, completion_id: str, tenant_id: str, created: int, created_at: Any,
                  metadata: Mapping[str, str]) -> None:
    """The completion's metadata pairs, each with the completion's tenant and list order."""
    if metadata:
        s.execute(StoredCompletionMetadata.__table__.insert(),
                  [{"completion_id": completion_id, "key": k, "value": v, "tenant_id": tenant_id, "created": created,
                    "created_at": created_at} for k, v in metadata.items()])


def _has_pair(completion_id: Any, tenant_id: str, key: str, value: str) -> Any:
    """The completion ``completion_id`` (a column) has the metadata pair ``key``=``value``."""
    m = aliased(StoredCompletionMetadata)
    return exists().where(m.completion_id == completion_id, m.tenant_id == tenant_id, m.key == key, m.value == value)


def completion(s: Session, tenant_id: str, completion_id: str, *, param: str = "completion_id") -> StoredCompletion:
    """The tenant's stored completion ``completion_id`` (another tenant's does not exist for it)."""
    found = s.scalar(select(StoredCompletion).where(StoredCompletion.id == completion_id,
                                                    StoredCompletion.tenant_id == tenant_id))
    if found is None:
        raise NotFound(f"No stored chat completion found with id {completion_id!r}.", param=param,
                       code="completion_not_found")
    return found


_PLANNED_FOR_ITS_VALUES = text("SELECT set_config('plan_cache_mode', 'force_custom_plan', true), "
                               "set_config('max_parallel_workers_per_gather', '0', true)")
"""For this transaction (PostgreSQL): plan each query for its own values, never with the generic
plan of a statement prepared after a few runs (how common a metadata pair is decides the plan), and
without parallel workers (a page is a few rows; starting workers costs more than it saves)."""


def completions(s: Session, tenant_id: str, *, model: str | None = None,
                metadata: Mapping[str, str] | None = None, after: str | None = None, limit: int = 20,
                descending: bool = False) -> list[StoredCompletion]:
    """Up to ``limit + 1`` of the tenant's stored completions (one more than asked tells whether
    there are more): of ``model`` (the model that answered, or the model or avatar as requested),
    with every ``metadata`` pair, after the completion ``after`` in the order asked.

    Each metadata pair is a range of ``ix_stored_completion_metadata_listing``: the tenant's
    completions with that pair, in list order, from the cursor on. Pairs are joined on the whole
    sort key, so the planner can merge them as sorted streams or look the rarer pair's rows up in
    the other's index, and the query stops once the page is full (the completions are fetched by
    primary key), however common each pair is. Without metadata, the completions' own
    ``(tenant_id, created, created_at, id)`` index does the same."""
    t = StoredCompletion
    if s.get_bind().dialect.name == "postgresql":
        s.execute(_PLANNED_FOR_ITS_VALUES)
    at = None
    if after:
        cursor = completion(s, tenant_id, after, param="after")
        at = (cursor.created, cursor.created_at, cursor.id)
    q = select(t).where(t.tenant_id == tenant_id)
    keys: tuple[Any, ...] = (t.created, t.created_at, t.id)
    first: tuple[Any, ...] | None = None
    for key, value in (metadata or {}).items():
        m = aliased(StoredCompletionMetadata)
        pair = (m.created, m.created_at, m.completion_id)  # copies of the completion's, in the index
        if first is None:
            q = q.join(m, m.completion_id == t.id)
            first = keys = pair
        else:
            q = q.join(m, and_(*(mine == theirs for mine, theirs in zip(pair, first, strict=True))))
        q = q.where(m.tenant_id == tenant_id, m.key == key, m.value == value)
        if at is not None:  # on every pair: each index range starts at the cursor
            q = q.where(_after(pair, at, descending))
    if model:
        q = q.where(or_(t.model == model, t.requested_model == model))
    if at is not None and first is None:
        q = q.where(_after(keys, at, descending))
    order = [k.desc() for k in keys] if descending else list(keys)
    return list(s.scalars(q.order_by(*order).limit(limit + 1)))


def _after(keys: Sequence[Any], at: Sequence[Any], descending: bool) -> Any:
    """Rows strictly after ``at`` in the (``keys``) order: a row-value comparison spelled out, the
    same on every backend, with a plain bound on the first key too, where an index range starts."""
    bound = keys[0] <= at[0] if descending else keys[0] >= at[0]
    return and_(bound, _beyond(keys, at, descending))


def _beyond(keys: Sequence[Any], at: Sequence[Any], descending: bool) -> Any:
    first, cursor = keys[0], at[0]
    beyond = first < cursor if descending else first > cursor
    if len(keys) == 1:
        return beyond
    return or_(beyond, (first == cursor) & _beyond(keys[1:], at[1:], descending))


def replace_metadata(s: Session, row: StoredCompletion, metadata: Mapping[str, str]) -> None:
    row.metadata_ = dict(metadata)
    s.execute(delete(StoredCompletionMetadata).where(StoredCompletionMetadata.completion_id == row.id))
    _add_metadata(s, row.id, row.tenant_id, row.created, row.created_at, metadata)


def delete_completion(s: Session, row: StoredCompletion) -> None:
    """Forget a stored completion with its metadata pairs, its feedback and its review."""
    s.execute(delete(CompletionReview).where(CompletionReview.completion_id == row.id))
    s.execute(delete(CompletionFeedback).where(CompletionFeedback.completion_id == row.id))
    s.execute(delete(StoredCompletionMetadata).where(StoredCompletionMetadata.completion_id == row.id))
    s.delete(row)


def feedback_summaries(s: Session, completion_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per completion that has feedback: how many raters, their mean rating (None when none rated),
    how many marked it gold and whether any corrected it."""
    if not completion_ids:
        return {}
    f = CompletionFeedback
    rows = s.execute(select(f.completion_id, func.count(), func.avg(f.rating),
                            func.sum(case((f.gold.is_(True), 1), else_=0)),
                            func.max(case((f.correction.is_not(None), 1), else_=0)))
                     .where(f.completion_id.in_(completion_ids)).group_by(f.completion_id))
    return {r[0]: {"count": int(r[1]), "mean_rating": None if r[2] is None else round(float(r[2]), 4),
                   "gold_count": int(r[3] or 0), "has_correction": bool(r[4])} for r in rows}


def upsert_feedback(s: Session, row: StoredCompletion, rater: str, values: Mapping[str, Any]) -> CompletionFeedback:
    """``rater``'s feedback on ``row``, replacing what the same rater said before (one atomic
    ``INSERT … ON CONFLICT DO UPDATE``: two posts at once by one rater leave one row), and the
    completion's review summary rewritten (the completion's row is locked first, so that posts by
    several raters at once each count the others' rows)."""
    now = utcnow()
    s.execute(select(StoredCompletion.id).where(StoredCompletion.id == row.id).with_for_update())
    fields = {"rating": values.get("rating"), "gold": bool(values.get("gold")),
              "correction": values.get("correction"), "comment": values.get("comment"),
              "flagged": bool(values.get("flagged"))}
    stmt = _dialect_insert(s)(CompletionFeedback.__table__).values(
        id=new_id("fb"), completion_id=row.id, tenant_id=row.tenant_id, rater=rater, created_at=now,
        updated_at=now, **fields)
    s.execute(stmt.on_conflict_do_update(index_elements=["completion_id", "rater"],
                                         set_={**fields, "updated_at": now}))
    refresh_review(s, row.id, row.tenant_id)
    found = s.scalar(select(CompletionFeedback).where(CompletionFeedback.completion_id == row.id,
                                                      CompletionFeedback.rater == rater)
                     .execution_options(populate_existing=True))
    assert found is not None
    return found


def feedback(s: Session, completion_id: str) -> list[CompletionFeedback]:
    """Every rater's feedback on a completion, oldest first."""
    f = CompletionFeedback
    return list(s.scalars(select(f).where(f.completion_id == completion_id).order_by(f.created_at, f.id)))


def training_page(s: Session, tenant_id: str, *, min_rating: int | None = None, gold: bool = False,
                  model: str | None = None, avatar: str | None = None, metadata: Mapping[str, str] | None = None,
                  created_after: int | None = None, after: tuple[Any, ...] | None = None,
                  limit: int = 500) -> list[StoredCompletion]:
    """One page (up to ``limit``) of the tenant's stored completions that a training set is built
    from, oldest first, after the ``(created, created_at, id)`` of ``after``. With ``min_rating`` or ``gold``, only
    completions with at least one feedback row rated at least ``min_rating`` (and marked gold)."""
    t = StoredCompletion
    q = select(t).where(t.tenant_id == tenant_id)
    if model:
        q = q.where(or_(t.model == model, t.requested_model == model))
    if avatar:
        q = q.where(t.avatar == avatar)
    if created_after:
        q = q.where(t.created > created_after)
    for key, value in (metadata or {}).items():
        q = q.where(_has_pair(t.id, tenant_id, key, value))
    if min_rating is not None or gold:
        f = CompletionFeedback
        rated = select(f.completion_id).where(f.tenant_id == tenant_id)
        if min_rating is not None:
            rated = rated.where(f.rating >= min_rating)
        if gold:
            rated = rated.where(f.gold.is_(True))
        q = q.where(t.id.in_(rated))
    if after is not None:
        q = q.where(_after((t.created, t.created_at, t.id), after, False))
    return list(s.scalars(q.order_by(t.created, t.created_at, t.id).limit(limit)))


def latest_corrections(s: Session, completion_ids: Sequence[str]) -> dict[str, str]:
    """Per completion that a rater corrected: the correction updated last."""
    if not completion_ids:
        return {}
    f = CompletionFeedback
    rows = s.execute(select(f.completion_id, f.correction)
                     .where(f.completion_id.in_(completion_ids), f.correction.is_not(None))
                     .order_by(f.updated_at, f.id))
    return {r[0]: str(r[1]) for r in rows}  # later rows overwrite earlier ones: the latest wins


# --- the tenants' policies and the retention purge ---


def policy(s: Session, tenant_id: str) -> StoredCompletionPolicy | None:
    """The tenant's stored completion policy (None: the tenant never set one, the defaults apply)."""
    return s.get(StoredCompletionPolicy, tenant_id)


def upsert_policy(s: Session, tenant_id: str, defaults: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
    """Set ``changes`` on the tenant's policy, created from ``defaults`` first when it has none (one
    atomic ``INSERT … ON CONFLICT DO UPDATE``: two first updates at once leave one row)."""
    now = utcnow()
    values = {**defaults, **changes, "tenant_id": tenant_id, "updated_at": now}
    stmt = _dialect_insert(s)(StoredCompletionPolicy.__table__).values(**values)
    s.execute(stmt.on_conflict_do_update(index_elements=["tenant_id"], set_={**changes, "updated_at": now}))


def retentions(s: Session) -> list[tuple[str, int | None]]:
    """Every tenant with its ``retention_days`` (None: the tenant has no policy, the default applies)."""
    p = StoredCompletionPolicy
    rows = s.execute(select(Tenant.id, p.retention_days).outerjoin(p, p.tenant_id == Tenant.id).order_by(Tenant.id))
    return [(str(r[0]), r[1]) for r in rows]


def purge_batch(s: Session, tenant_id: str, created_before: int, limit: int) -> tuple[int, int]:
    """Delete up to ``limit`` of the tenant's stored completions created (Unix seconds) before
    ``created_before``, oldest first, with their metadata pairs and feedback; ``(found, deleted)``.
    On PostgreSQL the rows are locked first and rows another transaction holds are skipped, so
    replicas purging at once neither wait for each other nor delete twice (deleting a row already
    gone deletes nothing)."""
    t = StoredCompletion
    ids = list(s.scalars(select(t.id).where(t.tenant_id == tenant_id, t.created < created_before)
                         .order_by(t.created, t.created_at, t.id).limit(limit)
                         .with_for_update(skip_locked=True)))
    if not ids:
        return 0, 0
    s.execute(delete(CompletionFeedback).where(CompletionFeedback.completion_id.in_(ids)))
    s.execute(delete(StoredCompletionMetadata).where(StoredCompletionMetadata.completion_id.in_(ids)))
    deleted = s.execute(delete(t).where(t.id.in_(ids)))
    return len(ids), int(deleted.rowcount or 0)  # type: ignore[attr-defined]


# --- the review queue ---

REVIEW_DISMISSED = "dismissed"
REVIEW_OPEN = "open"


def refresh_review(s: Session, completion_id: str, tenant_id: str) -> None:
    """Rewrite the completion's review summary from its feedback rows (raters who rated, the sum of
    their ratings, flags, any correction), creating its review row when it has none (state kept)."""
    f = CompletionFeedback
    rated, total, flags, corrected = s.execute(
        select(func.count(f.rating), func.coalesce(func.sum(f.rating), 0),
               func.coalesce(func.sum(case((f.flagged.is_(True), 1), else_=0)), 0),
               func.coalesce(func.max(case((f.correction.is_not(None), 1), else_=0)), 0))
        .where(f.completion_id == completion_id)).one()
    summary = {"rated": int(rated), "rating_sum": int(total), "flags": int(flags), "corrected": bool(corrected),
               "updated_at": utcnow()}
    stmt = _dialect_insert(s)(CompletionReview.__table__).values(completion_id=completion_id, tenant_id=tenant_id,
                                                                 state="", **summary)
    s.execute(stmt.on_conflict_do_update(index_elements=["completion_id"], set_=summary))


def review(s: Session, completion_id: str) -> CompletionReview | None:
    return s.scalar(select(CompletionReview).where(CompletionReview.completion_id == completion_id)
                    .execution_options(populate_existing=True))


def set_review_state(s: Session, row: StoredCompletion, state: str, reviewer: str,
                     comment: str | None) -> CompletionReview:
    """Record a reviewer's decision on ``row`` (``state``: dismissed or open)."""
    s.execute(select(StoredCompletion.id).where(StoredCompletion.id == row.id).with_for_update())
    refresh_review(s, row.id, row.tenant_id)
    now = utcnow()
    s.execute(update(CompletionReview).where(CompletionReview.completion_id == row.id)
              .values(state=state, reviewer=reviewer, comment=comment, reviewed_at=now, updated_at=now))
    found = review(s, row.id)
    assert found is not None
    return found


def _low_rating(max_rating: float) -> Any:
    r = CompletionReview
    return (r.rated > 0) & (cast(r.rating_sum, Float) <= cast(r.rated, Float) * max_rating)


def review_queue(s: Session, tenant_id: str, *, max_rating: float, reason: str | None = None,
                 model: str | None = None, avatar: str | None = None, after: str | None = None,
                 limit: int = 20) -> list[tuple[StoredCompletion, CompletionReview]]:
    """Up to ``limit + 1`` of the tenant's stored completions waiting for a correction, oldest
    first, with their review rows: rated ``max_rating`` or lower on average (``reason``
    "low_rating") or flagged by a rater ("flagged"), not corrected by anyone, not dismissed. Read
    from the review rows (index on tenant, corrected, state), not from the feedback rows."""
    t, r = StoredCompletion, CompletionReview
    low, flagged = _low_rating(max_rating), r.flags > 0
    wanted = low if reason == "low_rating" else flagged if reason == "flagged" else or_(low, flagged)
    q = (select(t, r).join(r, r.completion_id == t.id)
         .where(r.tenant_id == tenant_id, r.corrected.is_(False), r.state != REVIEW_DISMISSED, wanted,
                t.tenant_id == tenant_id))
    if model:
        q = q.where(or_(t.model == model, t.requested_model == model))
    if avatar:
        q = q.where(t.avatar == avatar)
    if after:
        cursor = completion(s, tenant_id, after, param="after")
        q = q.where(_after((t.created, t.created_at, t.id), (cursor.created, cursor.created_at, cursor.id), False))
    rows = s.execute(q.order_by(t.created, t.created_at, t.id).limit(limit + 1)).tuples()
    return [(c, rv) for c, rv in rows]


def in_review_queue(rv: CompletionReview, max_rating: float) -> bool:
    """Whether a review row puts its completion on the queue (as :func:`review_queue` decides)."""
    low = rv.rated > 0 and rv.rating_sum <= max_rating * rv.rated
    return not rv.corrected and rv.state != REVIEW_DISMISSED and (low or rv.flags > 0)


# --- feedback per variant (the registry's experiment statistics) ---


def feedback_by_variant(s: Session, tenant_id: str, avatar: str, since: int) -> list[dict[str, Any]]:
    """Per (answering model, variant) of the tenant's completions asked through ``avatar`` and
    created at or after ``since`` (unix seconds): how many were stored, had feedback, were rated;
    the mean and mean square of each rated completion's mean rating; how many some rater marked
    gold; how many were rated 4 or more (thumbs up) and 2 or less (thumbs down) on average. One
    query: feedback grouped per completion, then per variant."""
    t, f = StoredCompletion, CompletionFeedback
    per = (select(t.model.label("model"), t.variant.label("variant"),
                  cast(func.avg(f.rating), Float).label("x"), func.count(f.id).label("fb"),
                  func.max(case((f.gold.is_(True), 1), else_=0)).label("g"))
           .select_from(t).outerjoin(f, f.completion_id == t.id)
           .where(t.tenant_id == tenant_id, t.avatar == avatar, t.created >= since)
           .group_by(t.id, t.model, t.variant).subquery())
    x = per.c.x
    rows = s.execute(
        select(per.c.model, per.c.variant, func.count(), func.sum(case((per.c.fb > 0, 1), else_=0)),
               func.count(x), func.avg(x), func.avg(x * x), func.sum(case((per.c.g == 1, 1), else_=0)),
               func.sum(case((x >= 4, 1), else_=0)), func.sum(case((x <= 2, 1), else_=0)))
        .group_by(per.c.model, per.c.variant).order_by(per.c.model, per.c.variant))
    return [{"model": r[0], "variant": r[1], "completions": int(r[2]), "reviewed": int(r[3] or 0),
             "rated": int(r[4] or 0), "mean": None if r[5] is None else float(r[5]),
             "mean_square": None if r[6] is None else float(r[6]), "gold": int(r[7] or 0),
             "thumbs_up": int(r[8] or 0), "thumbs_down": int(r[9] or 0)} for r in rows]
