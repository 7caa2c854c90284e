"""Coach logic: import athlete data, training load, context, recommendation (model or rules),
apply with an audit row, undo, history. Stateless: every function gets its dependencies.

The model proposes; deterministic code decides. Every operation is checked by the shared
safety rules (:mod:`polarize.rules`, the same ones the synthetic data generator
uses) before anything changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coachforge_coach import outcomes
from coachforge_coach import repository as repo
from coachforge_coach.clients import KnowledgeClient, ModelClient, Principle, token_counter
from coachforge_coach.metrics import CHANGES, FALLBACKS, OPERATIONS, OTHER_MODEL, PRINCIPLES, RECOMMENDATIONS
from coachforge_coach.models import Athlete, CoachOutcome, PlanChange, Recommendation, Wellness, Workout
from coachforge_coach.schemas import ApplyIn, AthleteIn, ImportBatch, RecommendIn, WellnessIn, WorkoutIn
from coachforge_coach.settings import CoachSettings
from coachforge_shared.db import Database
from coachforge_shared.errors import (
    CoachForgeError,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from coachforge_shared.ids import new_id, to_unix, utcnow
from coachforge_shared.logging import get_logger
from polarize.context import Day, DoneWorkout, Profile, build_context
from polarize.load import LoadPoint, compute_load
from polarize.principles import principles_query
from polarize.prompt import SYSTEM_PROMPT
from polarize.rules import (
    PAST_WORKOUT,
    UNKNOWN_WORKOUT,
    AthleteState,
    PlannedWorkout,
    RuleConfig,
    RuleViolation,
    apply_modification,
    apply_operation,
    classify_state,
    partition_operations,
    weekly_tss,
)
from polarize.rules import (
    recommend as rule_based,
)
from polarize.schema import (
    SCHEMA_VERSION,
    InvalidModification,
    Modification,
    modification_json_schema,
    parse_modification,
    response_format,
)

log = get_logger("coachforge.coach")

#: Wellness assumed when none was recorded recently: neutral, never "fresh".
DEFAULT_SLEEP_HOURS = 7.0
DEFAULT_SORENESS = 4
WELLNESS_MAX_AGE_DAYS = 2
PLAN_HORIZON_DAYS = 28

#: Feedback the coach records on a recommendation's stored completion when its change is applied
#: or undone (one row per rater: an undo replaces the "applied" row); kept until inference has it
#: (see :mod:`coachforge_coach.outcomes`).
OUTCOME_RATER = "coach-outcome"
OUTCOMES: dict[str, int] = {"applied": 4, "undone": 2}


@dataclass
class CoachDeps:
    db: Database
    settings: CoachSettings
    models_dir: Path
    models: ModelClient | None = None
    knowledge: KnowledgeClient | None = None
    """The knowledge bases searched for training principles (None: no dataset service; a knowledge
    base set for the context is then reported unavailable)."""
    config: RuleConfig = field(init=False)

    def __post_init__(self) -> None:
        self.config = RuleConfig(tss_band=self.settings.tss_band, max_hard_in_a_row=self.settings.max_hard_in_a_row)


def schema() -> dict[str, Any]:
    return {"version": SCHEMA_VERSION, "name": "workout_modification", "schema": modification_json_schema()}


def validate(text: str) -> tuple[bool, str]:
    """Whether ``text`` is a modification matching the schema, and why not."""
    try:
        parse_modification(text)
    except InvalidModification as err:
        return False, str(err)
    return True, ""


EARLIEST_TODAY, LATEST_TODAY = dt.date(1900, 1, 1), dt.date(2999, 12, 31)
"""The athlete's ``today`` a request may name: the load windows and the plan around it stay dates."""


def today_or(value: dt.date | None) -> dt.date:
    """``value`` (the athlete's today, refused outside :data:`EARLIEST_TODAY`..:data:`LATEST_TODAY`),
    else the server's date (UTC)."""
    if value is None:
        return utcnow().date()
    if not EARLIEST_TODAY <= value <= LATEST_TODAY:
        raise InvalidArgument(f"today must be a date from {EARLIEST_TODAY} to {LATEST_TODAY}, got {value}",
                              param="today")
    return value


# -- import ------------------------------------------------------------------------------------


def _assign(row: Any, values: dict[str, Any]) -> bool:
    changed = False
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed = True
    return changed


def _upsert_athlete(s: Session, tenant_id: str, body: AthleteIn) -> tuple[Athlete, str]:
    plan = body.plan
    values: dict[str, Any] = {
        "name": body.name, "sport": body.sport, "ill_or_injured": body.ill_or_injured,
        "hrv_baseline_ms": body.hrv_baseline_ms,
        "plan_name": plan.name if plan else "", "plan_phase": plan.phase if plan else "",
        "goal": plan.goal if plan else "", "goal_date": plan.goal_date if plan else None,
    }
    row = repo.find_athlete(s, tenant_id, body.external_id)
    if row is None:
        row = Athlete(id=new_id("ath"), tenant_id=tenant_id, external_id=body.external_id, **values)
        s.add(row)
        s.flush()
        return row, "created"
    if _assign(row, values):
        row.updated_at = utcnow()
        return row, "updated"
    return row, "unchanged"


def _upsert_workout(s: Session, tenant_id: str, athlete: Athlete, body: WorkoutIn) -> tuple[Workout, str]:
    values: dict[str, Any] = body.model_dump(exclude={"external_id", "athlete_id"})
    row = repo.workout(s, athlete.id, body.external_id)
    if row is None:
        row = Workout(id=new_id("wo"), tenant_id=tenant_id, athlete_id=athlete.id, external_id=body.external_id,
                      version=1, **values)
        s.add(row)
        s.flush()
        return row, "created"
    if _assign(row, values):
        row.version += 1
        row.updated_at = utcnow()
        return row, "updated"
    return row, "unchanged"


def _upsert_wellness(s: Session, tenant_id: str, athlete: Athlete, body: WellnessIn) -> tuple[Wellness, str]:
    values: dict[str, Any] = body.model_dump(exclude={"athlete_id", "date"})
    row = repo.wellness_on(s, athlete.id, body.date)
    if row is None:
        row = Wellness(id=new_id("wel"), tenant_id=tenant_id, athlete_id=athlete.id, date=body.date, **values)
        s.add(row)
        s.flush()
        return row, "created"
    if _assign(row, values):
        row.updated_at = utcnow()
        return row, "updated"
    return row, "unchanged"


def _counts() -> dict[str, int]:
    return {"created": 0, "updated": 0, "unchanged": 0}


def import_batch(deps: CoachDeps, tenant_id: str, batch: ImportBatch) -> dict[str, dict[str, int]]:
    """Create or update everything in one transaction; a workout or day naming an unknown athlete
    fails the whole batch, naming the field."""
    result = {"athletes": _counts(), "workouts": _counts(), "wellness": _counts()}
    with deps.db.session() as s:
        athletes: dict[str, Athlete] = {}
        for body in batch.athletes:
            row, outcome = _upsert_athlete(s, tenant_id, body)
            athletes[body.external_id] = row
            result["athletes"][outcome] += 1

        def owner(kind: str, index: int, external_id: str | None) -> Athlete:
            param = f"{kind}[{index}].athlete_id"
            if not external_id:
                raise InvalidArgument(f"{param} is required in a batch import.", param=param)
            if external_id not in athletes:
                found = repo.find_athlete(s, tenant_id, external_id)
                if found is None:
                    raise InvalidArgument(f"{param}: no athlete {external_id!r}.", param=param,
                                          code="athlete_not_found")
                athletes[external_id] = found
            return athletes[external_id]

        for index, workout in enumerate(batch.workouts):
            _, outcome = _upsert_workout(s, tenant_id, owner("workouts", index, workout.athlete_id), workout)
            result["workouts"][outcome] += 1
        for index, day in enumerate(batch.wellness):
            _, outcome = _upsert_wellness(s, tenant_id, owner("wellness", index, day.athlete_id), day)
            result["wellness"][outcome] += 1
    return result


def upsert_athlete(deps: CoachDeps, tenant_id: str, body: AthleteIn) -> dict[str, Any]:
    with deps.db.session() as s:
        row, _ = _upsert_athlete(s, tenant_id, body)
        return athlete_out(row)


def get_athlete(deps: CoachDeps, tenant_id: str, external_id: str) -> dict[str, Any]:
    with deps.db.session() as s:
        return athlete_out(repo.athlete(s, tenant_id, external_id))


def upsert_workout(deps: CoachDeps, tenant_id: str, athlete_id: str, body: WorkoutIn) -> dict[str, Any]:
    if body.athlete_id not in (None, athlete_id):
        raise InvalidArgument("athlete_id in the body differs from the athlete in the path.", param="athlete_id")
    with deps.db.session() as s:
        row, _ = _upsert_workout(s, tenant_id, repo.athlete(s, tenant_id, athlete_id), body)
        return workout_out(row, athlete_id)


def upsert_wellness(deps: CoachDeps, tenant_id: str, athlete_id: str, body: WellnessIn) -> dict[str, Any]:
    if body.athlete_id not in (None, athlete_id):
        raise InvalidArgument("athlete_id in the body differs from the athlete in the path.", param="athlete_id")
    with deps.db.session() as s:
        row, _ = _upsert_wellness(s, tenant_id, repo.athlete(s, tenant_id, athlete_id), body)
        return wellness_out(row, athlete_id)


def list_workouts(deps: CoachDeps, tenant_id: str, athlete_id: str, start: dt.date, end: dt.date,
                  include_removed: bool = False) -> list[dict[str, Any]]:
    statuses = ("planned", "completed", "removed") if include_removed else ("planned", "completed")
    with deps.db.session() as s:
        athlete = repo.athlete(s, tenant_id, athlete_id)
        return [workout_out(w, athlete_id) for w in repo.workouts_between(s, athlete.id, start, end, statuses)]


# -- load and state ----------------------------------------------------------------------------


MAX_LOAD_DAYS = 3650
"""The longest load history a request shows (``GET …/load?days=``)."""
LOAD_WINDOW_DAYS = MAX_LOAD_DAYS + 365
"""Days of training up to today that the load model reads: the longest history shown, plus a year
for CTL (a 42-day average) to settle; training before that weighs less than 0.02 % today. However
far back an athlete's workouts go, a request costs at most this many days of computing."""


def _load_series(s: Session, athlete: Athlete, today: dt.date) -> list[LoadPoint]:
    daily: dict[dt.date, float] = {}
    for w in repo.completed_between(s, athlete.id, today - dt.timedelta(days=LOAD_WINDOW_DAYS), today):
        daily[w.date] = daily.get(w.date, 0.0) + w.tss
    return compute_load(daily, until=today)


def _today_point(series: list[LoadPoint], today: dt.date) -> LoadPoint:
    if series and series[-1].day == today:
        return series[-1]
    return LoadPoint(day=today, tss=0.0, ctl=0.0, atl=0.0, tsb=0.0, ramp=0.0)


def load_metrics(deps: CoachDeps, tenant_id: str, athlete_id: str, today: dt.date | None,
                 days: int = 42) -> dict[str, Any]:
    if not 1 <= days <= MAX_LOAD_DAYS:
        raise InvalidArgument(f"days must be between 1 and {MAX_LOAD_DAYS}.", param="days")
    day = today_or(today)
    with deps.db.session() as s:
        athlete = repo.athlete(s, tenant_id, athlete_id)
        series = _load_series(s, athlete, day)
    start = day - dt.timedelta(days=days - 1)
    return {"object": "coach.load", "athlete_id": athlete_id, "today": point_out(_today_point(series, day)),
            "points": [point_out(p) for p in series if p.day >= start]}


@dataclass
class Snapshot:
    """Everything the rules and the context builder need about an athlete today."""

    athlete: Athlete
    today: dt.date
    state: AthleteState
    series: list[LoadPoint]
    plan: list[PlannedWorkout]  # planned workouts from a week ago to four weeks ahead
    history: list[Day]
    wellness_today: Wellness | None


def _planned(w: Workout) -> PlannedWorkout:
    return PlannedWorkout(id=w.external_id, date=w.date, sport=w.sport, type=w.type,  # type: ignore[arg-type]
                          zone=w.zone, duration_min=w.duration_min, tss=w.tss, key_session=w.key_session)


def _snapshot(s: Session, deps: CoachDeps, athlete: Athlete, today: dt.date) -> Snapshot:
    series = _load_series(s, athlete, today)
    point = _today_point(series, today)
    baseline_days = deps.settings.hrv_baseline_days
    days = repo.wellness_between(s, athlete.id, today - dt.timedelta(days=max(baseline_days, 14)), today)
    recent = [d for d in days if (today - d.date).days <= WELLNESS_MAX_AGE_DAYS]
    latest = recent[-1] if recent else None
    baseline = athlete.hrv_baseline_ms
    if baseline is None:
        past = [d.hrv_ms for d in days if d.hrv_ms is not None and 1 <= (today - d.date).days <= baseline_days]
        baseline = sum(past) / len(past) if past else None
    hrv_drop = 0.0
    if baseline and latest is not None and latest.hrv_ms is not None:
        hrv_drop = max(0.0, round((baseline - latest.hrv_ms) / baseline * 100, 1))
    state = AthleteState(
        ctl=point.ctl, atl=point.atl, tsb=point.tsb, ramp=point.ramp,
        sleep_hours=latest.sleep_hours if latest is not None and latest.sleep_hours is not None
        else DEFAULT_SLEEP_HOURS,
        soreness=latest.soreness if latest is not None and latest.soreness is not None else DEFAULT_SORENESS,
        hrv_drop_pct=hrv_drop, ill_or_injured=athlete.ill_or_injured,
        days_to_race=(athlete.goal_date - today).days if athlete.goal_date and athlete.goal_date >= today else None)
    rows = repo.workouts_between(s, athlete.id, today - dt.timedelta(days=14),
                                 today + dt.timedelta(days=PLAN_HORIZON_DAYS))
    plan = [_planned(w) for w in rows if w.status == "planned" and w.date >= today - dt.timedelta(days=7)]
    done: dict[dt.date, list[DoneWorkout]] = {}
    for w in rows:
        if w.status == "completed" and w.date < today:
            done.setdefault(w.date, []).append(DoneWorkout(sport=w.sport, type=w.type, zone=w.zone,
                                                           duration_min=w.duration_min, tss=w.tss))
    feel = {d.date: d for d in days}
    history: list[Day] = []
    for back in range(14, 0, -1):
        day = today - dt.timedelta(days=back)
        wellness = feel.get(day)
        history.append(Day(day=day, workouts=tuple(done.get(day, ())),
                           sleep_hours=wellness.sleep_hours if wellness else None,
                           soreness=wellness.soreness if wellness else None,
                           hrv_ms=wellness.hrv_ms if wellness else None,
                           resting_hr=wellness.resting_hr if wellness else None,
                           rpe=wellness.rpe if wellness else None,
                           notes=wellness.notes if wellness else ""))
    return Snapshot(athlete=athlete, today=today, state=state, series=series, plan=plan, history=history,
                    wellness_today=feel.get(today))


def _week(snap: Snapshot) -> list[PlannedWorkout]:
    end = snap.today + dt.timedelta(days=7)
    return [w for w in snap.plan if snap.today <= w.date < end]


def state_out(snap: Snapshot, deps: CoachDeps) -> dict[str, Any]:
    st = snap.state
    return {"ctl": round(st.ctl, 1), "atl": round(st.atl, 1), "tsb": round(st.tsb, 1), "ramp": round(st.ramp, 1),
            "sleep_hours": st.sleep_hours, "soreness": st.soreness, "hrv_drop_pct": st.hrv_drop_pct,
            "ill_or_injured": st.ill_or_injured, "days_to_race": st.days_to_race,
            "branch": classify_state(st, deps.config)}


# -- checking operations -----------------------------------------------------------------------


def _verdicts(mod: Modification, accepted: list[int], violations: list[RuleViolation]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, op in enumerate(mod.operations):
        mine = [{"rule": v.rule, "message": v.message} for v in violations if v.operation_index == index]
        out.append({"index": index, "operation": json.loads(op.model_dump_json()), "accepted": index in accepted,
                    "violations": mine})
    return out


def _check(s: Session, snap: Snapshot, mod: Modification,
           config: RuleConfig) -> tuple[list[int], list[RuleViolation], list[PlannedWorkout]]:
    """Accepted operation indices, violations, and the plan the rules judged (with every workout named)."""
    named = repo.workouts_by_external_id(s, snap.athlete.id, (op.workout_id for op in mod.operations))
    plan = {w.id: w for w in snap.plan}
    early: list[RuleViolation] = []
    for index, op in enumerate(mod.operations):
        row = named.get(op.workout_id)
        if row is None or row.status == "removed":
            why = "was removed" if row is not None else "does not exist"
            early.append(RuleViolation(UNKNOWN_WORKOUT, index, f"workout {op.workout_id!r} {why}"))
        elif row.status == "completed":
            early.append(RuleViolation(PAST_WORKOUT, index, f"workout {op.workout_id} is already completed"))
        elif row.external_id not in plan:
            plan[row.external_id] = _planned(row)
    upcoming = sorted(plan.values(), key=lambda w: (w.date, w.id))
    accepted, violations = partition_operations(mod, snap.state, upcoming, snap.today, config=config,
                                                rejected=early)
    return accepted, violations, upcoming


def _weekly(upcoming: list[PlannedWorkout], mod: Modification, accepted: list[int], today: dt.date,
            config: RuleConfig) -> dict[str, float]:
    subset = Modification(operations=[mod.operations[i] for i in accepted], message=mod.message)
    return {"before": weekly_tss(upcoming, today, config),
            "after": weekly_tss(apply_modification(upcoming, subset), today, config)}


# -- recommend ---------------------------------------------------------------------------------


def prompt_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_REASONS: dict[str, str] = {"NotFound": "model_not_found", "Unavailable": "model_unavailable"}


def _principles(deps: CoachDeps, tenant_id: str, knowledge_base: str, snap: Snapshot,
                question: str | None) -> tuple[list[Principle], str]:
    """The training principles found for the athlete's readiness and question, best first, and the
    search's outcome (``found``, ``empty``, ``not_found``, ``unavailable`` or ``error``); a search
    that cannot be made gives none (the recommendation goes on without them)."""
    settings = deps.settings
    outcome = "unavailable"
    if deps.knowledge is not None:
        query = principles_query(snap.state, question, deps.config)
        try:
            found = deps.knowledge.search(tenant_id, knowledge_base, query, top_k=settings.knowledge_top_k,
                                          max_tokens=settings.knowledge_max_tokens,
                                          timeout=settings.knowledge_timeout_s)
        except NotFound:
            outcome = "not_found"
        except Unavailable:
            outcome = "unavailable"
        except CoachForgeError:
            outcome = "error"
        else:
            return found, "found" if found else "empty"
    log.warning("no principles for the context", tenant=tenant_id, knowledge_base=knowledge_base, outcome=outcome)
    return [], outcome


def recommend(deps: CoachDeps, tenant_id: str, athlete_id: str, body: RecommendIn) -> dict[str, Any]:
    """Ask the model for a modification constrained to the schema, check it against the rules, and
    fall back to the rule-based coach (marked ``source: "rules"``) when the model is unavailable
    or its answer unusable. Nothing is changed; the recommendation is stored for apply.

    Three steps, so that no database connection is held while other services answer (a model call
    takes seconds; holding a pooled connection, and on SQLite a transaction, through it starves
    the pool under load): the athlete's data is read in one short transaction; the registry and
    the model are asked with no session open; the answer is checked and the recommendation written
    in a second transaction. The check there reads the workouts the answer names as they are then,
    so a workout completed or removed meanwhile is rejected, not proposed (apply checks again).

    With a knowledge base (the request's ``knowledge_base``, else the coach's setting), training
    principles found for the athlete's readiness and question lead the context within its token
    budget (:func:`polarize.context.build_context`); ``knowledge`` in the answer says which, or why
    none (a search that fails never fails the recommendation)."""
    settings = deps.settings
    today = today_or(body.today)
    model = body.model or settings.default_model
    budget = body.token_budget or settings.token_budget
    with deps.db.session() as s:
        athlete = repo.athlete(s, tenant_id, athlete_id)
        snap = _snapshot(s, deps, athlete, today)

    # No session from here to the second transaction: the registry and the model are remote.
    fallback: dict[str, str] | None = None
    answer: dict[str, Any] | None = None
    answered_by = ""
    base = settings.default_base_model
    known_model = False  # the registry knows ``model``; else it is a client's string: no label, no log value
    if deps.models is None:
        fallback = {"reason": "model_unavailable", "message": "No inference service is configured."}
    else:
        try:
            base = deps.models.base_model(tenant_id, model)
            known_model = True
        except CoachForgeError as err:
            fallback = {"reason": _REASONS.get(type(err).__name__, "model_error"), "message": err.message}
    count, tokenizer = token_counter(deps.models_dir, base)
    profile = Profile(name=athlete.name, sport=athlete.sport, plan_name=athlete.plan_name,
                      plan_phase=athlete.plan_phase, goal=athlete.goal, goal_date=athlete.goal_date)
    knowledge_base = settings.knowledge_base if body.knowledge_base is None else body.knowledge_base or None
    principles: list[Principle] = []
    knowledge_status = "off"
    if knowledge_base:
        principles, knowledge_status = _principles(deps, tenant_id, knowledge_base, snap, body.question)
    ctx = build_context(state=snap.state, upcoming=_week(snap), today=today, count_tokens=count, budget=budget,
                        profile=profile, history=snap.history, load=snap.series, question=body.question,
                        config=deps.config, principles=[p.text for p in principles])
    used = principles[: ctx.principles]
    if knowledge_status == "found":
        knowledge_status = "used" if used else "dropped"
    if knowledge_base:
        PRINCIPLES.labels(tenant_id, knowledge_status).inc()
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": ctx.text}]
    digest = prompt_hash(messages)
    if fallback is None and not ctx.fits:
        fallback = {"reason": "context_over_budget",
                    "message": f"The minimal context needs {ctx.tokens} tokens; the budget is {budget}."}

    rec_id = new_id("rec")
    completion_id: str | None = None
    proposal: Modification | None = None
    if fallback is None and deps.models is not None:
        try:
            ids = [w.id for w in _week(snap)]
            reply = deps.models.chat(tenant_id, model, messages, response_format=response_format(ids),
                                     max_tokens=settings.max_answer_tokens, temperature=settings.temperature,
                                     seed=settings.seed, timeout=settings.inference_timeout_s,
                                     store_metadata={"source": "coach", "athlete": athlete_id,
                                                     "recommendation": rec_id})
        except CoachForgeError as err:
            fallback = {"reason": _REASONS.get(type(err).__name__, "model_error"), "message": err.message}
        else:
            answered_by = reply.model
            completion_id = reply.id or None
            answer = {"valid": False, "error": None, "content": reply.content[:4000],
                      "finish_reason": reply.finish_reason}
            try:
                proposal = parse_modification(reply.content)
            except InvalidModification as err:
                answer["error"] = str(err)
                fallback = {"reason": "invalid_answer", "message": str(err)}
            else:
                answer["valid"] = True

    with deps.db.session() as s:
        verdict: tuple[list[int], list[RuleViolation], list[PlannedWorkout]] | None = None
        if fallback is None and proposal is not None:
            verdict = _check(s, snap, proposal, deps.config)
            if proposal.operations and not verdict[0]:
                fallback = {"reason": "rejected_by_rules",
                            "message": "Every operation the model proposed broke a safety rule."}
        model_label = model if known_model else OTHER_MODEL
        if fallback is not None:
            FALLBACKS.labels(tenant_id, model_label, fallback["reason"]).inc()
            log.info("rule-based fallback", tenant=tenant_id, model=model_label, reason=fallback["reason"])
            proposal = rule_based(snap.state, _week(snap), today, config=deps.config)
            verdict = _check(s, snap, proposal, deps.config)
        assert proposal is not None and verdict is not None
        accepted, violations, upcoming = verdict
        source = "rules" if fallback is not None else "model"
        RECOMMENDATIONS.labels(tenant_id, model_label, source).inc()
        rec = Recommendation(id=rec_id, tenant_id=tenant_id, athlete_id=athlete.id, source=source,
                             model=(answered_by or model) if source == "model" else "", prompt_hash=digest,
                             modification_json=proposal.to_json(),
                             completion_id=completion_id if source == "model" else None)
        s.add(rec)
        s.flush()
        return {
            "object": "coach.recommendation", "id": rec.id, "athlete_id": athlete_id, "created_at": to_unix(
                rec.created_at), "today": today.isoformat(), "source": source, "fallback": fallback, "model": model,
            "answered_by": answered_by or None, "completion_id": rec.completion_id,
            "schema_version": SCHEMA_VERSION, "prompt_hash": digest,
            "context": {"text": ctx.text, "tokens": ctx.tokens, "budget": ctx.budget, "level": ctx.level,
                        "fits": ctx.fits, "tokenizer": tokenizer},
            "knowledge": {"knowledge_base": knowledge_base, "status": knowledge_status, "found": len(principles),
                          "chunk_ids": [p.chunk_id for p in used]},
            "state": state_out(snap, deps),
            "modification": json.loads(proposal.to_json()),
            "operations": _verdicts(proposal, accepted, violations),
            "weekly_tss": _weekly(upcoming, proposal, accepted, today, deps.config),
            "model_answer": answer,
        }


# -- apply / undo ------------------------------------------------------------------------------


def _snap_of(w: Workout) -> dict[str, Any]:
    return {"id": w.id, "external_id": w.external_id, "status": w.status, "date": w.date.isoformat(),
            "sport": w.sport, "type": w.type, "zone": w.zone, "duration_min": w.duration_min, "tss": w.tss,
            "key_session": w.key_session, "version": w.version}


def _request_hash(body: ApplyIn) -> str:
    doc = {"recommendation_id": body.recommendation_id, "modification": body.modification}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _modification(body: ApplyIn) -> Modification:
    try:
        return Modification.model_validate(body.modification)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        param = f"modification.{loc}" if loc else "modification"
        raise InvalidArgument(f"Invalid modification: {param}: {first['msg']}", param=param,
                              code="invalid_modification") from None


def apply(deps: CoachDeps, tenant_id: str, actor: str, athlete_id: str, body: ApplyIn) -> dict[str, Any]:
    """Check every operation again, apply the accepted ones in one transaction with an audit row,
    and return the change with the verdict on every operation. A repeated request id returns the
    first result (``replayed: true``); reused with different content it is a conflict."""
    if (body.recommendation_id is None) == (body.modification is None):
        raise InvalidArgument("Give exactly one of recommendation_id and modification.",
                              param="modification" if body.modification is None else "recommendation_id")
    given = _modification(body) if body.modification is not None else None
    digest = _request_hash(body)
    today = today_or(body.today)
    completion_id: str | None = None
    outcome_id: str | None = None
    try:
        with deps.db.session() as s:
            athlete = repo.athlete(s, tenant_id, athlete_id, lock=True)  # serialises applies per athlete
            earlier = repo.change_by_request(s, tenant_id, body.request_id)
            if earlier is not None:
                return _replay(earlier, digest, athlete_id)
            if given is not None:
                mod, source, model, p_hash, rec_id = given, "client", "", "", None
            else:
                assert body.recommendation_id is not None
                rec = repo.recommendation(s, tenant_id, athlete.id, body.recommendation_id)
                mod, source, model, p_hash, rec_id = (Modification.model_validate_json(rec.modification_json),
                                                      rec.source, rec.model, rec.prompt_hash, rec.id)
                completion_id = rec.completion_id
            snap = _snapshot(s, deps, athlete, today)
            accepted, violations, _ = _check(s, snap, mod, deps.config)
            rows = repo.workouts_by_external_id(s, athlete.id, (mod.operations[i].workout_id for i in accepted))
            before: list[dict[str, Any]] = []
            after: list[dict[str, Any]] = []
            for index in accepted:
                op = mod.operations[index]
                row = rows[op.workout_id]
                before.append(_snap_of(row))
                new = apply_operation(_planned(row), op)
                if new is None:
                    row.status = "removed"
                else:
                    row.date, row.type, row.zone = new.date, new.type, new.zone
                    row.duration_min, row.tss, row.key_session = new.duration_min, new.tss, new.key_session
                row.version += 1
                row.updated_at = utcnow()
                after.append(_snap_of(row))
            for v in violations:
                OPERATIONS.labels(tenant_id, "rejected", v.rule).inc()
            OPERATIONS.labels(tenant_id, "accepted", "").inc(len(accepted))
            change = PlanChange(
                id=new_id("chg"), tenant_id=tenant_id, athlete_id=athlete.id, request_id=body.request_id,
                request_hash=digest, recommendation_id=rec_id, source=source, model=model, prompt_hash=p_hash,
                modification_json=mod.to_json(), accepted_json=json.dumps(accepted),
                rejected_json=json.dumps([{"index": v.operation_index, "rule": v.rule, "message": v.message}
                                          for v in violations]),
                before_json=json.dumps(before), after_json=json.dumps(after),
                status="applied" if accepted else "rejected", actor=actor)
            s.add(change)
            s.flush()
            if accepted:
                CHANGES.labels(tenant_id, "applied").inc()
                if rec_id is not None and completion_id is not None:  # the model's answer was acted on
                    outcome_id = outcomes.keep(s, tenant_id=tenant_id, recommendation_id=rec_id,
                                               completion_id=completion_id, rater=OUTCOME_RATER,
                                               rating=OUTCOMES["applied"], comment="applied").id
            out = change_out(change, athlete_id)
    except IntegrityError:
        # The same request id committed concurrently (a database without row locks): answer with it.
        with deps.db.session() as s:
            earlier = repo.change_by_request(s, tenant_id, body.request_id)
            if earlier is None:
                raise
            return _replay(earlier, digest, athlete_id)
    record_outcome(deps, outcome_id)  # committed with the change
    return out


def record_outcome(deps: CoachDeps, outcome_id: str | None) -> None:
    """Send an outcome kept with what it reports (:func:`coachforge_coach.outcomes.keep`) as
    feedback on the recommendation's stored completion. Never fails the caller: when the completion
    is not stored yet (it is written from an event) or inference is away, the outcome stays kept and
    is sent later (see :mod:`coachforge_coach.outcomes`)."""
    if outcome_id is None:
        return
    try:
        outcomes.deliver(deps, outcome_id)
    except Exception as err:  # e.g. the database went away after the commit: the retrier sends it
        log.warning("outcome feedback not sent now; kept for later", outcome_id=outcome_id, error=str(err))


def record_athlete_outcome(deps: CoachDeps, tenant_id: str, recommendation_id: str, followed: bool,
                           comment: str | None) -> dict[str, Any]:
    """Whether the athlete followed a recommendation, as feedback of rater
    :data:`~coachforge_coach.outcomes.ATHLETE_RATER` on its stored completion (followed: 5, not
    followed: 2), replacing the athlete's earlier answer; kept and sent like apply/undo outcomes.
    A recommendation the rules answered has no completion: the answer is kept (feedback "none")."""
    with deps.db.session() as s:
        rec = repo.recommendation_by_id(s, tenant_id, recommendation_id)
        row = outcomes.keep(s, tenant_id=tenant_id, recommendation_id=rec.id, completion_id=rec.completion_id,
                            rater=outcomes.ATHLETE_RATER, rating=outcomes.FOLLOWED_RATING[followed],
                            comment=comment or ("followed" if followed else "not followed"), followed=followed)
        outcome_id = row.id
    record_outcome(deps, outcome_id)
    with deps.db.session() as s:
        found = s.get(CoachOutcome, outcome_id, populate_existing=True)
        assert found is not None
        return outcomes.outcome_out(found)


def list_outcomes(deps: CoachDeps, tenant_id: str, recommendation_id: str) -> list[dict[str, Any]]:
    """The recommendation's outcomes (one per rater) and where their feedback stands."""
    with deps.db.session() as s:
        rec = repo.recommendation_by_id(s, tenant_id, recommendation_id)
        return [outcomes.outcome_out(o) for o in outcomes.outcomes_of(s, rec.id)]


def _replay(earlier: PlanChange, digest: str, athlete_id: str) -> dict[str, Any]:
    if earlier.request_hash != digest:
        raise Conflict(f"request_id {earlier.request_id!r} was already used for a different change.",
                       param="request_id", code="request_id_reused")
    out = change_out(earlier, athlete_id)
    out["replayed"] = True
    return out


def undo(deps: CoachDeps, tenant_id: str, actor: str, change_id: str) -> dict[str, Any]:
    """Restore every workout the change touched, in one transaction; refused when any of them was
    changed since (its version moved on). Undoing an undone change returns it unchanged."""
    outcome_id: str | None = None
    with deps.db.session() as s:
        change = repo.change(s, tenant_id, change_id)
        athlete = s.get(Athlete, change.athlete_id, with_for_update=True)
        assert athlete is not None
        s.refresh(change)
        if change.status == "undone":
            return change_out(change, athlete.external_id)
        if change.status != "applied":
            raise FailedPrecondition(f"Change {change_id} applied nothing; there is nothing to undo.",
                                     param="change_id", code="nothing_to_undo")
        before = {w["id"]: w for w in json.loads(change.before_json)}
        after = json.loads(change.after_json)
        rows: list[tuple[Workout, dict[str, Any]]] = []
        for snap in after:
            row = s.get(Workout, snap["id"], with_for_update=True)
            if row is None or row.version != snap["version"]:
                raise FailedPrecondition(
                    f"Workout {snap['external_id']} was changed after change {change_id}; it cannot be undone.",
                    param="change_id", code="workout_changed")
            rows.append((row, before[snap["id"]]))
        for row, old in rows:
            row.status, row.date, row.type, row.zone = (old["status"], dt.date.fromisoformat(old["date"]),
                                                        old["type"], old["zone"])
            row.duration_min, row.tss, row.key_session = old["duration_min"], old["tss"], old["key_session"]
            row.version += 1
            row.updated_at = utcnow()
        change.status, change.undone_at, change.undone_by = "undone", utcnow(), actor
        CHANGES.labels(tenant_id, "undone").inc()
        if change.recommendation_id is not None:
            rec = s.get(Recommendation, change.recommendation_id)
            if rec is not None and rec.completion_id is not None:
                outcome_id = outcomes.keep(s, tenant_id=tenant_id, recommendation_id=rec.id,
                                           completion_id=rec.completion_id, rater=OUTCOME_RATER,
                                           rating=OUTCOMES["undone"], comment="undone").id
        out = change_out(change, athlete.external_id)
    record_outcome(deps, outcome_id)
    return out


def history(deps: CoachDeps, tenant_id: str, athlete_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    size = limit or deps.settings.history_limit
    if not 1 <= size <= 1000:
        raise InvalidArgument("limit must be between 1 and 1000.", param="limit")
    with deps.db.session() as s:
        athlete = repo.athlete(s, tenant_id, athlete_id)
        return [change_out(c, athlete_id) for c in repo.changes(s, tenant_id, athlete.id, size)]


def get_change(deps: CoachDeps, tenant_id: str, change_id: str) -> dict[str, Any]:
    with deps.db.session() as s:
        change = repo.change(s, tenant_id, change_id)
        athlete = s.get(Athlete, change.athlete_id)
        if athlete is None:  # pragma: no cover - cascades keep them together
            raise NotFound(f"No change {change_id!r}.", param="change_id")
        return change_out(change, athlete.external_id)


# -- serialisation -----------------------------------------------------------------------------


def athlete_out(a: Athlete) -> dict[str, Any]:
    return {"object": "coach.athlete", "external_id": a.external_id, "name": a.name, "sport": a.sport,
            "ill_or_injured": a.ill_or_injured, "hrv_baseline_ms": a.hrv_baseline_ms,
            "plan": {"name": a.plan_name, "phase": a.plan_phase, "goal": a.goal,
                     "goal_date": a.goal_date.isoformat() if a.goal_date else None}}


def workout_out(w: Workout, athlete_id: str) -> dict[str, Any]:
    return {"object": "coach.workout", "external_id": w.external_id, "athlete_id": athlete_id, "status": w.status,
            "date": w.date.isoformat(), "sport": w.sport, "type": w.type, "zone": w.zone,
            "duration_min": w.duration_min, "tss": w.tss, "key_session": w.key_session, "notes": w.notes,
            "version": w.version}


def wellness_out(d: Wellness, athlete_id: str) -> dict[str, Any]:
    return {"object": "coach.wellness", "athlete_id": athlete_id, "date": d.date.isoformat(),
            "sleep_hours": d.sleep_hours, "soreness": d.soreness, "hrv_ms": d.hrv_ms, "resting_hr": d.resting_hr,
            "rpe": d.rpe, "notes": d.notes}


def point_out(p: LoadPoint) -> dict[str, Any]:
    return {"date": p.day.isoformat(), "tss": round(p.tss, 1), "ctl": round(p.ctl, 2), "atl": round(p.atl, 2),
            "tsb": round(p.tsb, 2), "ramp": round(p.ramp, 2)}


def change_out(c: PlanChange, athlete_id: str) -> dict[str, Any]:
    mod = Modification.model_validate_json(c.modification_json)
    accepted: list[int] = json.loads(c.accepted_json)
    rejected = [RuleViolation(v["rule"], v["index"], v["message"]) for v in json.loads(c.rejected_json)]
    return {"object": "coach.change", "id": c.id, "athlete_id": athlete_id, "request_id": c.request_id,
            "status": c.status, "source": c.source, "model": c.model or None, "prompt_hash": c.prompt_hash or None,
            "recommendation_id": c.recommendation_id, "modification": json.loads(c.modification_json),
            "operations": _verdicts(mod, accepted, rejected), "before": json.loads(c.before_json),
            "after": json.loads(c.after_json), "actor": c.actor, "created_at": to_unix(c.created_at),
            "undone_at": to_unix(c.undone_at) if c.undone_at else None, "replayed": False}
