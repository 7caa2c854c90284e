"""Training principles in the coach's context (:mod:`polarize.principles`): the search query built
from the readiness and the question, the ``Principles:`` section, and how
:func:`polarize.context.build_context` fits it into the token budget (principles give way first,
lowest-ranked first, before any history is summarised; the context without principles is exactly
the one it always was)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from polarize.context import LEVELS, Day, DoneWorkout, Profile, build_context
from polarize.principles import principles_query, principles_section, readiness_words
from polarize.prompt import SYSTEM_PROMPT, readiness
from polarize.rules import AthleteState, PlannedWorkout

TODAY = dt.date(2025, 3, 10)  # a Monday
NORMAL = AthleteState(ctl=60.0, atl=62.0, tsb=-2.0, ramp=2.0, sleep_hours=7.5, soreness=3, hrv_drop_pct=0.0)
FATIGUED = AthleteState(ctl=62.4, atl=84.0, tsb=-21.6, ramp=4.0, sleep_hours=5.5, soreness=4, hrv_drop_pct=25.0)
PROFILE = Profile(name="Anna", sport="run", plan_name="Spring", plan_phase="build", goal="10k",
                  goal_date=dt.date(2025, 4, 27))
PLAN = [PlannedWorkout(id="w1", date=TODAY, sport="run", type="intervals", zone=4, duration_min=60, tss=85.0,
                       key_session=True)]
SNIPPETS = [
    "Training principles > Fatigue flags\nTwo or more flags: turn the hard session into a short recovery.",
    "Training principles > Sleep\nUnder 6 hours is a fatigue flag on its own.",
    "Training principles > Polarized training (80/20)\nKeep about 80 percent of sessions easy.",
]


def words(text: str) -> int:
    """A stand-in tokenizer: words, digits and punctuation marks."""
    return len(re.findall(r"\d|[A-Za-z]+|[^\w\s]", text))


def history() -> list[Day]:
    return [Day(day=TODAY - dt.timedelta(days=back),
                workouts=(DoneWorkout(sport="run", type="endurance", zone=2, duration_min=50, tss=45.0),),
                sleep_hours=7.0, soreness=3, hrv_ms=60.0, resting_hr=48, rpe=5) for back in range(14, 0, -1)]


def context(budget: int, principles: list[str] | tuple[str, ...] = (), state: AthleteState = FATIGUED):
    return build_context(state=state, upcoming=PLAN, today=TODAY, count_tokens=words, budget=budget,
                         profile=PROFILE, history=history(), question="Should I run the intervals?",
                         principles=principles)


def test_the_query_is_the_readiness_words_then_the_question() -> None:
    assert readiness(FATIGUED).startswith("fatigued")
    assert readiness_words(FATIGUED) == ["fatigued"]
    assert principles_query(FATIGUED, "  Should I   run\nthe intervals? ") == (
        "fatigued fatigue recovery TSB load sleep HRV\nShould I run the intervals?")
    assert principles_query(NORMAL) == "polarized easy hard intensity"
    ill = dataclasses.replace(NORMAL, ill_or_injured=True)
    assert principles_query(ill, "") == "ill injured illness injury return recovery"
    taper = dataclasses.replace(NORMAL, days_to_race=9)
    assert readiness_words(taper) == ["tapering"] and principles_query(taper) == "tapering taper race"
    fresh = AthleteState(ctl=60.0, atl=45.0, tsb=15.0, ramp=1.0, sleep_hours=8.0, soreness=2, hrv_drop_pct=0.0)
    assert readiness(fresh) == "fresh"
    assert principles_query(fresh, "More?") == "fresh progressive overload increase\nMore?"
    assert principles_query(FATIGUED, "x" * 5000).endswith("\n" + "x" * 1000)


def test_the_section_is_one_line_per_principle_best_first() -> None:
    assert principles_section([]) == ""
    assert principles_section(SNIPPETS[:2]) == (
        "Principles:\n"
        "- Training principles > Fatigue flags Two or more flags: turn the hard session into a short recovery.\n"
        "- Training principles > Sleep Under 6 hours is a fatigue flag on its own.")


def test_without_principles_the_context_is_what_it_always_was() -> None:
    for budget in (200, 300, 400, 2000):
        plain = build_context(state=FATIGUED, upcoming=PLAN, today=TODAY, count_tokens=words, budget=budget,
                              profile=PROFILE, history=history(), question="Should I run the intervals?")
        assert context(budget) == plain
        assert plain.principles == 0 and "Principles:" not in plain.text


def test_principles_lead_the_context_and_give_way_first_within_the_budget() -> None:
    plain = context(10_000)
    assert plain.level == "full"
    full = context(10_000, SNIPPETS)
    assert full.text == principles_section(SNIPPETS) + "\n" + plain.text
    assert (full.level, full.principles, full.fits) == ("full", 3, True)
    assert full.tokens == words(SYSTEM_PROMPT + "\n" + full.text)

    # Room for the full history and two principles: the lowest-ranked one goes, the history stays.
    two = words(SYSTEM_PROMPT + "\n" + principles_section(SNIPPETS[:2]) + "\n" + plain.text)
    got = context(two, SNIPPETS)
    assert (got.level, got.principles, got.tokens) == ("full", 2, two)
    assert got.text == principles_section(SNIPPETS[:2]) + "\n" + plain.text
    # One token less: only the best one is left.
    got = context(two - 1, SNIPPETS)
    assert (got.level, got.principles) == ("full", 1)
    assert got.text.startswith("Principles:\n- Training principles > Fatigue flags") and got.tokens <= two - 1

    # The full history just fits alone: every principle goes before anything is summarised.
    got = context(plain.tokens, SNIPPETS)
    assert (got.text, got.level, got.principles) == (plain.text, "full", 0)

    # Every budget: never over it, and the principles only lead a level that fits without them.
    for budget in range(150, plain.tokens + 120, 7):
        got = context(budget, SNIPPETS)
        alone = context(budget)
        if got.fits:
            assert got.tokens <= budget
            assert got.level == alone.level  # principles never make the history shorter
            assert got.text == (principles_section(SNIPPETS[: got.principles]) + "\n" + alone.text
                                if got.principles else alone.text)
        else:
            assert got == alone and got.level == LEVELS[-1]


def test_principles_are_deterministic() -> None:
    assert context(400, SNIPPETS) == context(400, list(SNIPPETS))
