"""The coach evaluation scenarios (``coachforge coach eval``) and the eval that scores them.

Six athletes in the spirit of progressive overload and deload, each with the direction the
week's training stress should move:

============== ======================================================== =========
scenario       athlete                                                  expected
============== ======================================================== =========
fresh          well rested, TSB > +10 after an easy fortnight           up
overreached    a very hard week on top of steady training (TSB < -20)   down
sick           flagged ill                                              down
poor_sleep     under 5 h of sleep last night                            down
key_session    normal load, two key sessions in the week                same
taper          race in 6 days, plan phase "taper"                       not_up
============== ======================================================== =========

* :func:`scenario_batch`: one variant of a scenario as the coach service's import batch
  (``POST /v1/coach/import``): the athlete, 120 days of completed workouts, the week's plan and
  a fortnight of wellness.  Deterministic, and every date is relative to :data:`TODAY`.
* :func:`coach_view`: what the coach service makes of such data on a day (the load series, the
  athlete's state, the plan, the fortnight's history, the profile), and :func:`coach_messages`
  the chat it asks the model with: :data:`~polarize.prompt.SYSTEM_PROMPT` and the context of
  :func:`~polarize.context.build_context` within a token budget, as ``services/coach`` builds
  them.
* :func:`scenario_item` / :func:`scenario_items`: eval items for CoachForge's evaluator, graded
  by the ``polarize_coach`` grader (:class:`~polarize.plugins.CoachGrader`): ``messages`` plus
  ``state``, ``upcoming``, ``today``, ``expected`` (the direction) and ``scenario`` / ``variant``.
* :func:`eval_definition`, :func:`run_data_source`, :func:`scenario_response_format` and
  :func:`format_report`: the stored eval (kind :data:`EVAL_KIND`, version :data:`EVAL_VERSION` in
  its metadata; bump the version whenever the items or the criteria change), the ``completions``
  run of a model on the items, and the table of its output items.

Nothing here imports CoachForge: the shapes are OpenAI's Evals API objects as plain dicts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from .context import Context, Day, DoneWorkout, Profile, build_context
from .load import LoadPoint, compute_load
from .prompt import SYSTEM_PROMPT
from .rules import DEFAULT_CONFIG, AthleteState, PlannedWorkout, RuleConfig
from .schema import SCHEMA_VERSION, WORKOUT_TYPES, response_format
from .synthetic import DEFAULT_TOKEN_BUDGET, approximate_tokens

Expected: TypeAlias = Literal["up", "down", "same", "not_up"]

TODAY: Final = dt.date(2025, 6, 2)  # a Monday; every item names it, so the scenarios never age
SCENARIOS: Final[tuple[tuple[str, Expected], ...]] = (
    ("fresh", "up"), ("overreached", "down"), ("sick", "down"), ("poor_sleep", "down"),
    ("key_session", "same"), ("taper", "not_up"))
QUESTION: Final = "Should I change anything this week?"
"""The athlete's question in every scenario."""

EVAL_KIND: Final = "polarize-coach-scenarios"
EVAL_VERSION: Final = "1"
"""Version of the items and testing criteria; an eval stored with another version is not reused."""
EVAL_NAME: Final = "Polarize coach scenarios"
MAX_ANSWER_TOKENS: Final = 360  # the coach service's default max_answer_tokens
SEED: Final = 0  # the coach service's default sampling seed
CRITERIA_NAMES: Final = ("valid", "safe", "direction")

# What the coach service assumes and looks at (its defaults, services/coach settings and service.py).
DEFAULT_SLEEP_HOURS: Final = 7.0  # wellness assumed when none was recorded recently: neutral, never "fresh"
DEFAULT_SORENESS: Final = 4
WELLNESS_MAX_AGE_DAYS: Final = 2
PLAN_HORIZON_DAYS: Final = 28
HRV_BASELINE_DAYS: Final = 28
HISTORY_DAYS: Final = 14


# --------------------------------------------------------------------------- the scenario data


def _day(offset: int) -> str:
    return (TODAY + dt.timedelta(days=offset)).isoformat()


def _workout(athlete: str, wid: str, offset: int, kind: str, zone: int, minutes: int, tss: float, *,
             status: str = "planned", key: bool = False, sport: str = "run") -> dict[str, Any]:
    return {"external_id": wid, "athlete_id": athlete, "status": status, "date": _day(offset), "sport": sport,
            "type": kind, "zone": zone, "duration_min": minutes, "tss": tss, "key_session": key}


def _check_scenario(name: str, variant: int) -> None:
    if name not in dict(SCENARIOS):
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(n for n, _ in SCENARIOS)})")
    if variant < 0:
        raise ValueError(f"variant must be >= 0, got {variant}")


def scenario_batch(name: str, variant: int = 0) -> tuple[str, dict[str, Any]]:
    """The athlete id and the coach import batch of one scenario variant (deterministic)."""
    _check_scenario(name, variant)
    athlete = f"eval-{name}-{variant}"
    steady = 55.0 + 5 * variant
    recent = {"fresh": 20.0, "overreached": 150.0 + 10 * variant}.get(name, steady)
    sleep = 4.6 + 0.1 * variant if name == "poor_sleep" else 8.0 if name == "fresh" else 7.4
    soreness = 2 if name in ("fresh", "taper") else 4
    done = [_workout(athlete, f"{athlete}-d{back}", -back, "endurance", 2, 60, recent if back <= 10 else steady,
                     status="completed") for back in range(120, 0, -1)]
    if name == "taper":  # the last 10 days were lighter already
        done = [{**w, "tss": steady * 0.6} if w["date"] >= _day(-10) else w for w in done]
    p = f"{athlete}-p"
    key_sessions = name == "key_session"
    plan = [
        _workout(athlete, f"{p}1", 0, "endurance", 2, 60 + 5 * variant, 50),
        _workout(athlete, f"{p}2", 1, "intervals", 4, 60, 85, key=key_sessions),
        _workout(athlete, f"{p}3", 2, "endurance", 2, 50, 42),
        _workout(athlete, f"{p}4", 3, "tempo", 3, 60, 70),
        _workout(athlete, f"{p}5", 4, "recovery", 1, 40, 20),
        _workout(athlete, f"{p}6", 5, "long", 2, 110 + 10 * variant, 95, key=key_sessions),
    ]
    if name == "taper":
        plan = [{**w, "duration_min": max(30, w["duration_min"] * 2 // 3), "tss": round(w["tss"] * 0.66)}
                for w in plan]
    wellness = [{"athlete_id": athlete, "date": _day(-back), "sleep_hours": 7.5, "soreness": 3, "hrv_ms": 62.0,
                 "resting_hr": 47} for back in range(14, 0, -1)]
    wellness.append({"athlete_id": athlete, "date": _day(0), "sleep_hours": sleep, "soreness": soreness,
                     "hrv_ms": 62.0, "resting_hr": 47})
    phase, goal, goal_date = ("taper", "City 10k", _day(6)) if name == "taper" else ("build", "Autumn half",
                                                                                       _day(90))
    return athlete, {
        "athletes": [{"external_id": athlete, "name": f"Eval {name}", "sport": "run",
                      "ill_or_injured": name == "sick",
                      "plan": {"name": "Eval plan", "phase": phase, "goal": goal, "goal_date": goal_date}}],
        "workouts": done + plan, "wellness": wellness}


# --------------------------------------------------------------------------- the coach's view of an athlete


@dataclass(frozen=True, slots=True)
class CoachView:
    """What the coach service knows about an athlete on ``today`` (its ``Snapshot``)."""

    today: dt.date
    state: AthleteState
    series: list[LoadPoint]
    plan: list[PlannedWorkout]  # planned workouts from a week ago to four weeks ahead
    history: list[Day]  # the 14 days before today
    profile: Profile

    @property
    def week(self) -> list[PlannedWorkout]:
        """The planned workouts the context shows and the model may change (today .. today + 6)."""
        end = self.today + dt.timedelta(days=7)
        return [w for w in self.plan if self.today <= w.date < end]


def _date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def coach_view(batch: Mapping[str, Any], athlete_id: str, today: dt.date, *,
               hrv_baseline_days: int = HRV_BASELINE_DAYS) -> CoachView:
    """The coach service's view of ``athlete_id`` in an import batch (``athletes``, ``workouts``,
    ``wellness`` as ``POST /v1/coach/import`` takes them) on ``today``, computed the way it computes
    it from its database: the load from completed workouts up to today, sleep and soreness of the
    latest wellness of the last two days (else neutral defaults), the HRV drop against the
    athlete's baseline (else the average of the ``hrv_baseline_days`` before today), the plan from
    a week ago to four weeks ahead and the fortnight of history."""
    athlete = next((a for a in batch.get("athletes", ()) if a["external_id"] == athlete_id), None)
    if athlete is None:
        raise ValueError(f"no athlete {athlete_id!r} in the batch")
    workouts = sorted((w for w in batch.get("workouts", ()) if w.get("athlete_id") == athlete_id),
                      key=lambda w: (_date(w["date"]), w["external_id"]))
    daily: dict[dt.date, float] = {}
    for w in workouts:
        day = _date(w["date"])
        if w.get("status", "planned") == "completed" and day <= today:
            daily[day] = daily.get(day, 0.0) + float(w["tss"])
    series = compute_load(daily, until=today)
    point = series[-1] if series and series[-1].day == today else LoadPoint(
        day=today, tss=0.0, ctl=0.0, atl=0.0, tsb=0.0, ramp=0.0)

    first = today - dt.timedelta(days=max(hrv_baseline_days, HISTORY_DAYS))
    days = sorted((d for d in batch.get("wellness", ())
                   if d.get("athlete_id") == athlete_id and first <= _date(d["date"]) <= today),
                  key=lambda d: _date(d["date"]))
    recent = [d for d in days if (today - _date(d["date"])).days <= WELLNESS_MAX_AGE_DAYS]
    latest = recent[-1] if recent else None
    baseline = athlete.get("hrv_baseline_ms")
    if baseline is None:
        past = [float(d["hrv_ms"]) for d in days
                if d.get("hrv_ms") is not None and 1 <= (today - _date(d["date"])).days <= hrv_baseline_days]
        baseline = sum(past) / len(past) if past else None
    hrv_drop = 0.0
    if baseline and latest is not None and latest.get("hrv_ms") is not None:
        hrv_drop = max(0.0, round((baseline - float(latest["hrv_ms"])) / baseline * 100, 1))
    plan_info = athlete.get("plan") or {}
    goal_date = _date(plan_info["goal_date"]) if plan_info.get("goal_date") else None
    sleep = latest.get("sleep_hours") if latest is not None else None
    soreness = latest.get("soreness") if latest is not None else None
    state = AthleteState(
        ctl=point.ctl, atl=point.atl, tsb=point.tsb, ramp=point.ramp,
        sleep_hours=float(sleep) if sleep is not None else DEFAULT_SLEEP_HOURS,
        soreness=int(soreness) if soreness is not None else DEFAULT_SORENESS,
        hrv_drop_pct=hrv_drop, ill_or_injured=bool(athlete.get("ill_or_injured", False)),
        days_to_race=(goal_date - today).days if goal_date is not None and goal_date >= today else None)

    start, end = today - dt.timedelta(days=HISTORY_DAYS), today + dt.timedelta(days=PLAN_HORIZON_DAYS)
    rows = [w for w in workouts if start <= _date(w["date"]) < end]
    plan = [PlannedWorkout(id=w["external_id"], date=_date(w["date"]), sport=w["sport"], type=w["type"],
                           zone=int(w["zone"]), duration_min=int(w["duration_min"]), tss=float(w["tss"]),
                           key_session=bool(w.get("key_session", False)))
            for w in rows if w.get("status", "planned") == "planned"
            and _date(w["date"]) >= today - dt.timedelta(days=7)]
    done: dict[dt.date, list[DoneWorkout]] = {}
    for w in rows:
        if w.get("status", "planned") == "completed" and _date(w["date"]) < today:
            done.setdefault(_date(w["date"]), []).append(DoneWorkout(
                sport=w["sport"], type=w["type"], zone=int(w["zone"]), duration_min=int(w["duration_min"]),
                tss=float(w["tss"])))
    feel = {_date(d["date"]): d for d in days}
    history: list[Day] = []
    for back in range(HISTORY_DAYS, 0, -1):
        day = today - dt.timedelta(days=back)
        f = feel.get(day) or {}
        history.append(Day(day=day, workouts=tuple(done.get(day, ())), sleep_hours=f.get("sleep_hours"),
                           soreness=f.get("soreness"), hrv_ms=f.get("hrv_ms"), resting_hr=f.get("resting_hr"),
                           rpe=f.get("rpe"), notes=f.get("notes") or ""))
    profile = Profile(name=athlete.get("name", ""), sport=athlete.get("sport", ""),
                      plan_name=plan_info.get("name", ""), plan_phase=plan_info.get("phase", ""),
                      goal=plan_info.get("goal", ""), goal_date=goal_date)
    return CoachView(today=today, state=state, series=series, plan=plan, history=history, profile=profile)


def coach_context(view: CoachView, *, question: str | None = QUESTION,
                  count_tokens: Callable[[str], int] = approximate_tokens, budget: int = DEFAULT_TOKEN_BUDGET,
                  config: RuleConfig = DEFAULT_CONFIG) -> Context:
    """The context the coach service builds for a recommendation: the most detailed form whose
    prompt fits ``budget`` tokens of ``count_tokens`` (the serving model's tokenizer; by default an
    estimate, :func:`~polarize.synthetic.approximate_tokens`)."""
    return build_context(state=view.state, upcoming=view.week, today=view.today, count_tokens=count_tokens,
                         budget=budget, profile=view.profile, history=view.history, load=view.series,
                         question=question, config=config)


def coach_messages(view: CoachView, **options: Any) -> list[dict[str, str]]:
    """The chat messages the coach service asks the model with (options of :func:`coach_context`)."""
    ctx = coach_context(view, **options)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": ctx.text}]


# --------------------------------------------------------------------------- eval items


def _workout_json(w: PlannedWorkout) -> dict[str, Any]:
    return {**dataclasses.asdict(w), "date": w.date.isoformat()}


def scenario_item(name: str, variant: int = 0, *, count_tokens: Callable[[str], int] = approximate_tokens,
                  budget: int = DEFAULT_TOKEN_BUDGET, config: RuleConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """The eval item of one scenario variant (deterministic, plain JSON data).

    ``messages``: the system prompt and the context the coach service would send for this athlete
    (:func:`coach_messages`, with the question :data:`QUESTION`; ``count_tokens`` should count with
    the served model's tokenizer, and ``budget`` be the coach's ``token_budget``); ``state``,
    ``upcoming`` (the plan the safety rules judge), ``today`` and ``expected`` (the direction the
    week's TSS should move) for the ``polarize_coach`` grader; ``scenario``, ``variant`` and
    ``athlete`` to slice by.
    """
    expected = dict(SCENARIOS).get(name)
    _check_scenario(name, variant)
    athlete, batch = scenario_batch(name, variant)
    view = coach_view(batch, athlete, TODAY)
    return {
        "messages": coach_messages(view, count_tokens=count_tokens, budget=budget, config=config),
        "state": dataclasses.asdict(view.state),
        "upcoming": [_workout_json(w) for w in view.plan],
        "today": TODAY.isoformat(),
        "expected": expected,
        "scenario": name,
        "variant": variant,
        "athlete": athlete,
    }


def scenario_items(variants: int = 2, **options: Any) -> list[dict[str, Any]]:
    """Every scenario's items, ``variants`` of each, scenario by scenario (options of :func:`scenario_item`)."""
    if variants < 1:
        raise ValueError(f"variants must be at least 1, got {variants}")
    return [scenario_item(name, variant, **options) for name, _ in SCENARIOS for variant in range(variants)]


# --------------------------------------------------------------------------- the eval and its runs

_NUMBER: Final = {"type": "number"}
ITEM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "properties": {"role": {"enum": ["system", "user", "assistant"]},
                                             "content": {"type": "string"}},
            "required": ["role", "content"]}},
        "state": {"type": "object", "properties": {
            "ctl": _NUMBER, "atl": _NUMBER, "tsb": _NUMBER, "sleep_hours": _NUMBER, "ramp": _NUMBER,
            "hrv_drop_pct": _NUMBER, "soreness": {"type": "integer", "minimum": 1, "maximum": 10},
            "ill_or_injured": {"type": "boolean"}, "days_to_race": {"type": ["integer", "null"]}},
            "required": ["ctl", "atl", "tsb", "sleep_hours", "soreness"]},
        "upcoming": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string"}, "date": {"type": "string"}, "sport": {"type": "string"},
            "type": {"enum": list(WORKOUT_TYPES)}, "zone": {"type": "integer", "minimum": 1, "maximum": 5},
            "duration_min": {"type": "integer", "minimum": 1}, "tss": _NUMBER, "key_session": {"type": "boolean"}},
            "required": ["id", "date", "sport", "type", "zone", "duration_min", "tss"]}},
        "today": {"type": "string"},
        "expected": {"enum": ["up", "down", "same", "not_up"]},
        "scenario": {"type": "string"},
        "variant": {"type": "integer", "minimum": 0},
        "athlete": {"type": "string"},
    },
    "required": ["messages", "state", "upcoming", "today", "expected", "scenario", "variant"],
}
"""The JSON Schema of the items (:func:`scenario_item`)."""

TESTING_CRITERIA: Final[tuple[dict[str, Any], ...]] = (
    {"type": "polarize_coach", "name": "valid", "check": "valid"},
    {"type": "polarize_coach", "name": "safe", "check": "safe"},
    {"type": "polarize_coach", "name": "direction", "check": "agrees", "agreement": "direction"},
)
"""A valid workout modification; every operation accepted by the safety rules; the week's TSS
moving the expected way (each check includes the one before)."""


def eval_metadata() -> dict[str, str]:
    """What identifies the stored eval: its kind and version (and the modification schema's version)."""
    return {"kind": EVAL_KIND, "version": EVAL_VERSION, "schema_version": SCHEMA_VERSION}


def is_scenario_eval(metadata: Mapping[str, Any] | None) -> bool:
    """Whether an eval with this metadata is the current version of the scenario eval."""
    meta = metadata or {}
    return all(meta.get(key) == value for key, value in eval_metadata().items())


def eval_definition() -> dict[str, Any]:
    """The body of ``POST /v1/evals`` (``client.evals.create(**eval_definition())``)."""
    return {"name": EVAL_NAME, "metadata": eval_metadata(),
            "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
            "testing_criteria": [dict(c) for c in TESTING_CRITERIA]}


def scenario_response_format(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``response_format`` of a run: the modification JSON schema, as the coach asks inference.

    The coach narrows ``workout_id`` to the ids of the one athlete's week; a run has one set of
    sampling parameters for all its items, so here it is narrowed to the ids of all the items'
    weeks (a model may still name another athlete's workout; the ``safe`` check rejects that).
    """
    ids: set[str] = set()
    for item in items:
        today = _date(item["today"])
        end = today + dt.timedelta(days=7)
        ids.update(w["id"] for w in item["upcoming"] if today <= _date(w["date"]) < end)
    return response_format(sorted(ids))


def run_data_source(model: str, items: Sequence[Mapping[str, Any]], *,
                    max_completion_tokens: int = MAX_ANSWER_TOKENS, seed: int = SEED) -> dict[str, Any]:
    """The ``completions`` data source of a run of ``model`` on ``items``: each item's own messages,
    temperature 0, answers constrained to the modification schema (as the coach service asks)."""
    return {
        "type": "completions", "model": model,
        "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
        "sampling_params": {"temperature": 0, "seed": seed, "max_completion_tokens": max_completion_tokens,
                            "response_format": scenario_response_format(items)},
        "source": {"type": "file_content", "content": [{"item": dict(item)} for item in items]},
    }


# --------------------------------------------------------------------------- the report


def _pct(n: int, total: int) -> str:
    return f"{n}/{total} ({100 * n / total:.0f}%)" if total else "0/0 (-)"


def _mark(result: Mapping[str, Any] | None) -> str:
    if result is None:
        return "-"
    if result.get("passed") is None:
        return "error"
    return "yes" if result["passed"] else "no"


def format_report(model: str, run: Mapping[str, Any], output_items: Iterable[Mapping[str, Any]]) -> str:
    """The table of a finished run: per item whether the answer was valid, safe and moved the week
    the expected way, then each criterion's pass rate (an errored grade counts in neither).

    ``run`` and ``output_items`` are the Evals API objects as dicts (``GET …/runs/{id}`` and its
    ``output_items``)."""
    rows = sorted(output_items, key=lambda it: it.get("datasource_item_id", 0))
    lines = [f"coach eval: {model}  (run {run.get('id')}, eval {run.get('eval_id')}, {run.get('status')})", "",
             f"{'scenario':<14} {'expected':<8} {'valid':>6} {'safe':>6} {'direction':>10}  status"]
    for it in rows:
        item = it.get("datasource_item") or {}
        results = {r.get("name"): r for r in it.get("results") or ()}
        direction = results.get("direction")
        got = ((direction or {}).get("detail") or {}).get("direction") or "-"
        ok = {True: "ok", False: "x", None: "?"}[direction.get("passed")] if direction else "?"
        label = f"{item.get('scenario', '?')}/{item.get('variant', '?')}"
        status = it.get("status", "")
        if status == "error":
            error = ((it.get("sample") or {}).get("error") or {}).get("message") or next(
                (r.get("error") for r in results.values() if r.get("error")), "")
            status = f"error: {str(error)[:60]}" if error else status
        lines.append(f"{label:<14} {item.get('expected', '?')!s:<8} {_mark(results.get('valid')):>6} "
                     f"{_mark(results.get('safe')):>6} {got:>6} {ok:>3}  {status}")
    counts = run.get("result_counts") or {}
    lines += ["", f"items {counts.get('total', len(rows))}: {counts.get('passed', 0)} passed, "
                  f"{counts.get('failed', 0)} failed, {counts.get('errored', 0)} errored"]
    labels = {"valid": "valid answers", "safe": "safe (rules accept all)", "direction": "expected direction"}
    for entry in run.get("per_testing_criteria_results") or ():
        name = entry.get("testing_criteria", "")
        passed, failed = int(entry.get("passed", 0)), int(entry.get("failed", 0))
        lines.append(f"{labels.get(name, name):<26}{_pct(passed, passed + failed)}")
    return "\n".join(lines)
