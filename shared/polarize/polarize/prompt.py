"""The coach prompt: a fixed system prompt and a compact, deterministic user context.

The same renderer is used to build training data and to query the served adapter, so the
model sees identical formatting at train and inference time.  Output is stable for equal
inputs (no clock, locale or dict-order dependence) and stays well under 300 tokens.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final

from .rules import AthleteState, PlannedWorkout, weekday

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


def _workout_line(w: PlannedWorkout) -> str:
    key = " key" if w.key_session else ""
    day = f"{w.date.isoformat()} {weekday(w.date)}"
    return f"{w.id} {day} {w.sport} {w.type} Z{w.zone} {w.duration_min}min {w.tss:.0f}TSS{key}"


def render_context(
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    question: str | None = None,
) -> str:
    """The user message: load, wellness, flags and the plan of the next 7 days (one line per
    workout, starting with its id), then the athlete's question if any."""
    end = today + dt.timedelta(days=PLAN_DAYS)
    plan = sorted((w for w in upcoming if today <= w.date < end), key=lambda w: (w.date, w.id))
    lines = [
        f"Today {today.isoformat()} {weekday(today)}",
        f"Load CTL {state.ctl:.0f} ATL {state.atl:.0f} TSB {state.tsb:+.0f} ramp {state.ramp:+.1f}",
        f"Sleep {state.sleep_hours:.1f}h soreness {state.soreness}/10 HRV {_hrv(state.hrv_drop_pct)} "
        f"ill/injured {'yes' if state.ill_or_injured else 'no'}",
        "Plan:" if plan else "Plan: none",
    ]
    lines.extend(_workout_line(w) for w in plan)
    if question is not None and question.strip():
        q = " ".join(question.split())
        if len(q) > MAX_QUESTION_CHARS:
            q = q[: MAX_QUESTION_CHARS - 1].rstrip() + "\u2026"
        lines.append(f"Athlete: {q}")
    return "\n".join(lines)
