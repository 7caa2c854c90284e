"""Splitting a proposal into accepted and rejected operations, and the taper rule."""

from __future__ import annotations

import datetime as dt

from polarize.rules import (
    UNKNOWN_WORKOUT,
    AthleteState,
    PlannedWorkout,
    RuleViolation,
    check_operation,
    classify_state,
    partition_operations,
    recommend,
    weekly_tss,
)
from polarize.schema import ChangeDuration, Modification, ReduceIntensity

TODAY = dt.date(2025, 3, 10)
NORMAL = AthleteState(ctl=60, atl=62, tsb=-2, sleep_hours=7.5, soreness=3)
FRESH = AthleteState(ctl=60, atl=45, tsb=15, sleep_hours=8, soreness=2)


def plan() -> list[PlannedWorkout]:
    return [
        PlannedWorkout(id="a", date=TODAY, sport="run", type="endurance", zone=2, duration_min=60, tss=50),
        PlannedWorkout(id="b", date=TODAY + dt.timedelta(days=1), sport="run", type="tempo", zone=3,
                       duration_min=60, tss=70),
        PlannedWorkout(id="c", date=TODAY + dt.timedelta(days=3), sport="run", type="long", zone=2,
                       duration_min=120, tss=100),
        PlannedWorkout(id="later", date=TODAY + dt.timedelta(days=9), sport="run", type="long", zone=2,
                       duration_min=120, tss=100),
    ]


def extend(wid: str, minutes: int) -> ChangeDuration:
    return ChangeDuration(workout_id=wid, new_duration_min=minutes, reason="more", confidence=0.5)


def test_weekly_tss_counts_the_rules_week_only() -> None:
    assert weekly_tss(plan(), TODAY) == 220.0


def test_partition_rechecks_the_survivors_together() -> None:
    # +10 TSS (a) and +16.7 TSS (c) are each inside +15 % of 220 (33), but together with the
    # +30 TSS of b's extension the week grows 26 %: the biggest culprit (b) goes first, then the rest
    # fit the band again.
    mod = Modification(operations=[extend("a", 72), extend("b", 85), extend("c", 140)], message="More.")
    assert [v.operation_index for v in check_operation(mod, NORMAL, plan(), TODAY)] == [1]
    accepted, violations = partition_operations(mod, NORMAL, plan(), TODAY)
    assert accepted == [0, 2]
    assert [(v.operation_index, v.rule) for v in violations] == [(1, "weekly_tss_band")]
    survivors = Modification(operations=[mod.operations[i] for i in accepted], message="More.")
    assert check_operation(survivors, NORMAL, plan(), TODAY) == []


def test_partition_keeps_the_callers_rejections() -> None:
    mod = Modification(operations=[extend("a", 65), ReduceIntensity(workout_id="b", new_zone=2, reason="x",
                                                                     confidence=0.5)], message="x")
    early = [RuleViolation(UNKNOWN_WORKOUT, 0, "removed")]
    accepted, violations = partition_operations(mod, NORMAL, plan(), TODAY, rejected=early)
    assert accepted == [1] and violations == early
    assert partition_operations(Modification(operations=[], message="x"), NORMAL, plan(), TODAY) == ([], [])


def test_a_taper_takes_load_away_only() -> None:
    tapering = AthleteState(ctl=60, atl=45, tsb=15, sleep_hours=8, soreness=2, days_to_race=6)
    assert classify_state(FRESH) == "fresh" and classify_state(tapering) == "normal"
    assert recommend(tapering, plan(), TODAY).operations == []
    violations = check_operation(Modification(operations=[extend("c", 130)], message="x"), tapering, plan(), TODAY)
    assert [v.rule for v in violations] == ["no_increase_when_fatigued"]
    assert "tapering, race in 6d" in violations[0].message
    far = AthleteState(ctl=60, atl=45, tsb=15, sleep_hours=8, soreness=2, days_to_race=40)
    assert classify_state(far) == "fresh"


def test_response_format_narrowed_to_the_weeks_workouts() -> None:
    from polarize.schema import modification_json_schema, response_format

    assert response_format()["json_schema"]["schema"] == modification_json_schema()
    narrowed = response_format(["w2", "w1", "w2"])["json_schema"]["schema"]
    assert narrowed["properties"]["operations"]["maxItems"] == 2
    for name, definition in narrowed["$defs"].items():
        assert definition["properties"]["workout_id"] == {"type": "string", "enum": ["w1", "w2"],
                                                          "title": "Workout Id"}, name
    assert response_format([])["json_schema"]["schema"]["properties"]["operations"]["maxItems"] == 0
    assert modification_json_schema()["properties"]["operations"]["maxItems"] == 7  # the published one unchanged
