"""Queries of the evaluator's tables (the caller's session commits)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, case, delete, func, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from coachforge_evaluator.models import Comparison, ComparisonPair, ComparisonVote, Eval, EvalRun, EvalRunItem
from coachforge_shared.errors import NotFound


def _visible() -> Any:
    """Evals the Evals API shows: not the hidden ones that generate a comparison's answers."""
    return Eval.id.not_in(select(Comparison.eval_id))


def hidden_eval(s: Session, eval_id: str) -> bool:
    """Whether ``eval_id`` is a comparison's hidden eval."""
    return s.scalar(select(Comparison.id).where(Comparison.eval_id == eval_id)) is not None


def eval_(s: Session, tenant_id: str, eval_id: str) -> Eval:
    found = s.scalar(select(Eval).where(Eval.id == eval_id, Eval.tenant_id == tenant_id, _visible()))
    if found is None:
        raise NotFound(f"No eval with id {eval_id!r}.", param="eval_id", code="eval_not_found")
    return found


def evals(s: Session, tenant_id: str, *, after: str | None, limit: int, descending: bool) -> list[Eval]:
    q = select(Eval).where(Eval.tenant_id == tenant_id, _visible())
    if after:
        cursor = eval_(s, tenant_id, after)
        q = q.where(_after(Eval, cursor.created_at, cursor.id, descending))
    return list(s.scalars(q.order_by(*_order(Eval, descending)).limit(limit + 1)))


def run(s: Session, tenant_id: str, eval_id: str, run_id: str, *, lock: bool = False) -> EvalRun:
    q = select(EvalRun).where(EvalRun.id == run_id, EvalRun.eval_id == eval_id, EvalRun.tenant_id == tenant_id)
    found = s.scalar(q.with_for_update() if lock else q)
    if found is None:
        raise NotFound(f"No run with id {run_id!r} in eval {eval_id!r}.", param="run_id", code="run_not_found")
    return found


def run_by_id(s: Session, run_id: str) -> EvalRun | None:
    return s.get(EvalRun, run_id)


def runs(s: Session, tenant_id: str, eval_id: str, *, after: str | None, limit: int, descending: bool,
         status: str | None) -> list[EvalRun]:
    q = select(EvalRun).where(EvalRun.tenant_id == tenant_id, EvalRun.eval_id == eval_id)
    if status:
        q = q.where(EvalRun.status == status)
    if after:
        cursor = run(s, tenant_id, eval_id, after)
        q = q.where(_after(EvalRun, cursor.created_at, cursor.id, descending))
    return list(s.scalars(q.order_by(*_order(EvalRun, descending)).limit(limit + 1)))


def runs_by_ids(s: Session, tenant_id: str, eval_id: str, run_ids: Sequence[str]) -> list[EvalRun]:
    return [run(s, tenant_id, eval_id, run_id) for run_id in run_ids]


def unfinished_runs(s: Session, eval_id: str) -> int:
    return s.scalar(select(func.count()).select_from(EvalRun).where(
        EvalRun.eval_id == eval_id, EvalRun.status.in_(("queued", "in_progress")))) or 0


def add_items(s: Session, rows: list[dict[str, Any]]) -> None:
    s.bulk_insert_mappings(EvalRunItem, rows)  # type: ignore[arg-type]


def items(s: Session, run_id: str, *, after_index: int | None, limit: int, descending: bool,
          status: str | None) -> list[EvalRunItem]:
    q = select(EvalRunItem).where(EvalRunItem.run_id == run_id, EvalRunItem.status.is_not(None))
    if status:
        q = q.where(EvalRunItem.status == status)
    if after_index is not None:
        q = q.where(EvalRunItem.item_index < after_index if descending else EvalRunItem.item_index > after_index)
    order = EvalRunItem.item_index.desc() if descending else EvalRunItem.item_index
    return list(s.scalars(q.order_by(order).limit(limit + 1)))


def item(s: Session, run_id: str, item_id: str) -> EvalRunItem:
    found = s.scalar(select(EvalRunItem).where(EvalRunItem.run_id == run_id, EvalRunItem.id == item_id))
    if found is None:
        raise NotFound(f"No output item with id {item_id!r} in run {run_id!r}.", param="output_item_id")
    return found


def graded_items(s: Session, run_id: str) -> list[EvalRunItem]:
    return list(s.scalars(select(EvalRunItem).where(EvalRunItem.run_id == run_id,
                                                    EvalRunItem.status.is_not(None))
                          .order_by(EvalRunItem.item_index)))


def pending_items(s: Session, run_id: str) -> list[tuple[str, int, dict[str, Any]]]:
    """(id, index, item) of the run's items not graded yet, in order."""
    rows = s.execute(select(EvalRunItem.id, EvalRunItem.item_index, EvalRunItem.item)
                     .where(EvalRunItem.run_id == run_id, EvalRunItem.status.is_(None))
                     .order_by(EvalRunItem.item_index))
    return [(r[0], r[1], r[2]) for r in rows]


def status_counts(s: Session, run_id: str) -> dict[str | None, int]:
    """How many of the run's items are in each status (None: not graded yet)."""
    rows = s.execute(select(EvalRunItem.status, func.count()).where(EvalRunItem.run_id == run_id)
                     .group_by(EvalRunItem.status))
    return {r[0]: int(r[1]) for r in rows}


def usage(s: Session, run_id: str) -> tuple[int, int, int]:
    """(samples taken, prompt tokens, completion tokens) of the run's graded items."""
    row = s.execute(select(func.count(EvalRunItem.sample), func.coalesce(func.sum(EvalRunItem.prompt_tokens), 0),
                           func.coalesce(func.sum(EvalRunItem.completion_tokens), 0))
                    .where(EvalRunItem.run_id == run_id, EvalRunItem.status.is_not(None))).one()
    return int(row[0]), int(row[1]), int(row[2])


def record_item(s: Session, item_id: str, values: dict[str, Any]) -> bool:
    """Write an item's result once: only while it is still ungraded; whether it was written."""
    result = s.execute(update(EvalRunItem).where(EvalRunItem.id == item_id, EvalRunItem.status.is_(None))
                       .values(**values))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def claim(s: Session, run_id: str, worker_id: str, now: datetime, lease_until: datetime) -> bool:
    """Take a queued run, or one whose worker's lease expired; whether this worker has it now."""
    result = s.execute(update(EvalRun).where(
        EvalRun.id == run_id,
        or_(EvalRun.status == "queued",
            (EvalRun.status == "in_progress") & (or_(EvalRun.lease_expires_at.is_(None),
                                                     EvalRun.lease_expires_at < now)))
    ).values(status="in_progress", worker_id=worker_id, lease_expires_at=lease_until,
             started_at=func.coalesce(EvalRun.started_at, now)))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew(s: Session, run_id: str, worker_id: str, lease_until: datetime) -> tuple[bool, bool]:
    """Extend this worker's lease; (still ours, cancel requested)."""
    result = s.execute(update(EvalRun).where(EvalRun.id == run_id, EvalRun.worker_id == worker_id,
                                             EvalRun.status == "in_progress")
                       .values(lease_expires_at=lease_until))
    if not result.rowcount:  # type: ignore[attr-defined]
        return False, False
    return True, cancel_requested(s, run_id)


def cancel_requested(s: Session, run_id: str) -> bool:
    return bool(s.scalar(select(EvalRun.cancel_requested).where(EvalRun.id == run_id)))


def finish(s: Session, run_id: str, worker_id: str | None, values: dict[str, Any]) -> bool:
    """Move a run to its final status (by its worker, or from ``queued`` when ``worker_id`` is None)."""
    q = update(EvalRun).where(EvalRun.id == run_id)
    q = q.where(EvalRun.status == "queued") if worker_id is None else q.where(
        EvalRun.worker_id == worker_id, EvalRun.status == "in_progress")
    return bool(s.execute(q.values(**values)).rowcount)  # type: ignore[attr-defined]


def runnable(s: Session, now: datetime, limit: int) -> list[str]:
    """Ids of queued runs and of running ones whose lease expired, oldest first."""
    return list(s.scalars(select(EvalRun.id).where(or_(
        EvalRun.status == "queued",
        (EvalRun.status == "in_progress") & (EvalRun.lease_expires_at < now))).order_by(EvalRun.created_at)
        .limit(limit)))


# -- comparisons ---------------------------------------------------------------------------------

RANK_MODULUS = 2_147_483_647
"""A prime above every pair's rank: ``(rank * a + b) % RANK_MODULUS`` with ``0 < a < RANK_MODULUS``
is a permutation of the ranks (an affine map modulo a prime), one per voter."""


def comparison(s: Session, tenant_id: str, comparison_id: str, *, lock: bool = False,
               param: str = "comparison_id") -> Comparison:
    q = select(Comparison).where(Comparison.id == comparison_id, Comparison.tenant_id == tenant_id)
    found: Comparison | None = s.scalar(q.with_for_update() if lock else q)
    if found is None:
        raise NotFound(f"No comparison with id {comparison_id!r}.", param=param, code="comparison_not_found")
    return found


def comparisons(s: Session, tenant_id: str, *, after: str | None, limit: int, descending: bool) -> list[Comparison]:
    q = select(Comparison).where(Comparison.tenant_id == tenant_id)
    if after:
        cursor = comparison(s, tenant_id, after, param="after")
        q = q.where(_after(Comparison, cursor.created_at, cursor.id, descending))
    return list(s.scalars(q.order_by(*_order(Comparison, descending)).limit(limit + 1)))


def runs_of(s: Session, run_ids: Sequence[str], *, lock: bool = False) -> dict[str, EvalRun]:
    q = select(EvalRun).where(EvalRun.id.in_(list(run_ids)))
    return {r.id: r for r in s.scalars(q.with_for_update() if lock else q)}


def vote_counts(s: Session, comparison_ids: Sequence[str]) -> dict[str, int]:
    rows = s.execute(select(ComparisonVote.comparison_id, func.count()).where(
        ComparisonVote.comparison_id.in_(list(comparison_ids))).group_by(ComparisonVote.comparison_id))
    return {r[0]: int(r[1]) for r in rows}


def next_pair(s: Session, comparison_id: str, run_of_model: dict[str, str], voter: str,
              a: int, b: int) -> tuple[Any, ...] | None:
    """In one query: the first pair, in the voter's order ``(rank * a + b) % RANK_MODULUS``, that
    ``voter`` has not voted on and whose two answers were generated; as (pair id, prompt index,
    model_a, model_b, the first answer's item row, the first answer's sample, the second answer's
    sample, how many such pairs there are, this one included)."""
    first, second = aliased(EvalRunItem), aliased(EvalRunItem)

    def answer(item: Any, model: Any) -> Any:
        return ((item.run_id == case(run_of_model, value=model)) & (item.item_index == ComparisonPair.prompt_index)
                & (item.status == "pass"))

    judged = select(ComparisonVote.id).where(ComparisonVote.pair_id == ComparisonPair.id,
                                             ComparisonVote.voter == voter).exists()
    order = ((ComparisonPair.rank * literal(a, BigInteger) + literal(b, BigInteger))
             % literal(RANK_MODULUS, BigInteger))
    # The pairs are ranked carrying only ids; the answers' contents are joined to the one chosen.
    chosen = (select(ComparisonPair.id, ComparisonPair.prompt_index, ComparisonPair.model_a, ComparisonPair.model_b,
                     first.id.label("first_id"), second.id.label("second_id"), func.count().over().label("remaining"))
              .select_from(ComparisonPair)
              .join(first, answer(first, ComparisonPair.model_a))
              .join(second, answer(second, ComparisonPair.model_b))
              .where(ComparisonPair.comparison_id == comparison_id, ~judged)
              .order_by(order, ComparisonPair.id)
              .limit(1)).subquery()
    a_item, b_item = aliased(EvalRunItem), aliased(EvalRunItem)
    q = (select(chosen.c.id, chosen.c.prompt_index, chosen.c.model_a, chosen.c.model_b, a_item.item, a_item.sample,
                b_item.sample, chosen.c.remaining)
         .join(a_item, a_item.id == chosen.c.first_id)
         .join(b_item, b_item.id == chosen.c.second_id))
    row = s.execute(q).first()
    return None if row is None else tuple(row)


def delete_comparison(s: Session, c: Comparison) -> None:
    """The comparison, its pairs and votes, and its hidden eval with the runs and their answers."""
    for stmt in (delete(ComparisonVote).where(ComparisonVote.comparison_id == c.id),
                 delete(ComparisonPair).where(ComparisonPair.comparison_id == c.id),
                 delete(Comparison).where(Comparison.id == c.id),
                 delete(EvalRunItem).where(EvalRunItem.run_id.in_(list(c.run_ids))),
                 delete(EvalRun).where(EvalRun.eval_id == c.eval_id),
                 delete(Eval).where(Eval.id == c.eval_id)):
        s.execute(stmt.execution_options(synchronize_session=False))


def _order(model: Any, descending: bool) -> tuple[Any, Any]:
    return (model.created_at.desc(), model.id.desc()) if descending else (model.created_at, model.id)


def _after(model: Any, created_at: datetime, id_: str, descending: bool) -> Any:
    if descending:
        return or_(model.created_at < created_at, (model.created_at == created_at) & (model.id < id_))
    return or_(model.created_at > created_at, (model.created_at == created_at) & (model.id > id_))
