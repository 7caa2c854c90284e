"""Deterministic coach rules.

Two jobs, both pure functions of their inputs (no clock, no randomness):

* :func:`recommend` is the rule-based coach.  Its answers are the training targets of the
  synthetic dataset and the reference an evaluator compares a fine-tuned model against.
* :func:`check_operation` validates a proposal (the rule-based one or a model's) against the
  safety rules before anything is applied; :func:`apply_modification` then applies it.

Branches of :func:`recommend`, by priority (see :func:`classify_state`):

``ill``       ill or injured: every workout in the next ``ill_rest_days`` days becomes a rest day.
``fatigued``  TSB < -20, soreness >= 8, sleep < 6 h or HRV down >= 20 %: the next hard session
              is reduced to Z2 (or, when severe, replaced by a short Z1 recovery); a key session
              is moved back a few days instead.
``fresh``     TSB > 10, sleep >= 7 h, soreness <= 3, HRV not down, ramp <= 5, not tapering: the next
              non-key endurance/long session gets a modest extension (<= +10 % weekly TSS).
``normal``    anything else: keep the plan (no operations, an encouraging message; a tapering athlete is
              told the taper takes no extra load).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from .load import LoadPoint
from .schema import (
    MAX_MESSAGE_CHARS,
    MAX_OPERATIONS,
    MAX_REASON_CHARS,
    AddRestDay,
    ChangeDuration,
    Modification,
    MoveWorkout,
    Operation,
    ReduceIntensity,
    ReplaceWithRecovery,
    SwapWorkout,
    WorkoutType,
)

Branch: TypeAlias = Literal["ill", "fatigued", "fresh", "normal"]
BRANCHES: Final[tuple[Branch, ...]] = ("ill", "fatigued", "fresh", "normal")

# Approximate TSS per hour in each zone (TSS/h = IF^2 * 100 with IF ~ .55/.70/.84/.95/1.05).
ZONE_TSS_PER_HOUR: Final[dict[int, float]] = {1: 30.0, 2: 50.0, 3: 70.0, 4: 90.0, 5: 110.0}
TYPE_DEFAULT_ZONE: Final[dict[str, int]] = {"intervals": 4, "tempo": 3, "endurance": 2, "long": 2, "recovery": 1}
TYPE_ZONES: Final[dict[str, tuple[int, ...]]] = {
    "intervals": (4, 5),
    "tempo": (3,),
    "endurance": (2,),
    "long": (1, 2),
    "recovery": (1,),
}
ZONE_DEFAULT_TYPE: Final[dict[int, WorkoutType]] = {
    1: "recovery",
    2: "endurance",
    3: "tempo",
    4: "intervals",
    5: "intervals",
}
WEEKDAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

# Rule names reported in RuleViolation.rule.
UNKNOWN_WORKOUT: Final = "unknown_workout"
PAST_WORKOUT: Final = "past_workout"
DUPLICATE_WORKOUT: Final = "duplicate_workout"
NOT_A_REDUCTION: Final = "not_a_reduction"
NO_CHANGE: Final = "no_change"
MOVE_TO_PAST: Final = "move_to_past"
MOVE_TOO_FAR: Final = "move_too_far"
KEY_SESSION_PROTECTED: Final = "key_session_protected"
NO_INCREASE_WHEN_FATIGUED: Final = "no_increase_when_fatigued"
WEEKLY_TSS_BAND: Final = "weekly_tss_band"
HARD_DAYS_IN_A_ROW: Final = "hard_days_in_a_row"
RULES: Final = (
    UNKNOWN_WORKOUT,
    PAST_WORKOUT,
    DUPLICATE_WORKOUT,
    NOT_A_REDUCTION,
    NO_CHANGE,
    MOVE_TO_PAST,
    MOVE_TOO_FAR,
    KEY_SESSION_PROTECTED,
    NO_INCREASE_WHEN_FATIGUED,
    WEEKLY_TSS_BAND,
    HARD_DAYS_IN_A_ROW,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class RuleConfig:
    """Thresholds of the rules; the defaults are the coaching policy."""

    # "fatigued" red flags (any one)
    fatigue_tsb: float = -20.0  # TSB below this
    fatigue_soreness: int = 8  # soreness at or above this
    min_sleep_hours: float = 6.0  # sleep below this
    fatigue_hrv_drop_pct: float = 20.0  # HRV drop at or above this
    # "severe" fatigue: a second red flag or one of these
    severe_tsb: float = -30.0
    severe_soreness: int = 9
    severe_sleep_hours: float = 5.0
    # "fresh" (all of them)
    fresh_tsb: float = 10.0  # TSB above this
    fresh_min_sleep_hours: float = 7.0
    fresh_max_soreness: int = 3
    fresh_max_hrv_drop_pct: float = 10.0  # HRV drop below this
    fresh_max_ramp: float = 5.0  # CTL ramp at or below this
    fresh_max_increase: float = 0.10  # the extension adds at most this share of weekly TSS
    fresh_extension_min: int = 20
    # safety rules
    tss_band: float = 0.15  # weekly TSS may change by at most +-15 %
    window_days: int = 7  # the "week": today .. today + window_days - 1
    hard_zone: int = 3  # a workout at or above this zone is a hard day
    max_hard_in_a_row: int = 2
    max_move_days: int = 3
    allow_today: bool = True  # today's workout counts as not yet done
    ill_rest_days: int = 3
    taper_days: int = 14  # a race this close means the athlete is tapering: no load increase


DEFAULT_CONFIG: Final = RuleConfig()


@dataclass(frozen=True, kw_only=True, slots=True)
class AthleteState:
    """What the coach knows about the athlete today."""

    ctl: float
    atl: float
    tsb: float
    sleep_hours: float
    soreness: int  # 1 (fresh) .. 10 (very sore)
    ramp: float = 0.0  # CTL change over the last 7 days
    hrv_drop_pct: float = 0.0  # drop of HRV below the athlete's baseline, in percent (>= 0)
    ill_or_injured: bool = False
    days_to_race: int | None = None  # days until the goal event, when one is planned

    def __post_init__(self) -> None:
        if not 1 <= self.soreness <= 10:
            raise ValueError(f"soreness must be 1..10, got {self.soreness}")
        if self.sleep_hours < 0:
            raise ValueError(f"sleep_hours must be >= 0, got {self.sleep_hours}")

    @classmethod
    def from_load(
        cls,
        point: LoadPoint,
        *,
        sleep_hours: float,
        soreness: int,
        hrv_drop_pct: float = 0.0,
        ill_or_injured: bool = False,
    ) -> AthleteState:
        return cls(
            ctl=point.ctl,
            atl=point.atl,
            tsb=point.tsb,
            ramp=point.ramp,
            sleep_hours=sleep_hours,
            soreness=soreness,
            hrv_drop_pct=hrv_drop_pct,
            ill_or_injured=ill_or_injured,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedWorkout:
    """One workout of the plan."""

    id: str
    date: dt.date
    sport: str  # "run", "bike", "swim", ...
    type: WorkoutType
    zone: int  # 1..5
    duration_min: int
    tss: float
    key_session: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.zone <= 5:
            raise ValueError(f"zone must be 1..5, got {self.zone}")
        if self.duration_min <= 0:
            raise ValueError(f"duration_min must be > 0, got {self.duration_min}")


@dataclass(frozen=True, slots=True)
class RuleViolation:
    rule: str
    operation_index: int
    message: str


# --------------------------------------------------------------------------- helpers


def estimate_tss(zone: int, duration_min: float) -> float:
    """TSS of a steady session in ``zone`` lasting ``duration_min`` minutes."""
    return round(ZONE_TSS_PER_HOUR[zone] * duration_min / 60.0, 1)


def is_hard(workout: PlannedWorkout, config: RuleConfig = DEFAULT_CONFIG) -> bool:
    return workout.zone >= config.hard_zone


def weekday(day: dt.date) -> str:
    """Locale-independent three-letter weekday name."""
    return WEEKDAYS[day.weekday()]


def fatigue_flags(state: AthleteState, config: RuleConfig = DEFAULT_CONFIG) -> list[str]:
    """Short descriptions of the red flags present, in a fixed order (empty when none)."""
    flags: list[str] = []
    if state.tsb < config.fatigue_tsb:
        flags.append(f"TSB {state.tsb:.0f}")
    if state.soreness >= config.fatigue_soreness:
        flags.append(f"soreness {state.soreness}/10")
    if state.sleep_hours < config.min_sleep_hours:
        flags.append(f"sleep {state.sleep_hours:.1f}h")
    if state.hrv_drop_pct >= config.fatigue_hrv_drop_pct:
        flags.append(f"HRV -{state.hrv_drop_pct:.0f}%")
    return flags


def is_fatigued(state: AthleteState, config: RuleConfig = DEFAULT_CONFIG) -> bool:
    return bool(fatigue_flags(state, config))


def is_severe(state: AthleteState, config: RuleConfig = DEFAULT_CONFIG) -> bool:
    """Fatigue is severe: two red flags or more, or one beyond the severe thresholds (a hard session then
    becomes a short recovery instead of an easier one)."""
    return (
        len(fatigue_flags(state, config)) >= 2
        or state.tsb < config.severe_tsb
        or state.soreness >= config.severe_soreness
        or state.sleep_hours < config.severe_sleep_hours
    )


def is_tapering(state: AthleteState, config: RuleConfig = DEFAULT_CONFIG) -> bool:
    """The goal event is at most ``config.taper_days`` away: a taper only takes load away."""
    return state.days_to_race is not None and 0 <= state.days_to_race <= config.taper_days


def is_fresh(state: AthleteState, config: RuleConfig = DEFAULT_CONFIG) -> bool:
    return (
        not state.ill_or_injured
        and not is_tapering(state, config)
        and not is_fatigued(state, config)
        and state.tsb > config.fresh_tsb
        and state.sleep_hours >= config.fresh_min_sleep_hours
        and state.soreness <= config.fresh_max_soreness
        and state.hrv_drop_pct < config.fresh_max_hrv_drop_pct
        and state.ramp <= config.fresh_max_ramp
    )


def classify_state(state: AthleteState, config: RuleConfig = DEFAULT_CONFIG) -> Branch:
    """Which branch of :func:`recommend` applies (``ill`` > ``fatigued`` > ``fresh`` > ``normal``)."""
    if state.ill_or_injured:
        return "ill"
    if is_fatigued(state, config):
        return "fatigued"
    if is_fresh(state, config):
        return "fresh"
    return "normal"


def is_modifiable(workout: PlannedWorkout, today: dt.date, config: RuleConfig = DEFAULT_CONFIG) -> bool:
    """Not done yet: a later day, or today when ``config.allow_today``."""
    return workout.date > today or (config.allow_today and workout.date == today)


def _sorted(workouts: Iterable[PlannedWorkout]) -> list[PlannedWorkout]:
    return sorted(workouts, key=lambda w: (w.date, w.id))


def _round5(minutes: float) -> int:
    return int(5 * round(minutes / 5))


def _type_for_zone(current: WorkoutType, zone: int) -> WorkoutType:
    return current if zone in TYPE_ZONES[current] else ZONE_DEFAULT_TYPE[zone]


def apply_operation(workout: PlannedWorkout, op: Operation) -> PlannedWorkout | None:
    """The workout after ``op`` (``None`` when it becomes a rest day); TSS is re-estimated."""
    if isinstance(op, ReduceIntensity):
        tss = round(workout.tss * ZONE_TSS_PER_HOUR[op.new_zone] / ZONE_TSS_PER_HOUR[workout.zone], 1)
        return dataclasses.replace(workout, zone=op.new_zone, type=_type_for_zone(workout.type, op.new_zone), tss=tss)
    if isinstance(op, ChangeDuration):
        tss = round(workout.tss * op.new_duration_min / workout.duration_min, 1)
        return dataclasses.replace(workout, duration_min=op.new_duration_min, tss=tss)
    if isinstance(op, SwapWorkout):
        zone = TYPE_DEFAULT_ZONE[op.new_type]
        return dataclasses.replace(workout, type=op.new_type, zone=zone, tss=estimate_tss(zone, workout.duration_min))
    if isinstance(op, MoveWorkout):
        return dataclasses.replace(workout, date=op.new_date)
    if isinstance(op, AddRestDay):
        return None
    return dataclasses.replace(
        workout,
        type="recovery",
        zone=1,
        duration_min=op.new_duration_min,
        tss=estimate_tss(1, op.new_duration_min),
        key_session=False,
    )


def apply_modification(upcoming: Sequence[PlannedWorkout], modification: Modification) -> list[PlannedWorkout]:
    """The plan after all operations, sorted by (date, id).

    Validate with :func:`check_operation` first; this only raises ``ValueError`` for an
    operation naming an unknown workout or a workout named twice.
    """
    by_id = {w.id: w for w in upcoming}
    changed: dict[str, PlannedWorkout | None] = {}
    for index, op in enumerate(modification.operations):
        if op.workout_id not in by_id:
            raise ValueError(f"operation {index}: unknown workout {op.workout_id!r}")
        if op.workout_id in changed:
            raise ValueError(f"operation {index}: workout {op.workout_id!r} is already changed")
        changed[op.workout_id] = apply_operation(by_id[op.workout_id], op)
    result: list[PlannedWorkout] = []
    for workout in upcoming:
        if workout.id in changed:
            new = changed[workout.id]
            if new is not None:
                result.append(new)
        else:
            result.append(workout)
    return _sorted(result)


# --------------------------------------------------------------------------- safety rules


def _hard_runs(days: Iterable[dt.date]) -> list[list[dt.date]]:
    runs: list[list[dt.date]] = []
    for day in sorted(set(days)):
        if runs and (day - runs[-1][-1]).days == 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def check_operation(
    modification: Modification,
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    *,
    config: RuleConfig = DEFAULT_CONFIG,
) -> list[RuleViolation]:
    """Check every operation of ``modification`` against the safety rules.

    Returns the violations (empty when the proposal is safe to apply), in operation order,
    per-operation rules first.  Plan-level rules (weekly TSS band, hard days in a row) name
    the operation most responsible.  Rules:

    ``unknown_workout`` / ``past_workout`` / ``duplicate_workout``
        the workout must exist in ``upcoming``, not lie in the past (today counts as future
        when ``config.allow_today``), and be named by one operation only;
    ``not_a_reduction`` / ``no_change``
        ``reduce_intensity`` must lower the zone; no operation may leave the workout as it is;
    ``move_to_past`` / ``move_too_far``
        a move lands today or later and at most ``config.max_move_days`` from the original day;
    ``key_session_protected``
        key sessions may only be moved, unless the athlete is ill or injured;
    ``no_increase_when_fatigued``
        with a red flag (TSB < -20, soreness >= 8, sleep < 6 h, HRV drop >= 20 %), when ill
        or injured, or when tapering (race within ``config.taper_days``), no operation may raise
        a workout's zone or its TSS;
    ``weekly_tss_band``
        the TSS of the week (``today`` .. ``today + window_days - 1``) may change by at most
        ``config.tss_band`` (default +-15 %); larger *reductions* are allowed for a fatigued,
        ill, injured or tapering athlete;
    ``hard_days_in_a_row``
        the proposal may not create a run of more than ``config.max_hard_in_a_row`` consecutive
        hard days (zone >= ``config.hard_zone``); runs already in the plan are not blamed on it.
    """
    violations: list[RuleViolation] = []
    by_id = {w.id: w for w in upcoming}
    restricted = state.ill_or_injured or is_fatigued(state, config) or is_tapering(state, config)
    first_index: dict[str, int] = {}
    applied: list[tuple[int, PlannedWorkout, PlannedWorkout | None]] = []

    def flag(rule: str, index: int, message: str) -> None:
        violations.append(RuleViolation(rule=rule, operation_index=index, message=message))

    for index, op in enumerate(modification.operations):
        workout = by_id.get(op.workout_id)
        if workout is None:
            flag(UNKNOWN_WORKOUT, index, f"no planned workout {op.workout_id!r}")
            continue
        if not is_modifiable(workout, today, config):
            flag(PAST_WORKOUT, index, f"workout {workout.id} on {workout.date.isoformat()} is not in the future")
            continue
        if op.workout_id in first_index:
            flag(
                DUPLICATE_WORKOUT,
                index,
                f"workout {workout.id} is already changed by operation {first_index[op.workout_id]}",
            )
            continue
        first_index[op.workout_id] = index
        result = apply_operation(workout, op)

        if isinstance(op, ReduceIntensity) and op.new_zone >= workout.zone:
            flag(NOT_A_REDUCTION, index, f"new_zone {op.new_zone} is not below the planned Z{workout.zone}")
        elif (
            (isinstance(op, ChangeDuration) and op.new_duration_min == workout.duration_min)
            or (isinstance(op, SwapWorkout) and op.new_type == workout.type)
            or (isinstance(op, MoveWorkout) and op.new_date == workout.date)
        ):
            flag(NO_CHANGE, index, f"{op.op} leaves workout {workout.id} unchanged")
        if isinstance(op, MoveWorkout):
            if op.new_date < today:
                flag(MOVE_TO_PAST, index, f"new_date {op.new_date.isoformat()} is in the past")
            elif abs((op.new_date - workout.date).days) > config.max_move_days:
                flag(
                    MOVE_TOO_FAR,
                    index,
                    f"moving {workout.id} by {abs((op.new_date - workout.date).days)} days "
                    f"(max {config.max_move_days})",
                )
        if workout.key_session and not isinstance(op, MoveWorkout) and not state.ill_or_injured:
            flag(KEY_SESSION_PROTECTED, index, f"{workout.id} is a key session: it may only be moved")
        if restricted and result is not None and (result.zone > workout.zone or result.tss > workout.tss + 1e-9):
            why = (
                "ill or injured"
                if state.ill_or_injured
                else ", ".join(fatigue_flags(state, config)) or f"tapering, race in {state.days_to_race}d"
            )
            flag(NO_INCREASE_WHEN_FATIGUED, index, f"{op.op} increases the load of {workout.id} ({why})")
        applied.append((index, workout, result))

    # Plan-level rules on the plan with every applicable operation applied.
    changed = {workout.id: result for _, workout, result in applied}
    new_plan = [changed.get(w.id, w) for w in upcoming]
    new_plan_present = [w for w in new_plan if w is not None]
    window_end = today + dt.timedelta(days=config.window_days)

    def in_window(w: PlannedWorkout | None) -> float:
        return w.tss if w is not None and today <= w.date < window_end else 0.0

    base = sum(in_window(w) for w in upcoming)
    total = sum(in_window(w) for w in new_plan_present)
    if base > 0 and applied:
        change = (total - base) / base
        deltas = [(in_window(result) - in_window(workout), index) for index, workout, result in applied]
        if change > config.tss_band:
            _, culprit = max(deltas, key=lambda d: (d[0], -d[1]))
            flag(
                WEEKLY_TSS_BAND,
                culprit,
                f"weekly TSS {base:.0f} -> {total:.0f} ({change:+.0%}) exceeds +{config.tss_band:.0%}",
            )
        elif change < -config.tss_band and not restricted:
            _, culprit = min(deltas, key=lambda d: (d[0], d[1]))
            flag(
                WEEKLY_TSS_BAND,
                culprit,
                f"weekly TSS {base:.0f} -> {total:.0f} ({change:+.0%}) exceeds -{config.tss_band:.0%}",
            )

    hard_before = {w.date for w in upcoming if is_hard(w, config)}
    hard_after = {w.date for w in new_plan_present if is_hard(w, config)}
    made_hard = {
        index: result.date
        for index, _, result in applied
        if result is not None and is_hard(result, config) and result.date not in hard_before
    }
    blamed: set[int] = set()
    for run in _hard_runs(hard_after):
        if len(run) <= config.max_hard_in_a_row:
            continue
        for index, day in sorted(made_hard.items()):
            if day in run and index not in blamed:
                blamed.add(index)
                flag(
                    HARD_DAYS_IN_A_ROW,
                    index,
                    f"{len(run)} hard days in a row from {run[0].isoformat()} (max {config.max_hard_in_a_row})",
                )
    violations.sort(key=lambda v: v.operation_index)
    return violations


check_modification = check_operation


# --------------------------------------------------------------------------- what the rules compute per workout


def recovery_minutes(workout: PlannedWorkout) -> int:
    """The length of the Z1 recovery session that replaces ``workout`` under severe fatigue: 60 % of
    its duration, rounded to 5 minutes, within 20..45."""
    return max(20, min(45, _round5(workout.duration_min * 0.6)))


def is_extendable(workout: PlannedWorkout, today: dt.date, config: RuleConfig = DEFAULT_CONFIG) -> bool:
    """A session the fresh branch may lengthen: a non-key endurance or long session in Z1-2 this week."""
    return (
        workout.date < today + dt.timedelta(days=config.window_days)
        and not workout.key_session
        and workout.type in ("endurance", "long")
        and workout.zone <= 2
    )


def extensions(
    workout: PlannedWorkout, upcoming: Sequence[PlannedWorkout], today: dt.date, config: RuleConfig = DEFAULT_CONFIG
) -> list[int]:
    """The new durations (minutes, longest first) the fresh branch would consider for ``workout``: +25 % of
    it rounded to 5 (at most ``config.fresh_extension_min``), down to +10 in steps of 5, each within 360 min
    and adding at most ``config.fresh_max_increase`` of the week's planned TSS. Empty when none fits or the
    workout is not :func:`is_extendable`."""
    if not is_extendable(workout, today, config):
        return []
    week_end = today + dt.timedelta(days=config.window_days)
    base = sum(w.tss for w in upcoming if is_modifiable(w, today, config) and w.date < week_end)
    out: list[int] = []
    extra = min(config.fresh_extension_min, _round5(workout.duration_min * 0.25))
    while extra >= 10:
        if workout.duration_min + extra <= 360 and workout.tss * extra / workout.duration_min <= (
            config.fresh_max_increase * base
        ):
            out.append(workout.duration_min + extra)
        extra -= 5
    return out


def move_dates(
    workout: PlannedWorkout,
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    config: RuleConfig = DEFAULT_CONFIG,
) -> list[dt.date]:
    """The days a fatigued athlete's key session may move to, earliest first: 2 to ``config.max_move_days``
    days later, where the moved plan passes the safety rules."""
    out: list[dt.date] = []
    for offset in range(2, config.max_move_days + 1):
        new_date = workout.date + dt.timedelta(days=offset)
        probe = Modification(
            operations=[MoveWorkout(workout_id=workout.id, new_date=new_date, reason="move", confidence=0.5)],
            message="move",
        )
        if _is_valid(probe, state, upcoming, today, config):
            out.append(new_date)
    return out


# --------------------------------------------------------------------------- the rule-based coach


def rest_targets(upcoming: Sequence[PlannedWorkout], today: dt.date,
                 config: RuleConfig = DEFAULT_CONFIG) -> list[PlannedWorkout]:
    """The workouts an ill or injured athlete's answer turns into rest days, in date order: every
    modifiable one of the next ``config.ill_rest_days`` days (the next one when there is none there), at
    most ``MAX_OPERATIONS``."""
    future = _sorted(w for w in upcoming if is_modifiable(w, today, config))
    horizon = today + dt.timedelta(days=config.ill_rest_days)
    return ([w for w in future if w.date < horizon] or future[:1])[:MAX_OPERATIONS]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _describe(w: PlannedWorkout) -> str:
    return f"{weekday(w.date)}'s {w.sport} {w.type}"


def _keep(message: str) -> Modification:
    return Modification(operations=[], message=_clip(message, MAX_MESSAGE_CHARS))


def _is_valid(
    mod: Modification, state: AthleteState, upcoming: Sequence[PlannedWorkout], today: dt.date, config: RuleConfig
) -> bool:
    return not check_operation(mod, state, upcoming, today, config=config)


def recommend(
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    *,
    config: RuleConfig = DEFAULT_CONFIG,
) -> Modification:
    """The rule-based answer for this athlete and plan (always passes :func:`check_operation`)."""
    future = _sorted(w for w in upcoming if is_modifiable(w, today, config))
    branch = classify_state(state, config)

    if branch == "ill":
        targets = rest_targets(upcoming, today, config)
        if not targets:
            return _keep(
                "Health comes first: rest and recover fully, and tell me when you feel better so we can rebuild."
            )
        ops: list[Operation] = [
            AddRestDay(workout_id=w.id, reason="ill or injured: rest", confidence=0.9) for w in targets
        ]
        last = weekday(targets[-1].date)
        mod = Modification(
            operations=ops,
            message=_clip(
                f"Health comes first: I've turned your sessions through {last} into rest days. "
                "Don't train through illness or injury; tell me when you feel better and we'll rebuild gently.",
                MAX_MESSAGE_CHARS,
            ),
        )
        return (
            mod
            if _is_valid(mod, state, upcoming, today, config)
            else _keep("Health comes first: rest until you feel better, then we'll rebuild gently.")
        )

    if branch == "fatigued":
        flags = fatigue_flags(state, config)
        reason = _clip(", ".join(flags), MAX_REASON_CHARS)
        flag_text = " and ".join(flags)
        severe = is_severe(state, config)
        for w in (w for w in future if is_hard(w, config)):
            if w.key_session:
                for new_date in move_dates(w, state, upcoming, today, config):
                    mod = Modification(
                        operations=[MoveWorkout(workout_id=w.id, new_date=new_date, reason=reason, confidence=0.7)],
                        message=_clip(
                            f"With {flag_text} you need a little more recovery before your key session: "
                            f"{_describe(w)} moves to {weekday(new_date)}. Keep the days before it easy.",
                            MAX_MESSAGE_CHARS,
                        ),
                    )
                    if _is_valid(mod, state, upcoming, today, config):
                        return mod
                continue
            if severe:
                minutes = recovery_minutes(w)
                mod = Modification(
                    operations=[
                        ReplaceWithRecovery(workout_id=w.id, new_duration_min=minutes, reason=reason, confidence=0.85)
                    ],
                    message=_clip(
                        f"With {flag_text} your body needs recovery more than intensity: {_describe(w)} "
                        f"becomes an easy {minutes}-min Z1 session. Sleep well and keep everything else easy.",
                        MAX_MESSAGE_CHARS,
                    ),
                )
            else:
                mod = Modification(
                    operations=[ReduceIntensity(workout_id=w.id, new_zone=2, reason=reason, confidence=0.75)],
                    message=_clip(
                        f"With {flag_text} you're carrying fatigue, so {_describe(w)} stays but in Z2 only. "
                        "Intensity can wait until you've absorbed the load.",
                        MAX_MESSAGE_CHARS,
                    ),
                )
            if _is_valid(mod, state, upcoming, today, config):
                return mod
        return _keep(
            f"With {flag_text} you need recovery: your plan is already easy, so keep every session "
            "relaxed and prioritise sleep."
        )

    if branch == "fresh":
        for w in future:
            for new_minutes in extensions(w, upcoming, today, config):
                extra = new_minutes - w.duration_min
                mod = Modification(
                    operations=[
                        ChangeDuration(
                            workout_id=w.id,
                            new_duration_min=new_minutes,
                            reason=f"fresh: TSB {state.tsb:+.0f}",
                            confidence=0.6,
                        )
                    ],
                    message=_clip(
                        f"You're fresh (TSB {state.tsb:+.0f}) and recovering well, so {_describe(w)} "
                        f"grows by {extra} min to {new_minutes} min. Keep it relaxed in Z{w.zone}.",
                        MAX_MESSAGE_CHARS,
                    ),
                )
                if _is_valid(mod, state, upcoming, today, config):
                    return mod
        return _keep(f"You're fresh (TSB {state.tsb:+.0f}) and recovering well: keep the plan as it is and enjoy it.")

    key = next((w for w in future if w.key_session), None)
    focus = f" Make {_describe(key)} count." if key is not None else ""
    if is_tapering(state, config):
        return _keep(
            f"Your race is in {state.days_to_race}d, so you're tapering: no extra load now. Stick to the plan, "
            f"keep the intensity short and arrive fresh (TSB {state.tsb:+.0f}).{focus}"
        )
    return _keep(
        f"Your load looks balanced (TSB {state.tsb:+.0f}): stick to the plan and keep the easy days easy.{focus}"
    )


# --------------------------------------------------------------------------- accepting a proposal


def partition_operations(
    modification: Modification,
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    *,
    config: RuleConfig = DEFAULT_CONFIG,
    rejected: Iterable[RuleViolation] = (),
) -> tuple[list[int], list[RuleViolation]]:
    """Split ``modification`` into the operations that may be applied and the violations of the others.

    Every operation flagged by :func:`check_operation` is rejected; the remaining ones are checked
    again together (plan-level rules such as the weekly TSS band depend on which operations go
    through) until the accepted set passes as a whole.  ``rejected`` lists violations found by the
    caller beforehand (e.g. an operation naming a completed workout): those operations are rejected
    up front.  Returns the indices of the accepted operations (in order) and the violations, sorted
    by operation index, each naming its index in ``modification``.
    """
    violations = list(rejected)
    accepted = [i for i in range(len(modification.operations)) if i not in {v.operation_index for v in violations}]
    while accepted:
        subset = Modification(operations=[modification.operations[i] for i in accepted], message=modification.message)
        found = check_operation(subset, state, upcoming, today, config=config)
        if not found:
            break
        bad = {v.operation_index for v in found}
        violations.extend(
            RuleViolation(rule=v.rule, operation_index=accepted[v.operation_index], message=v.message) for v in found
        )
        accepted = [index for position, index in enumerate(accepted) if position not in bad]
    violations.sort(key=lambda v: v.operation_index)
    return accepted, violations


def weekly_tss(plan: Iterable[PlannedWorkout], today: dt.date, config: RuleConfig = DEFAULT_CONFIG) -> float:
    """TSS planned in the rules' week (``today`` .. ``today + window_days - 1``)."""
    end = today + dt.timedelta(days=config.window_days)
    return round(sum(w.tss for w in plan if today <= w.date < end), 1)
