"""Outcomes of recommendations as feedback on their stored completions, never lost.

An outcome (the coach applied or undid the recommendation's change: rater ``coach-outcome``; the
athlete followed it or not: rater ``athlete-outcome``) is written as a ``coach_outcomes`` row in the
same transaction as what it reports (:func:`keep`), then sent to inference's ``RecordFeedback``
(:func:`deliver`). While inference answers NOT_FOUND (the completion is written from its
``completion.stored`` event, which may not have been handled yet) or cannot be reached, the row stays
``pending`` and is sent again:

* as soon as the completion is stored: :func:`on_completion_stored` consumes ``completion.stored``
  in the coach's own consumer group and sends the completion's pending outcomes;
* by :class:`OutcomeRetrier` (started with the process), which sends every pending outcome whose
  next attempt is due (exponential backoff), until ``outcome_max_age_s`` gives up (``expired``).

Sending is idempotent (inference keeps one feedback row per completion and rater, replaced by the
next send) and one at a time per row (a short claim); a row records the ``version`` it sent, so a
newer outcome of the same rater written meanwhile (an undo after an apply) is sent after it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.inference.v1 import inference_pb2
from coachforge_coach.metrics import OUTCOME_FEEDBACK
from coachforge_coach.models import CoachOutcome
from coachforge_shared.errors import NotFound
from coachforge_shared.ids import new_id, to_unix, utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.loops import BackgroundLoop

if TYPE_CHECKING:
    from coachforge_coach.service import CoachDeps

log = get_logger("coachforge.coach.outcomes")

TOPIC = "completion.stored"
ATHLETE_RATER = "athlete-outcome"
FOLLOWED_RATING = {True: 5, False: 2}

PENDING, SENT, NONE, EXPIRED = "pending", "sent", "none", "expired"
FEEDBACK_STATES = {PENDING: "pending", SENT: "recorded", NONE: "none", EXPIRED: "expired"}
FEEDBACK_TIMEOUT_S = 5.0
RETRY_BATCH = 100


def _insert(s: Session) -> Any:
    return postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert


def keep(s: Session, *, tenant_id: str, recommendation_id: str, completion_id: str | None, rater: str, rating: int,
         comment: str, followed: bool | None = None) -> CoachOutcome:
    """Write ``rater``'s outcome of a recommendation in the caller's transaction, replacing the
    rater's earlier one (a new version, due at once); ``none`` when there is no completion to rate.
    One atomic ``INSERT … ON CONFLICT DO UPDATE``: two writes at once leave one row."""
    now = utcnow()
    status = PENDING if completion_id else NONE
    fields = {"completion_id": completion_id, "rating": rating, "comment": comment, "followed": followed,
              "status": status, "attempts": 0, "next_attempt_at": now if status == PENDING else None,
              "last_error": "", "sent_at": None, "updated_at": now}
    table = CoachOutcome.__table__
    stmt = _insert(s)(table).values(id=new_id("outc"), tenant_id=tenant_id, recommendation_id=recommendation_id,
                                    rater=rater, version=1, created_at=now, **fields)
    s.execute(stmt.on_conflict_do_update(index_elements=["recommendation_id", "rater"],
                                         set_={**fields, "version": table.c.version + 1}))
    row: CoachOutcome | None = s.scalar(
        select(CoachOutcome).where(CoachOutcome.recommendation_id == recommendation_id, CoachOutcome.rater == rater)
        .execution_options(populate_existing=True))
    assert row is not None
    return row


def _backoff(deps: CoachDeps, attempts: int) -> float:
    base, cap = deps.settings.outcome_retry_base_s, deps.settings.outcome_retry_max_s
    return float(min(cap, base * 2 ** min(max(attempts - 1, 0), 30)))


def _claim(deps: CoachDeps, outcome_id: str) -> dict[str, Any] | None:
    """Hold a pending outcome for sending (None: not pending, or another process holds it)."""
    now = utcnow()
    o = CoachOutcome
    with deps.db.session() as s:
        claimed = s.execute(update(o).where(o.id == outcome_id, o.status == PENDING,
                                            or_(o.claimed_until.is_(None), o.claimed_until < now))
                            .values(claimed_until=now + timedelta(seconds=deps.settings.outcome_claim_s)))
        if not claimed.rowcount:
            return None
        row = s.get(o, outcome_id, populate_existing=True)
        assert row is not None
        return {"tenant_id": row.tenant_id, "completion_id": row.completion_id, "rater": row.rater,
                "rating": row.rating, "comment": row.comment, "version": row.version, "attempts": row.attempts,
                "written_at": row.updated_at}


def _finish(deps: CoachDeps, outcome_id: str, version: int, values: dict[str, Any]) -> bool:
    """Store the attempt's result if the outcome is still the version sent, and let the row go;
    whether a newer version waits (it was written while this one was being sent)."""
    o = CoachOutcome
    with deps.db.session() as s:
        s.execute(update(o).where(o.id == outcome_id, o.version == version).values(**values))
        s.execute(update(o).where(o.id == outcome_id).values(claimed_until=None))
        newer = s.scalar(select(o.version).where(o.id == outcome_id))
    return newer is not None and newer != version


def deliver(deps: CoachDeps, outcome_id: str) -> str:
    """Send one pending outcome to inference now (unless another process is sending it); the
    outcome's status afterwards. Never raises for a failed send: the outcome stays pending, due
    again after a backoff, or expires once older than ``outcome_max_age_s``."""
    if deps.models is None:
        return status(deps, outcome_id)
    for _ in range(3):  # again only when a newer version was written while sending
        claim = _claim(deps, outcome_id)
        if claim is None:
            break
        now = utcnow()
        attempts = claim["attempts"] + 1
        tenant, rater = claim["tenant_id"], claim["rater"]
        if now - claim["written_at"] > timedelta(seconds=deps.settings.outcome_max_age_s):
            log.warning("outcome feedback given up: the completion was never stored", tenant=tenant,
                        completion_id=claim["completion_id"], rater=rater, attempts=claim["attempts"])
            OUTCOME_FEEDBACK.labels(tenant, rater, "expired").inc()
            newer = _finish(deps, outcome_id, claim["version"],
                            {"status": EXPIRED, "next_attempt_at": None, "updated_at": now})
        else:
            try:
                deps.models.record_feedback(tenant, claim["completion_id"], rater=rater, rating=claim["rating"],
                                            comment=claim["comment"], timeout=FEEDBACK_TIMEOUT_S)
            except Exception as err:  # kept and sent again: never failing the caller
                wait = _backoff(deps, attempts)
                if isinstance(err, NotFound):
                    log.info("outcome feedback kept: completion not stored yet", tenant=tenant,
                             completion_id=claim["completion_id"], rater=rater, retry_in_s=wait)
                else:
                    log.warning("outcome feedback kept: not recorded", tenant=tenant,
                                completion_id=claim["completion_id"], rater=rater, error=str(err), retry_in_s=wait)
                OUTCOME_FEEDBACK.labels(tenant, rater, "retry").inc()
                newer = _finish(deps, outcome_id, claim["version"], {
                    "attempts": attempts, "next_attempt_at": utcnow() + timedelta(seconds=wait),
                    "last_error": str(err)[:1000]})
            else:
                OUTCOME_FEEDBACK.labels(tenant, rater, "recorded").inc()
                newer = _finish(deps, outcome_id, claim["version"], {
                    "status": SENT, "attempts": attempts, "next_attempt_at": None, "last_error": "",
                    "sent_at": utcnow()})
        if not newer:
            break
    return status(deps, outcome_id)


def status(deps: CoachDeps, outcome_id: str) -> str:
    with deps.db.session() as s:
        return str(s.scalar(select(CoachOutcome.status).where(CoachOutcome.id == outcome_id)) or NONE)


def deliver_due(deps: CoachDeps, limit: int = RETRY_BATCH) -> int:
    """Send the pending outcomes whose next attempt is due (oldest due first, at most ``limit``);
    how many were recorded."""
    now = utcnow()
    o = CoachOutcome
    with deps.db.session() as s:
        ids = list(s.scalars(select(o.id).where(o.status == PENDING, o.next_attempt_at <= now,
                                                or_(o.claimed_until.is_(None), o.claimed_until < now))
                             .order_by(o.next_attempt_at).limit(limit)))
    return sum(deliver(deps, i) == SENT for i in ids)


def on_completion_stored(deps: CoachDeps) -> Callable[[Session, Envelope, inference_pb2.CompletionStored],
                                                      Callable[[], None] | None]:
    """The ``completion.stored`` handler: the stored completion's pending outcomes are made due and
    sent after the event's transaction (a completion the coach never asked for costs one indexed
    lookup). Inference keeps the completion from the same event in its own consumer group: when
    the coach is first, inference answers NOT_FOUND once more and the retrier sends it shortly."""
    def handle(s: Session, env: Envelope, event: inference_pb2.CompletionStored) -> Callable[[], None] | None:
        o = CoachOutcome
        ids = list(s.scalars(select(o.id).where(o.tenant_id == env.tenant_id, o.completion_id == event.id,
                                                o.status == PENDING)))
        if not ids:
            return None
        s.execute(update(o).where(o.id.in_(ids)).values(next_attempt_at=utcnow()))

        def send() -> None:
            for outcome_id in ids:
                deliver(deps, outcome_id)
        return send
    return handle


class OutcomeRetrier(BackgroundLoop):
    """A thread that calls :func:`deliver_due` every ``outcome_retry_interval_s`` until stopped."""

    failure_message = "pending outcomes not sent"

    def __init__(self, deps: CoachDeps) -> None:
        interval = deps.settings.outcome_retry_interval_s
        super().__init__("coach-outcomes", interval, first_wait_s=interval, join_timeout_s=10)
        self.deps = deps

    def run_pass(self) -> None:
        deliver_due(self.deps)


def outcome_out(row: CoachOutcome) -> dict[str, Any]:
    return {"object": "coach.recommendation_outcome", "recommendation_id": row.recommendation_id,
            "completion_id": row.completion_id, "rater": row.rater, "rating": row.rating, "comment": row.comment,
            "followed": row.followed, "feedback": FEEDBACK_STATES.get(row.status, row.status),
            "attempts": row.attempts, "last_error": row.last_error or None,
            "updated_at": to_unix(row.updated_at)}


def outcomes_of(s: Session, recommendation_id: str) -> list[CoachOutcome]:
    return list(s.scalars(select(CoachOutcome).where(CoachOutcome.recommendation_id == recommendation_id)
                          .order_by(CoachOutcome.rater).execution_options(populate_existing=True)))
