"""The coach prompt: a fixed system prompt and a compact, deterministic user context.

The same renderer is used to build training data and to query the served adapter, so the
model sees identical formatting at train and inference time.  Output is stable for equal
inputs (no clock, locale or dict-order dependence) and stays near 300 tokens.

Besides the raw numbers it states the facts the rules derive from them, which a small model
cannot compute reliably: the TSB band, the readiness (ill, fatigued with its red flags and
severity, fresh, tapering, normal) with the days to the race, for every planned workout its
weekday and day offset from today and whether it is hard (zone >= ``config.hard_zone``), and the
changes the rules allow in this readiness (:func:`plan_options`), named as the schema's operations
with the rules' own values: rest days when ill, a hard session's move day, recovery or Z2 when
fatigued, an extendable session's longer duration when fresh, none otherwise. Which of them to
make, and what to tell the athlete, is left to the reader of the context::

    Today 2025-03-10 Mon
    Load CTL 62 ATL 71 TSB -22 (low) ramp +3.1
    Sleep 5.5h soreness 4/10 HRV -7% ill/injured no
    Readiness: fatigued, severe (TSB -22, sleep 5.5h), race in 48d
    Plan:
    w1 Mon +0d run intervals Z4 60min 85TSS hard key
    w2 Tue +1d run endurance Z2 90min 75TSS
    w3 Thu +3d run tempo Z3 60min 70TSS hard
    Options: move_workout w1 (Mon run intervals) to Wed 2025-03-12; replace_with_recovery w3 (Thu run tempo) 35min
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final

from .rules import (
    DEFAULT_CONFIG,
    AthleteState,
    PlannedWorkout,
    RuleConfig,
    classify_state,
    extensions,
    fatigue_flags,
    is_fresh,
    is_hard,
    is_modifiable,
    is_severe,
    is_tapering,
    move_dates,
    recovery_minutes,
    rest_targets,
    weekday,
)

SYSTEM_PROMPT: Final = (
    "You are Polarize's endurance coach. Reply only with JSON matching the workout modification "
    "schema: operations on the listed workout ids, then a short message to the athlete."
)

CHAT_SYSTEM_PROMPT: Final = (
    "You are Polarize's endurance coach. Answer the athlete's question in a few plain sentences, "
    "using their load, wellness and plan."
)

PLAN_DAYS: Final = 7
MAX_QUESTION_CHARS: Final = 200


def _hrv(drop_pct: float) -> str:
    drop = round(drop_pct)
    return f"-{drop}%" if drop > 0 else "0%"


def tsb_band(tsb: float, config: RuleConfig = DEFAULT_CONFIG) -> str:
    """The band of the rounded TSB the prompt shows: ``very low`` (below ``severe_tsb``), ``low`` (below
    ``fatigue_tsb``), ``high`` (above ``fresh_tsb``) or ``neutral``."""
    shown = round(tsb)
    if shown < config.severe_tsb:
        return "very low"
    if shown < config.fatigue_tsb:
        return "low"
    if shown > config.fresh_tsb:
        return "high"
    return "neutral"


def readiness(state: AthleteState, config: RuleConfig = DEFAULT_CONFIG) -> str:
    """The athlete's readiness as the rules see it, e.g. ``fatigued, severe (TSB -32, sleep 5.5h)``,
    ``ill/injured``, ``fresh``, ``tapering, race in 9d`` or ``normal, race in 48d``."""
    parts: list[str] = []
    if state.ill_or_injured:
        parts.append("ill/injured")
    flags = fatigue_flags(state, config)
    if flags:
        parts.append(f"fatigued{', severe' if is_severe(state, config) else ''} ({', '.join(flags)})")
    if is_fresh(state, config):
        parts.append("fresh")
    if is_tapering(state, config):
        parts.append("tapering")
    if not parts:
        parts.append("normal")
    if state.days_to_race is not None:
        parts.append(f"race in {state.days_to_race}d")
    return ", ".join(parts)


def _named(w: PlannedWorkout) -> str:
    """A workout as an option names it: ``w3 (Thu run tempo)``."""
    return f"{w.id} ({weekday(w.date)} {w.sport} {w.type})"


def plan_options(
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    config: RuleConfig = DEFAULT_CONFIG,
) -> list[str]:
    """The changes the rules allow in the athlete's readiness, one per candidate workout of the plan's
    ``PLAN_DAYS`` in date order, each named as the schema's operation, the workout (its id, then its day,
    sport and type, as a message names it) and the value the rules' own helpers give (a model copies
    them rather than computing them or looking them up):

    * ill/injured: ``add_rest_day w3 (Wed run tempo)`` for each workout of the rest window
      (:func:`rest_targets`);
    * fatigued: for every hard session, a key one's first safe day (``move_workout w5 (Fri run
      intervals) to Sun 2025-03-16``), else its recovery when the fatigue is severe
      (``replace_with_recovery w4 (Thu bike tempo) 35min``), ``reduce_intensity w4 (Thu bike tempo) to Z2``
      otherwise;
    * fresh: the longest safe extension of every extendable session (``change_duration w2 (Tue bike
      endurance) to 110min``);
    * normal or tapering: none (the plan stays).

    The rules' own answer takes the first candidate (all of them when ill); which to take is left to
    the reader of the context."""
    branch = classify_state(state, config)
    end = today + dt.timedelta(days=PLAN_DAYS)
    if branch == "ill":
        return [f"add_rest_day {_named(w)}" for w in rest_targets(upcoming, today, config) if w.date < end]
    out: list[str] = []
    for w in sorted(upcoming, key=lambda w: (w.date, w.id)):
        if not is_modifiable(w, today, config) or w.date >= end:
            continue
        if branch == "fatigued" and is_hard(w, config):
            if w.key_session:
                dates = move_dates(w, state, upcoming, today, config)
                if dates:
                    out.append(f"move_workout {_named(w)} to {weekday(dates[0])} {dates[0].isoformat()}")
            elif is_severe(state, config):
                out.append(f"replace_with_recovery {_named(w)} {recovery_minutes(w)}min")
            else:
                out.append(f"reduce_intensity {_named(w)} to Z2")
        elif branch == "fresh":
            longer = extensions(w, upcoming, today, config)
            if longer:
                out.append(f"change_duration {_named(w)} to {longer[0]}min")
    return out


def _workout_line(w: PlannedWorkout, today: dt.date, config: RuleConfig) -> str:
    tags = (" hard" if w.zone >= config.hard_zone else "") + (" key" if w.key_session else "")
    day = f"{weekday(w.date)} {(w.date - today).days:+d}d"
    return f"{w.id} {day} {w.sport} {w.type} Z{w.zone} {w.duration_min}min {w.tss:.0f}TSS{tags}"


def render_context(
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    question: str | None = None,
    config: RuleConfig = DEFAULT_CONFIG,
) -> str:
    """The user message: load (with the TSB band), wellness, readiness, and the plan of the next 7
    days (one line per workout, starting with its id), then the athlete's question if any."""
    end = today + dt.timedelta(days=PLAN_DAYS)
    plan = sorted((w for w in upcoming if today <= w.date < end), key=lambda w: (w.date, w.id))
    lines = [
        f"Today {today.isoformat()} {weekday(today)}",
        f"Load CTL {state.ctl:.0f} ATL {state.atl:.0f} TSB {state.tsb:+.0f} ({tsb_band(state.tsb, config)}) "
        f"ramp {state.ramp:+.1f}",
        f"Sleep {state.sleep_hours:.1f}h soreness {state.soreness}/10 HRV {_hrv(state.hrv_drop_pct)} "
        f"ill/injured {'yes' if state.ill_or_injured else 'no'}",
        f"Readiness: {readiness(state, config)}",
        "Plan:" if plan else "Plan: none",
    ]
    lines.extend(_workout_line(w, today, config) for w in plan)
    options = plan_options(state, upcoming, today, config)
    lines.append(f"Options: {'; '.join(options)}" if options else "Options: none")
    if question is not None and question.strip():
        q = " ".join(question.split())
        if len(q) > MAX_QUESTION_CHARS:
            q = q[: MAX_QUESTION_CHARS - 1].rstrip() + "\u2026"
        lines.append(f"Athlete: {q}")
    return "\n".join(lines)
