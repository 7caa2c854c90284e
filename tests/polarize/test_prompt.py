"""The coach prompt renderer: deterministic, compact, complete."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest

from polarize.prompt import SYSTEM_PROMPT, readiness, render_context, tsb_band
from polarize.rules import AthleteState, PlannedWorkout, weekday

TODAY = dt.date(2025, 3, 10)  # a Monday
STATE = AthleteState(
    ctl=62.4, atl=71.2, tsb=-8.6, ramp=3.14, sleep_hours=6.46, soreness=4, hrv_drop_pct=7.4, ill_or_injured=False
)


def _plan() -> list[PlannedWorkout]:
    specs = [
        ("w0", -1, "run", "intervals", 4, 60, 88.0, False),
        ("w1", 0, "run", "intervals", 4, 60, 85.4, True),
        ("w2", 1, "bike", "endurance", 2, 90, 75.0, False),
        ("w3", 2, "run", "recovery", 1, 40, 20.0, False),
        ("w4", 3, "bike", "tempo", 3, 60, 70.0, False),
        ("w5", 4, "swim", "endurance", 2, 45, 38.0, False),
        ("w6", 5, "bike", "long", 2, 180, 150.0, True),
        ("w6b", 5, "run", "recovery", 1, 30, 15.0, False),
        ("w7", 6, "run", "endurance", 2, 60, 50.0, False),
        ("w8", 7, "run", "intervals", 4, 60, 90.0, False),
    ]
    return [
        PlannedWorkout(
            id=wid,
            date=TODAY + dt.timedelta(days=off),
            sport=sport,
            type=wtype,  # type: ignore[arg-type]
            zone=zone,
            duration_min=minutes,
            tss=tss,
            key_session=key,
        )
        for wid, off, sport, wtype, zone, minutes, tss, key in specs
    ]


def test_render_exact() -> None:
    text = render_context(STATE, _plan(), TODAY, "  Can I   swap\nTuesday? ")
    assert text == (
        "Today 2025-03-10 Mon\n"
        "Load CTL 62 ATL 71 TSB -9 (neutral) ramp +3.1\n"
        "Sleep 6.5h soreness 4/10 HRV -7% ill/injured no\n"
        "Readiness: normal\n"
        "Plan:\n"
        "w1 Mon +0d run intervals Z4 60min 85TSS hard key\n"
        "w2 Tue +1d bike endurance Z2 90min 75TSS\n"
        "w3 Wed +2d run recovery Z1 40min 20TSS\n"
        "w4 Thu +3d bike tempo Z3 60min 70TSS hard\n"
        "w5 Fri +4d swim endurance Z2 45min 38TSS\n"
        "w6 Sat +5d bike long Z2 180min 150TSS key\n"
        "w6b Sat +5d run recovery Z1 30min 15TSS\n"
        "w7 Sun +6d run endurance Z2 60min 50TSS\n"
        "Options: none\n"
        "Athlete: Can I swap Tuesday?"
    )


def _options(state: AthleteState) -> str:
    return render_context(state, _plan(), TODAY).splitlines()[-1]


def test_the_readiness_picks_the_candidate_changes() -> None:
    """The options line names the changes the rules allow in this readiness, and none otherwise."""
    normal, tapering = STATE, dataclasses.replace(STATE, days_to_race=9)
    assert _options(normal) == _options(tapering) == "Options: none"
    fresh = dataclasses.replace(STATE, tsb=14.0, sleep_hours=8.0, soreness=2, hrv_drop_pct=0.0, ramp=1.0)
    assert _options(fresh) == ("Options: change_duration w2 (Tue bike endurance) to 110min; "
                               "change_duration w5 (Fri swim endurance) to 55min; "
                               "change_duration w7 (Sun run endurance) to 75min")
    assert _options(dataclasses.replace(fresh, days_to_race=9)) == "Options: none"  # a taper takes no load
    mild = dataclasses.replace(STATE, hrv_drop_pct=25.0)
    assert _options(mild) == ("Options: move_workout w1 (Mon run intervals) to Wed 2025-03-12; "
                              "reduce_intensity w4 (Thu bike tempo) to Z2")
    severe = dataclasses.replace(STATE, tsb=-32.0)
    assert _options(severe) == ("Options: move_workout w1 (Mon run intervals) to Wed 2025-03-12; "
                                "replace_with_recovery w4 (Thu bike tempo) 35min")
    ill = dataclasses.replace(STATE, ill_or_injured=True)
    assert _options(ill) == ("Options: add_rest_day w1 (Mon run intervals); add_rest_day w2 (Tue bike endurance); "
                             "add_rest_day w3 (Wed run recovery)")


def test_render_is_deterministic_and_order_independent() -> None:
    plan = _plan()
    a = render_context(STATE, plan, TODAY, None)
    b = render_context(STATE, list(reversed(plan)), TODAY, None)
    c = render_context(STATE, _plan(), TODAY, None)
    assert a == b == c
    assert "Athlete:" not in a
    assert render_context(STATE, plan, TODAY, "   ") == a


def test_render_flags_and_empty_plan() -> None:
    ill = AthleteState(ctl=40, atl=30, tsb=10.4, sleep_hours=8, soreness=2, ill_or_injured=True)
    text = render_context(ill, [], TODAY, None)
    assert text.splitlines() == [
        "Today 2025-03-10 Mon",
        "Load CTL 40 ATL 30 TSB +10 (neutral) ramp +0.0",
        "Sleep 8.0h soreness 2/10 HRV 0% ill/injured yes",
        "Readiness: ill/injured",
        "Plan: none",
        "Options: none",
    ]


@pytest.mark.parametrize(("state", "expected"), [
    (AthleteState(ctl=60, atl=84, tsb=-24, sleep_hours=7, soreness=3), "fatigued (TSB -24)"),
    (AthleteState(ctl=60, atl=84, tsb=-24, sleep_hours=5.5, soreness=3), "fatigued, severe (TSB -24, sleep 5.5h)"),
    (AthleteState(ctl=60, atl=92, tsb=-32, sleep_hours=7, soreness=3), "fatigued, severe (TSB -32)"),
    (AthleteState(ctl=60, atl=40, tsb=14, sleep_hours=8, soreness=2), "fresh"),
    (AthleteState(ctl=60, atl=40, tsb=14, sleep_hours=8, soreness=2, days_to_race=9), "tapering, race in 9d"),
    (AthleteState(ctl=60, atl=60, tsb=0, sleep_hours=7, soreness=4, days_to_race=48), "normal, race in 48d"),
    (AthleteState(ctl=60, atl=60, tsb=0, sleep_hours=4.5, soreness=4, ill_or_injured=True),
     "ill/injured, fatigued, severe (sleep 4.5h)"),
])
def test_readiness_states_what_the_rules_derive(state: AthleteState, expected: str) -> None:
    assert readiness(state) == expected
    assert f"Readiness: {expected}" in render_context(state, [], TODAY)


@pytest.mark.parametrize(("tsb", "band"), [(-31, "very low"), (-30.4, "low"), (-21, "low"), (-20, "neutral"),
                                           (10.4, "neutral"), (10.6, "high")])
def test_tsb_band_follows_the_shown_value(tsb: float, band: str) -> None:
    assert tsb_band(tsb) == band


def test_render_is_short() -> None:
    long_question = "Should I do more? " * 40
    text = render_context(STATE, _plan(), TODAY, long_question)
    assert text.endswith("\u2026")
    assert len(text.splitlines()[-1]) <= len("Athlete: ") + 200
    # pessimistic token count: every digit, word and punctuation mark is a token
    tokens = re.findall(r"\d|[A-Za-z]+|[^\w\s]", text)
    assert len(tokens) < 340, len(tokens)
    assert len(re.findall(r"\d|[A-Za-z]+|[^\w\s]", SYSTEM_PROMPT)) < 60


def test_system_prompt() -> None:
    assert "JSON" in SYSTEM_PROMPT and "Polarize" in SYSTEM_PROMPT
    assert SYSTEM_PROMPT.count(".") <= 2


def test_the_options_name_the_rules_answer() -> None:
    """Every operation of a rule-based answer, with its workout's day, sport and type (as the message names
    it) and its value (a recovery length, an extension, a move day), is among the options, so a model
    selects it instead of computing it: the first option, or every one when ill; none when the plan stays."""
    from polarize.synthetic import generate_examples

    seen: set[str] = set()
    for example in generate_examples(120, 3, free_text_share=0.0, budget=0):
        assert example.expected is not None
        line = example.chat["messages"][1]["content"].splitlines()[-1 if example.question is None else -2]
        assert line.startswith("Options: ")
        options = [] if line == "Options: none" else line.removeprefix("Options: ").split("; ")
        shown = []
        workouts = {w.id: w for w in example.upcoming}
        for op in example.expected.operations:
            w = workouts[op.workout_id]
            moved = getattr(op, "new_date", TODAY)
            value = {"change_duration": f" to {getattr(op, 'new_duration_min', 0)}min",
                     "replace_with_recovery": f" {getattr(op, 'new_duration_min', 0)}min",
                     "move_workout": f" to {weekday(moved)} {moved.isoformat()}",
                     "reduce_intensity": " to Z2", "add_rest_day": ""}[op.op]
            shown.append(f"{op.op} {op.workout_id} ({weekday(w.date)} {w.sport} {w.type}){value}")
            seen.add(op.op)
        assert shown == (options if example.branch == "ill" else options[:1]), (shown, options)
    assert {"change_duration", "replace_with_recovery", "move_workout", "reduce_intensity", "add_rest_day"} <= seen
