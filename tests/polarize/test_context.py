"""The context builder: deterministic, within the budget, summarising history instead of cutting it."""

from __future__ import annotations

import datetime as dt
import re

from polarize.context import (
    LEVELS,
    Day,
    DoneWorkout,
    Profile,
    build_context,
    day_line,
    summary_line,
)
from polarize.load import compute_load
from polarize.prompt import SYSTEM_PROMPT, render_context
from polarize.rules import AthleteState, PlannedWorkout

TODAY = dt.date(2025, 3, 10)  # a Monday
STATE = AthleteState(ctl=62.4, atl=84.0, tsb=-21.6, ramp=4.0, sleep_hours=5.5, soreness=4, hrv_drop_pct=7.4)
PROFILE = Profile(name="Anna", sport="run", plan_name="Spring", plan_phase="build", goal="Berlin Marathon",
                  goal_date=dt.date(2025, 4, 27))
PLAN = [
    PlannedWorkout(id="w1", date=TODAY, sport="run", type="intervals", zone=4, duration_min=60, tss=85.0,
                   key_session=True),
    PlannedWorkout(id="w2", date=TODAY + dt.timedelta(days=2), sport="run", type="endurance", zone=2,
                   duration_min=60, tss=50.0),
]


def words(text: str) -> int:
    """A stand-in tokenizer: words, digits and punctuation marks."""
    return len(re.findall(r"\d|[A-Za-z]+|[^\w\s]", text))


def history() -> list[Day]:
    days = []
    for back in range(20, 0, -1):
        day = TODAY - dt.timedelta(days=back)
        workouts = () if back % 4 == 0 else (DoneWorkout(sport="run", type="endurance", zone=2 + back % 2,
                                                         duration_min=45 + back, tss=40.0 + back),)
        days.append(Day(day=day, workouts=workouts, sleep_hours=7.0 - back / 10, soreness=3 + back % 3,
                        hrv_ms=60.0 + back, resting_hr=48, rpe=5, notes="legs heavy" if back == 3 else ""))
    return days


def load() -> list:  # type: ignore[type-arg]
    daily = {d.day: sum(w.tss for w in d.workouts) for d in history()}
    return compute_load(daily, until=TODAY)


def build(budget: int, question: str | None = "Should I rest?"):  # type: ignore[no-untyped-def]
    return build_context(state=STATE, upcoming=PLAN, today=TODAY, count_tokens=words, budget=budget,
                         profile=PROFILE, history=history(), load=load(), question=question)


def test_full_context_has_every_section_in_order() -> None:
    ctx = build(10_000)
    assert ctx.fits and ctx.level == "full"
    lines = ctx.text.splitlines()
    assert lines[0] == "Athlete Anna: run; plan Spring (build); goal Berlin Marathon 2025-04-27 (48d)"
    assert lines[1:5] == render_context(STATE, PLAN, TODAY, "Should I rest?").splitlines()[:4]
    assert lines[4] == "Readiness: fatigued, severe (TSB -22, sleep 5.5h)"
    # 20 days of history: the trend shows the points it has (-14d, -7d, today), not -21d
    assert lines[5].startswith("Trend: -14d CTL ") and lines[5].count("|") == 2 and "| today CTL " in lines[5]
    assert lines[6] == "Last 14 days:"
    assert lines[7].startswith("2025-02-24 Mon: ") and lines[20].startswith("2025-03-09 Sun: ")
    assert lines[21:] == ["Plan:", "w1 Mon +0d run intervals Z4 60min 85TSS hard key",
                          "w2 Wed +2d run endurance Z2 60min 50TSS",
                          "Options: move_workout w1 (Mon run intervals) to Wed 2025-03-12", "Athlete: Should I rest?"]
    assert ctx.tokens == words(SYSTEM_PROMPT + "\n" + ctx.text)


def test_same_inputs_same_prompt() -> None:
    a = build(10_000)
    b = build_context(state=STATE, upcoming=list(reversed(PLAN)), today=TODAY, count_tokens=words, budget=10_000,
                      profile=PROFILE, history=list(reversed(history())), load=load(), question="Should I rest?")
    assert a == b


def test_day_and_summary_lines() -> None:
    day = Day(day=TODAY - dt.timedelta(days=3), workouts=(DoneWorkout(sport="bike", type="long", zone=2,
                                                                     duration_min=180, tss=150.4),),
              sleep_hours=7.25, soreness=5, hrv_ms=58.6, resting_hr=50, rpe=6, notes="windy\n and cold")
    assert day_line(day) == '2025-03-07 Fri: bike long Z2 180min 150TSS; sleep 7.2h sore 5 HRV 59 RHR 50 RPE 6 ' \
                            '"windy and cold"'
    assert day_line(Day(day=TODAY)) == "2025-03-10 Mon: rest"
    week = [day, Day(day=TODAY - dt.timedelta(days=2), workouts=(
        DoneWorkout(sport="run", type="intervals", zone=4, duration_min=60, tss=85.0),), sleep_hours=6.25,
        soreness=7)]
    assert summary_line(week) == "2025-03-07..2025-03-08: 2 sessions 4.0h 235TSS (1 hard), sleep avg 6.8h, " \
                                 "soreness max 7"


def test_budget_summarises_older_history_step_by_step() -> None:
    sizes: dict[str, int] = {}
    for budget in range(100, 1500):  # the smallest budget at which each level is chosen is its size
        ctx = build(budget)
        assert ctx.tokens <= budget or not ctx.fits
        if ctx.fits and ctx.level not in sizes:
            sizes[ctx.level] = ctx.tokens
    sizes = dict(sorted(sizes.items(), key=lambda item: LEVELS.index(item[0])))
    assert list(sizes) == list(LEVELS)
    assert [sizes[level] for level in LEVELS] == sorted(sizes.values(), reverse=True)

    older = build(sizes["older_week_summarised"])
    lines = older.text.splitlines()
    assert lines[lines.index("Last 14 days:") + 1].startswith("2025-02-24..2025-03-02: ")
    assert sum(1 for line in lines if re.match(r"\d{4}-\d\d-\d\d \w{3}: ", line)) == 7
    summarised = build(sizes["history_summarised"]).text.splitlines()
    start = summarised.index("Last 14 days:")
    assert summarised[start + 1].startswith("2025-02-24..2025-03-02: ")
    assert summarised[start + 2].startswith("2025-03-03..2025-03-09: ")
    fortnight = build(sizes["fortnight_summarised"]).text
    assert "Trend:" not in fortnight and "Last 14 days: 2025-02-24..2025-03-09: " in fortnight


def test_never_cuts_a_record_and_keeps_the_essentials() -> None:
    full_lines = set(build(10_000).text.splitlines())
    for budget in range(100, 700, 7):
        ctx = build(budget)
        lines = ctx.text.splitlines()
        for line in lines:  # every line is a whole record of the full context, or a summary of whole days
            assert line in full_lines or ".." in line, line
        assert "Plan:" in lines and "Athlete: Should I rest?" in lines
        assert "w1 Mon +0d run intervals Z4 60min 85TSS hard key" in lines
        assert "Options: move_workout w1 (Mon run intervals) to Wed 2025-03-12" in lines


def test_minimal_form_is_the_training_prompt_and_may_not_fit() -> None:
    minimal = render_context(STATE, PLAN, TODAY, "Should I rest?")
    need = words(SYSTEM_PROMPT + "\n" + minimal)
    ctx = build(need)
    assert ctx.level == "minimal" and ctx.fits and ctx.text == minimal
    too_small = build(need - 1)
    assert not too_small.fits and too_small.text == minimal and too_small.tokens == need


def test_without_profile_or_history_it_still_renders() -> None:
    ctx = build_context(state=AthleteState(ctl=0, atl=0, tsb=0, sleep_hours=8, soreness=2, ill_or_injured=True),
                        upcoming=[], today=TODAY, count_tokens=words, budget=10_000)
    lines = ctx.text.splitlines()
    assert lines[0] == "Today 2025-03-10 Mon"
    assert "Readiness: ill/injured" in lines and "Plan: none" in lines
    assert sum(1 for line in lines if line.endswith(": rest")) == 14
