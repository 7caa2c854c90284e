"""Queries of stored chat completions, their metadata pairs and their feedback (the caller's session
commits). Lists are ordered by ``created`` (then by when the answer was published, then id) and
paged with an ``after`` cursor, as OpenAI's lists are."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import case, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from coachforge_inference.models import CompletionFeedback, StoredCompletion, StoredCompletionMetadata
from coachforge_shared.errors import NotFound
from coachforge_shared.ids import new_id, utcnow


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
    _add_metadata(s, str(values["id"]), metadata)
    return True


def _add_metadata(s: Session, completion_id: str, metadata: Mapping[str, str]) -> None:
    if metadata:
        s.execute(StoredCompletionMetadata.__table__.insert(),
                  [{"completion_id": completion_id, "key": k, "value": v} for k, v in metadata.items()])


def completion(s: Session, tenant_id: str, completion_id: str, *, param: str = "completion_id") -> StoredCompletion:
    """The tenant's stored completion ``completion_id`` (another tenant's does not exist for it)."""
    found = s.scalar(select(StoredCompletion).where(StoredCompletion.id == completion_id,
                                                    StoredCompletion.tenant_id == tenant_id))
    if found is None:
        raise NotFound(f"No stored chat completion found with id {completion_id!r}.", param=param,
                       code="completion_not_found")
    return found


def completions(s: Session, tenant_id: str, *, model: str | None = None,
                metadata: Mapping[str, str] | None = None, after: str | None = None, limit: int = 20,
                descending: bool = False) -> list[StoredCompletion]:
    """Up to ``limit + 1`` of the tenant's stored completions (one more than asked tells whether
    there are more): of ``model`` (the model that answered, or the model or avatar as requested),
    with every ``metadata`` pair, after the completion ``after`` in the order asked."""
    t = StoredCompletion
    q = select(t).where(t.tenant_id == tenant_id)
    if model:
        q = q.where(or_(t.model == model, t.requested_model == model))
    for key, value in (metadata or {}).items():
        m = StoredCompletionMetadata
        q = q.where(t.id.in_(select(m.completion_id).where(m.key == key, m.value == value)))
    if after:
        cursor = completion(s, tenant_id, after, param="after")
        keys = (t.created, t.created_at, t.id)
        at = (cursor.created, cursor.created_at, cursor.id)
        q = q.where(_after(keys, at, descending))
    order = (t.created.desc(), t.created_at.desc(), t.id.desc()) if descending else (t.created, t.created_at, t.id)
    return list(s.scalars(q.order_by(*order).limit(limit + 1)))


def _after(keys: Sequence[Any], at: Sequence[Any], descending: bool) -> Any:
    """Rows strictly after ``at`` in the (``keys``) order: a row-value comparison spelled out, the
    same on every backend."""
    first, cursor = keys[0], at[0]
    beyond = first < cursor if descending else first > cursor
    if len(keys) == 1:
        return beyond
    return or_(beyond, (first == cursor) & _after(keys[1:], at[1:], descending))


def replace_metadata(s: Session, row: StoredCompletion, metadata: Mapping[str, str]) -> None:
    row.metadata_ = dict(metadata)
    s.execute(delete(StoredCompletionMetadata).where(StoredCompletionMetadata.completion_id == row.id))
    _add_metadata(s, row.id, metadata)


def delete_completion(s: Session, row: StoredCompletion) -> None:
    """Forget a stored completion with its metadata pairs and its feedback."""
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
    ``INSERT … ON CONFLICT DO UPDATE``: two posts at once by one rater leave one row)."""
    now = utcnow()
    fields = {"rating": values.get("rating"), "gold": bool(values.get("gold")),
              "correction": values.get("correction"), "comment": values.get("comment")}
    stmt = _dialect_insert(s)(CompletionFeedback.__table__).values(
        id=new_id("fb"), completion_id=row.id, tenant_id=row.tenant_id, rater=rater, created_at=now,
        updated_at=now, **fields)
    s.execute(stmt.on_conflict_do_update(index_elements=["completion_id", "rater"],
                                         set_={**fields, "updated_at": now}))
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
        m = StoredCompletionMetadata
        q = q.where(t.id.in_(select(m.completion_id).where(m.key == key, m.value == value)))
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
