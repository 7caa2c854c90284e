"""The coach's context builder: athlete data → one compact, deterministic prompt within a token budget.

The most detailed form reads::

    Athlete Anna: run; plan Spring build (build), goal Berlin Marathon 2025-04-27 (48d)
    Today 2025-03-10 Mon                                        ┐
    Load CTL 62 ATL 71 TSB -9 (neutral) ramp +3.1               │ the lines of render_context()
    Sleep 6.5h soreness 4/10 HRV -7% ill/injured no             │
    Readiness: normal, race in 48d                              ┘
    Trend: -21d CTL 55 ATL 60 TSB -4 | -14d … | -7d … | today …
    Last 14 days:
    2025-02-24 Mon: run intervals Z4 60min 85TSS; sleep 7.2h sore 3 HRV 61 RHR 48 RPE 6
    …
    Plan:                                                       ┐
    w1 Mon +0d run intervals Z4 60min 85TSS hard key; move to … │ the lines of render_context()
    Athlete: Should I adjust my plan?                           ┘

When the prompt (system prompt + context) exceeds the budget, older history is *summarised*
(first the older week into one line, then both weeks, then the trend goes and the fortnight
becomes one line) — records are never cut in the middle.  The last resort is exactly
:func:`render_context`, the compact form (about 250 tokens with the system prompt) that a small
budget asks for, as the demo's training data does.  Training principles from a knowledge base
(:mod:`polarize.principles`), when given, lead the text and are the first thing to give way.
Equal inputs give equal output: nothing depends on the clock, the locale or dict order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from .load import LoadPoint
from .principles import principles_section
from .prompt import SYSTEM_PROMPT, render_context
from .rules import DEFAULT_CONFIG, AthleteState, PlannedWorkout, RuleConfig, weekday

HISTORY_DAYS: Final = 14
TREND_WEEKS: Final = 3
MAX_NOTE_CHARS: Final = 60
LEVELS: Final = ("full", "older_week_summarised", "history_summarised", "fortnight_summarised", "minimal")

TokenCounter = Callable[[str], int]


@dataclass(frozen=True, kw_only=True, slots=True)
class Profile:
    """Who the athlete is and what the current plan is for (every field optional)."""

    name: str = ""
    sport: str = ""
    plan_name: str = ""
    plan_phase: str = ""
    goal: str = ""
    goal_date: dt.date | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DoneWorkout:
    """A completed session."""

    sport: str
    type: str
    zone: int
    duration_min: int
    tss: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Day:
    """One day of history: what was done and how the athlete felt (any field may be missing)."""

    day: dt.date
    workouts: tuple[DoneWorkout, ...] = ()
    sleep_hours: float | None = None
    soreness: int | None = None
    hrv_ms: float | None = None
    resting_hr: int | None = None
    rpe: int | None = None
    notes: str = ""


@dataclass(frozen=True, slots=True)
class Context:
    """The rendered user message, its token count (system prompt included) and how much was summarised."""

    text: str
    tokens: int
    budget: int
    level: str
    fits: bool
    system: str = field(default=SYSTEM_PROMPT)
    principles: int = 0
    """How many of the principles given lead the text (the best ones; the others did not fit)."""


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def profile_line(profile: Profile, today: dt.date) -> str | None:
    parts: list[str] = []
    if profile.sport:
        parts.append(profile.sport)
    if profile.plan_name or profile.plan_phase:
        phase = f" ({profile.plan_phase})" if profile.plan_phase else ""
        parts.append(f"plan {_clip(profile.plan_name, 40) or 'current'}{phase}")
    if profile.goal or profile.goal_date:
        goal = _clip(profile.goal, 40) or "goal event"
        when = ""
        if profile.goal_date is not None:
            when = f" {profile.goal_date.isoformat()} ({(profile.goal_date - today).days}d)"
        parts.append(f"goal {goal}{when}")
    if not parts and not profile.name:
        return None
    name = _clip(profile.name, 40) or "profile"
    return f"Athlete {name}: " + "; ".join(parts) if parts else f"Athlete {name}"


def _workout_text(w: DoneWorkout) -> str:
    return f"{w.sport} {w.type} Z{w.zone} {w.duration_min}min {w.tss:.0f}TSS"


def day_line(day: Day) -> str:
    """One day of history on one line."""
    done = ", ".join(_workout_text(w) for w in day.workouts) or "rest"
    feel: list[str] = []
    if day.sleep_hours is not None:
        feel.append(f"sleep {day.sleep_hours:.1f}h")
    if day.soreness is not None:
        feel.append(f"sore {day.soreness}")
    if day.hrv_ms is not None:
        feel.append(f"HRV {day.hrv_ms:.0f}")
    if day.resting_hr is not None:
        feel.append(f"RHR {day.resting_hr}")
    if day.rpe is not None:
        feel.append(f"RPE {day.rpe}")
    if day.notes.strip():
        feel.append(f'"{_clip(day.notes, MAX_NOTE_CHARS)}"')
    tail = "; " + " ".join(feel) if feel else ""
    return f"{day.day.isoformat()} {weekday(day.day)}: {done}{tail}"


def summary_line(days: Sequence[Day], config: RuleConfig = DEFAULT_CONFIG) -> str:
    """Several days on one line: sessions, hours, TSS, hard sessions, average sleep, worst soreness."""
    ordered = sorted(days, key=lambda d: d.day)
    workouts = [w for d in ordered for w in d.workouts]
    hours = sum(w.duration_min for w in workouts) / 60
    tss = sum(w.tss for w in workouts)
    hard = sum(1 for w in workouts if w.zone >= config.hard_zone)
    parts = [f"{len(workouts)} sessions {hours:.1f}h {tss:.0f}TSS ({hard} hard)"]
    sleeps = [d.sleep_hours for d in ordered if d.sleep_hours is not None]
    if sleeps:
        parts.append(f"sleep avg {sum(sleeps) / len(sleeps):.1f}h")
    sore = [d.soreness for d in ordered if d.soreness is not None]
    if sore:
        parts.append(f"soreness max {max(sore)}")
    span = f"{ordered[0].day.isoformat()}..{ordered[-1].day.isoformat()}" if ordered else "no days"
    return f"{span}: " + ", ".join(parts)


def trend_line(load: Sequence[LoadPoint], today: dt.date, weeks: int = TREND_WEEKS) -> str | None:
    """CTL/ATL/TSB every 7 days over the last ``weeks`` weeks, oldest first, ending today."""
    by_day = {p.day: p for p in load}
    parts: list[str] = []
    for back in range(weeks, -1, -1):
        point = by_day.get(today - dt.timedelta(days=7 * back))
        if point is None:
            continue
        label = "today" if back == 0 else f"-{7 * back}d"
        parts.append(f"{label} CTL {point.ctl:.0f} ATL {point.atl:.0f} TSB {point.tsb:+.0f}")
    return "Trend: " + " | ".join(parts) if len(parts) > 1 else None


def _history(days: Sequence[Day], today: dt.date) -> list[Day]:
    """Exactly the last ``HISTORY_DAYS`` days before today, filling days without data as empty."""
    by_day = {d.day: d for d in days}
    out: list[Day] = []
    for back in range(HISTORY_DAYS, 0, -1):
        day = today - dt.timedelta(days=back)
        out.append(by_day.get(day, Day(day=day)))
    return out


def _render(level: str, core: list[str], profile: str | None, trend: str | None, history: list[Day],
            config: RuleConfig) -> str:
    if level == "minimal":
        return "\n".join(core)
    plan_at = next(i for i, line in enumerate(core) if line.startswith("Plan"))
    extra: list[str] = []
    if level != "fortnight_summarised" and trend is not None:
        extra.append(trend)
    older, recent = history[: HISTORY_DAYS // 2], history[HISTORY_DAYS // 2 :]
    if level == "full":
        extra.append("Last 14 days:")
        extra.extend(day_line(d) for d in history)
    elif level == "older_week_summarised":
        extra.append("Last 14 days:")
        extra.append(summary_line(older, config))
        extra.extend(day_line(d) for d in recent)
    elif level == "history_summarised":
        extra.append("Last 14 days:")
        extra.append(summary_line(older, config))
        extra.append(summary_line(recent, config))
    else:  # fortnight_summarised
        extra.append("Last 14 days: " + summary_line(history, config))
    head = [profile] if profile else []
    return "\n".join(head + core[:plan_at] + extra + core[plan_at:])


def build_context(
    *,
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    count_tokens: TokenCounter,
    budget: int,
    profile: Profile | None = None,
    history: Sequence[Day] = (),
    load: Sequence[LoadPoint] = (),
    question: str | None = None,
    config: RuleConfig = DEFAULT_CONFIG,
    principles: Sequence[str] = (),
) -> Context:
    """The most detailed context whose prompt (system prompt + context) fits ``budget`` tokens.

    ``count_tokens`` counts with the serving model's tokenizer.  ``history`` may hold any days;
    only the 14 before ``today`` are shown.  ``load`` is the load series (for the trend line).
    When not even the minimal form fits, that form is returned with ``fits=False``.

    ``principles`` (knowledge snippets, best first; see :mod:`polarize.principles`) lead the text
    as a ``Principles:`` section.  They are general advice while the rest is the athlete's own
    data, so they are the first thing to give way: at each level of detail the most of them that
    fit are kept (the lowest-ranked dropped first, each whole), and the history is only summarised
    when a level does not fit even without any of them.  They never push the prompt over the
    budget.  Without principles the context is exactly what it was.
    """
    core = render_context(state, upcoming, today, question, config).split("\n")
    trend = trend_line(load, today)
    days = _history(history, today)
    head = profile_line(profile, today) if profile is not None else None
    text = ""
    tokens = 0
    for level in LEVELS:
        body = _render(level, core, head, trend, days, config)
        for kept in range(len(principles), -1, -1):
            text = "\n".join([principles_section(principles[:kept]), body]) if kept else body
            tokens = count_tokens(SYSTEM_PROMPT + "\n" + text)
            if tokens <= budget:
                return Context(text=text, tokens=tokens, budget=budget, level=level, fits=True, principles=kept)
    return Context(text=text, tokens=tokens, budget=budget, level=LEVELS[-1], fits=False)
