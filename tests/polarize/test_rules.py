"""The rule-based coach: every branch of recommend() and every safety rule of check_operation()."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from polarize.load import LoadPoint
from polarize.rules import (
    DEFAULT_CONFIG,
    RULES,
    AthleteState,
    PlannedWorkout,
    RuleConfig,
    RuleViolation,
    apply_modification,
    check_modification,
    check_operation,
    classify_state,
    recommend,
)
from polarize.schema import (
    AddRestDay,
    ChangeDuration,
    Modification,
    MoveWorkout,
    Operation,
    ReduceIntensity,
    ReplaceWithRecovery,
    SwapWorkout,
)

TODAY = dt.date(2025, 3, 10)  # a Monday


def _day(offset: int) -> dt.date:
    return TODAY + dt.timedelta(days=offset)


def _w(
    wid: str, offset: int, sport: str, wtype: str, zone: int, minutes: int, tss: float, key: bool = False
) -> PlannedWorkout:
    return PlannedWorkout(
        id=wid,
        date=_day(offset),
        sport=sport,
        type=wtype,  # type: ignore[arg-type]
        zone=zone,
        duration_min=minutes,
        tss=tss,
        key_session=key,
    )


W0 = _w("w0", -1, "run", "intervals", 4, 60, 90)  # yesterday: already done
W1 = _w("w1", 0, "bike", "endurance", 2, 60, 50)
W2 = _w("w2", 1, "run", "intervals", 4, 60, 90)
W3 = _w("w3", 2, "run", "recovery", 1, 40, 20)
W4 = _w("w4", 3, "bike", "tempo", 3, 60, 70, key=True)
W5 = _w("w5", 4, "run", "endurance", 2, 60, 50)
W6 = _w("w6", 5, "bike", "long", 2, 150, 125)
W7 = _w("w7", 6, "swim", "endurance", 2, 45, 38)
PLAN = [W0, W1, W2, W3, W4, W5, W6, W7]  # this week (w1..w7): 443 TSS; hard days Tue and Thu

NORMAL = AthleteState(ctl=60, atl=65, tsb=-5, sleep_hours=7.5, soreness=4, ramp=2.0, hrv_drop_pct=5)
TIRED = dataclasses.replace(NORMAL, tsb=-25, atl=85)  # one red flag, not severe
WRECKED = dataclasses.replace(TIRED, sleep_hours=5.5)  # two red flags: severe
SORE = dataclasses.replace(NORMAL, soreness=8)
SHORT_SLEEP = dataclasses.replace(NORMAL, sleep_hours=5.9)
LOW_HRV = dataclasses.replace(NORMAL, hrv_drop_pct=20)
ILL = dataclasses.replace(NORMAL, ill_or_injured=True)
FRESH = AthleteState(ctl=60, atl=45, tsb=15, sleep_hours=8.0, soreness=2, ramp=2.0, hrv_drop_pct=0)


def _mod(*ops: Operation) -> Modification:
    return Modification(operations=list(ops), message="m")


def _rules(violations: list[RuleViolation]) -> list[tuple[str, int]]:
    return [(v.rule, v.operation_index) for v in violations]


def _ok(mod: Modification, state: AthleteState, plan: list[PlannedWorkout] = PLAN) -> None:
    assert check_operation(mod, state, plan, TODAY) == []


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("state", "branch"),
    [
        (NORMAL, "normal"),
        (TIRED, "fatigued"),
        (SORE, "fatigued"),
        (SHORT_SLEEP, "fatigued"),
        (LOW_HRV, "fatigued"),
        (ILL, "ill"),
        (dataclasses.replace(WRECKED, ill_or_injured=True), "ill"),  # ill beats fatigued
        (FRESH, "fresh"),
        (dataclasses.replace(FRESH, tsb=10), "normal"),  # TSB must be above 10
        (dataclasses.replace(FRESH, soreness=4), "normal"),
        (dataclasses.replace(FRESH, sleep_hours=6.9), "normal"),
        (dataclasses.replace(FRESH, ramp=6.0), "normal"),
        (dataclasses.replace(NORMAL, tsb=-20), "normal"),  # strictly below -20
    ],
)
def test_classify_state(state: AthleteState, branch: str) -> None:
    assert classify_state(state) == branch


def test_state_validation_and_from_load() -> None:
    with pytest.raises(ValueError, match="soreness"):
        AthleteState(ctl=1, atl=1, tsb=0, sleep_hours=8, soreness=11)
    with pytest.raises(ValueError, match="zone"):
        _w("x", 0, "run", "tempo", 6, 60, 70)
    point = LoadPoint(day=TODAY, tss=50, ctl=61.5, atl=70.25, tsb=-8.75, ramp=3.5)
    state = AthleteState.from_load(point, sleep_hours=7, soreness=3, hrv_drop_pct=4)
    assert (state.ctl, state.atl, state.tsb, state.ramp) == (61.5, 70.25, -8.75, 3.5)
    assert not state.ill_or_injured


# --------------------------------------------------------------------------- recommend branches


def test_recommend_normal_keeps_plan() -> None:
    mod = recommend(NORMAL, PLAN, TODAY)
    assert mod.operations == []
    assert "TSB -5" in mod.message and "Thu's bike tempo" in mod.message


def test_recommend_fatigued_reduces_next_hard_session() -> None:
    mod = recommend(TIRED, PLAN, TODAY)
    assert mod.operations == [ReduceIntensity(workout_id="w2", new_zone=2, reason="TSB -25", confidence=0.75)]
    assert "TSB -25" in mod.message
    _ok(mod, TIRED)


@pytest.mark.parametrize("state", [SORE, SHORT_SLEEP, LOW_HRV])
def test_recommend_other_red_flags(state: AthleteState) -> None:
    mod = recommend(state, PLAN, TODAY)
    assert [(op.op, op.workout_id) for op in mod.operations] == [("reduce_intensity", "w2")]
    _ok(mod, state)


def test_recommend_severe_fatigue_replaces_with_recovery() -> None:
    mod = recommend(WRECKED, PLAN, TODAY)
    # 60 min * 0.6 = 36 -> rounded to 35 min, within 20..45
    assert mod.operations == [
        ReplaceWithRecovery(workout_id="w2", new_duration_min=35, reason="TSB -25, sleep 5.5h", confidence=0.85)
    ]
    _ok(mod, WRECKED)


def test_recommend_fatigued_moves_key_session() -> None:
    plan = [w for w in PLAN if w.id != "w2"]  # the next hard session is now the key tempo on Thu
    mod = recommend(TIRED, plan, TODAY)
    assert mod.operations == [MoveWorkout(workout_id="w4", new_date=_day(5), reason="TSB -25", confidence=0.7)]
    assert "Sat" in mod.message
    _ok(mod, TIRED, plan)


def test_recommend_fatigued_without_hard_sessions_keeps_plan() -> None:
    plan = [W1, W3, W5, W6, W7]
    mod = recommend(TIRED, plan, TODAY)
    assert mod.operations == []
    assert "already easy" in mod.message


def test_recommend_ill_adds_rest_days() -> None:
    mod = recommend(ILL, PLAN, TODAY)
    assert [(op.op, op.workout_id) for op in mod.operations] == [
        ("add_rest_day", "w1"),
        ("add_rest_day", "w2"),
        ("add_rest_day", "w3"),
    ]
    _ok(mod, ILL)


def test_recommend_ill_rests_key_session_too() -> None:
    plan = [W4, W5, W6]
    mod = recommend(ILL, plan, TODAY)
    # nothing in the next three days: the next workout (the key tempo) becomes a rest day
    assert [(op.op, op.workout_id) for op in mod.operations] == [("add_rest_day", "w4")]
    _ok(mod, ILL, plan)


def test_recommend_ill_with_empty_plan() -> None:
    mod = recommend(ILL, [W0], TODAY)
    assert mod.operations == []


def test_recommend_fresh_extends_endurance_within_band() -> None:
    mod = recommend(FRESH, PLAN, TODAY)
    # w1: 60 min -> +min(20, 25% = 15) = 75 min; +12.5 TSS on 443 = +2.8 %
    assert mod.operations == [
        ChangeDuration(workout_id="w1", new_duration_min=75, reason="fresh: TSB +15", confidence=0.6)
    ]
    _ok(mod, FRESH)


def test_recommend_fresh_without_candidate_keeps_plan() -> None:
    plan = [W2, W3, W4]
    mod = recommend(FRESH, plan, TODAY)
    assert mod.operations == []
    assert "fresh" in mod.message


def test_recommend_ignores_past_and_is_deterministic() -> None:
    shuffled = list(reversed(PLAN))
    for state in (NORMAL, TIRED, WRECKED, ILL, FRESH):
        assert recommend(state, PLAN, TODAY) == recommend(state, shuffled, TODAY)
        assert all(op.workout_id != "w0" for op in recommend(state, PLAN, TODAY).operations)


def test_recommend_today_excluded_when_configured() -> None:
    config = RuleConfig(allow_today=False)
    mod = recommend(FRESH, PLAN, TODAY, config=config)
    assert [op.workout_id for op in mod.operations] == ["w5"]  # not today's w1
    assert check_operation(mod, FRESH, PLAN, TODAY, config=config) == []


# --------------------------------------------------------------------------- safety rules


@pytest.mark.parametrize(
    ("state", "ops", "expected"),
    [
        (NORMAL, [AddRestDay(workout_id="w99", reason="r", confidence=0.5)], [("unknown_workout", 0)]),
        (NORMAL, [AddRestDay(workout_id="w0", reason="r", confidence=0.5)], [("past_workout", 0)]),
        (
            NORMAL,
            [
                ChangeDuration(workout_id="w1", new_duration_min=70, reason="r", confidence=0.5),
                ChangeDuration(workout_id="w1", new_duration_min=50, reason="r", confidence=0.5),
            ],
            [("duplicate_workout", 1)],
        ),
        (NORMAL, [ReduceIntensity(workout_id="w2", new_zone=4, reason="r", confidence=0.5)], [("not_a_reduction", 0)]),
        (
            NORMAL,
            [ChangeDuration(workout_id="w1", new_duration_min=60, reason="r", confidence=0.5)],
            [("no_change", 0)],
        ),
        (NORMAL, [SwapWorkout(workout_id="w5", new_type="endurance", reason="r", confidence=0.5)], [("no_change", 0)]),
        (NORMAL, [MoveWorkout(workout_id="w5", new_date=_day(4), reason="r", confidence=0.5)], [("no_change", 0)]),
        (NORMAL, [MoveWorkout(workout_id="w1", new_date=_day(-1), reason="r", confidence=0.5)], [("move_to_past", 0)]),
        (NORMAL, [MoveWorkout(workout_id="w5", new_date=_day(8), reason="r", confidence=0.5)], [("move_too_far", 0)]),
        (
            NORMAL,
            [ReplaceWithRecovery(workout_id="w4", new_duration_min=40, reason="r", confidence=0.5)],
            [("key_session_protected", 0)],
        ),
        (
            # dropping the key tempo is also -70 TSS = -15.8 % of the week
            NORMAL,
            [AddRestDay(workout_id="w4", reason="r", confidence=0.5)],
            [("key_session_protected", 0), ("weekly_tss_band", 0)],
        ),
        (
            NORMAL,
            [ReduceIntensity(workout_id="w4", new_zone=2, reason="r", confidence=0.5)],
            [("key_session_protected", 0)],
        ),
        (
            TIRED,
            [SwapWorkout(workout_id="w5", new_type="intervals", reason="r", confidence=0.5)],
            [("no_increase_when_fatigued", 0)],
        ),
        (
            SORE,
            [ChangeDuration(workout_id="w1", new_duration_min=70, reason="r", confidence=0.5)],
            [("no_increase_when_fatigued", 0)],
        ),
        (
            SHORT_SLEEP,
            [ReduceIntensity(workout_id="w4", new_zone=5, reason="r", confidence=0.5)],
            [("not_a_reduction", 0), ("key_session_protected", 0), ("no_increase_when_fatigued", 0)],
        ),
        (
            ILL,
            [ChangeDuration(workout_id="w5", new_duration_min=70, reason="r", confidence=0.5)],
            [("no_increase_when_fatigued", 0)],
        ),
        (
            # +10 min on w1 (+8.3 TSS) and +90 min of Z2 on the long ride (125 -> 200 TSS):
            # 443 -> 526.3 = +18.8 % > +15 %, blamed on the larger increase
            NORMAL,
            [
                ChangeDuration(workout_id="w1", new_duration_min=70, reason="r", confidence=0.5),
                ChangeDuration(workout_id="w6", new_duration_min=240, reason="r", confidence=0.5),
            ],
            [("weekly_tss_band", 1)],
        ),
        (
            # dropping the long ride: 443 -> 318 = -28 %
            NORMAL,
            [AddRestDay(workout_id="w6", reason="r", confidence=0.5)],
            [("weekly_tss_band", 0)],
        ),
        (
            # Tue intervals, Wed becomes intervals, Thu tempo: three hard days in a row
            NORMAL,
            [SwapWorkout(workout_id="w3", new_type="intervals", reason="r", confidence=0.5)],
            [("hard_days_in_a_row", 0)],
        ),
        (
            # yesterday's intervals count: Sun-Mon-Tue
            NORMAL,
            [SwapWorkout(workout_id="w1", new_type="intervals", reason="r", confidence=0.5)],
            [("hard_days_in_a_row", 0)],
        ),
        (
            # moving Tue's intervals next to Thu's tempo plus a new Fri tempo: Wed-Thu-Fri
            NORMAL,
            [
                MoveWorkout(workout_id="w2", new_date=_day(2), reason="r", confidence=0.5),
                SwapWorkout(workout_id="w5", new_type="tempo", reason="r", confidence=0.5),
            ],
            [("hard_days_in_a_row", 0), ("hard_days_in_a_row", 1)],
        ),
    ],
)
def test_each_safety_rule_triggers(state: AthleteState, ops: list[Operation], expected: list[tuple[str, int]]) -> None:
    violations = check_operation(_mod(*ops), state, PLAN, TODAY)
    assert _rules(violations) == expected
    for v in violations:
        assert v.rule in RULES
        assert v.message


@pytest.mark.parametrize(
    ("state", "ops"),
    [
        (NORMAL, [ChangeDuration(workout_id="w1", new_duration_min=70, reason="r", confidence=0.5)]),
        (NORMAL, [SwapWorkout(workout_id="w2", new_type="tempo", reason="r", confidence=0.5)]),
        (NORMAL, [MoveWorkout(workout_id="w4", new_date=_day(5), reason="r", confidence=0.5)]),  # key: move ok
        # +50 TSS = +11.3 %: inside the band
        (NORMAL, [ChangeDuration(workout_id="w6", new_duration_min=210, reason="r", confidence=0.5)]),
        (ILL, [AddRestDay(workout_id="w4", reason="r", confidence=0.5)]),  # key may go when ill
        (ILL, [AddRestDay(workout_id=w.id, reason="r", confidence=0.5) for w in PLAN[1:]]),  # -100 % ok when ill
        (TIRED, [AddRestDay(workout_id="w6", reason="r", confidence=0.5)]),  # -28 % ok when fatigued
        (TIRED, [ReplaceWithRecovery(workout_id="w2", new_duration_min=45, reason="r", confidence=0.5)]),
        (FRESH, [ReduceIntensity(workout_id="w2", new_zone=3, reason="r", confidence=0.5)]),
    ],
)
def test_safe_proposals_pass(state: AthleteState, ops: list[Operation]) -> None:
    _ok(_mod(*ops), state)


def test_existing_hard_streak_is_not_blamed() -> None:
    plan = [
        _w("a", 0, "run", "intervals", 4, 60, 90),
        _w("b", 1, "run", "tempo", 3, 60, 70),
        _w("c", 2, "run", "intervals", 5, 60, 110),
        _w("d", 3, "run", "endurance", 2, 60, 50),
    ]
    _ok(_mod(ChangeDuration(workout_id="d", new_duration_min=65, reason="r", confidence=0.5)), NORMAL, plan)
    # making the run longer is blamed
    violations = check_operation(
        _mod(SwapWorkout(workout_id="d", new_type="tempo", reason="r", confidence=0.5)), NORMAL, plan, TODAY
    )
    assert _rules(violations) == [("hard_days_in_a_row", 0)]


def test_band_and_limits_are_configurable() -> None:
    mod = _mod(ChangeDuration(workout_id="w6", new_duration_min=210, reason="r", confidence=0.5))  # +11.3 %
    assert _rules(check_operation(mod, NORMAL, PLAN, TODAY, config=RuleConfig(tss_band=0.10))) == [
        ("weekly_tss_band", 0)
    ]
    swap = _mod(SwapWorkout(workout_id="w3", new_type="intervals", reason="r", confidence=0.5))
    assert check_operation(swap, NORMAL, PLAN, TODAY, config=RuleConfig(max_hard_in_a_row=3)) == []
    today_only = _mod(ChangeDuration(workout_id="w1", new_duration_min=70, reason="r", confidence=0.5))
    assert _rules(check_operation(today_only, NORMAL, PLAN, TODAY, config=RuleConfig(allow_today=False))) == [
        ("past_workout", 0)
    ]
    assert check_modification is check_operation
    assert DEFAULT_CONFIG.tss_band == 0.15


# --------------------------------------------------------------------------- applying


def test_apply_modification() -> None:
    mod = _mod(
        ReduceIntensity(workout_id="w2", new_zone=2, reason="r", confidence=0.5),
        MoveWorkout(workout_id="w4", new_date=_day(5), reason="r", confidence=0.5),
        AddRestDay(workout_id="w3", reason="r", confidence=0.5),
        ReplaceWithRecovery(workout_id="w5", new_duration_min=30, reason="r", confidence=0.5),
        SwapWorkout(workout_id="w7", new_type="tempo", reason="r", confidence=0.5),
        ChangeDuration(workout_id="w1", new_duration_min=90, reason="r", confidence=0.5),
    )
    after = {w.id: w for w in apply_modification(PLAN, mod)}
    assert "w3" not in after
    # intervals at Z2 are an endurance session; TSS scales 90 * 50/90 = 50
    assert (after["w2"].type, after["w2"].zone, after["w2"].tss) == ("endurance", 2, 50.0)
    assert after["w4"].date == _day(5) and after["w4"].key_session
    # recovery: Z1, 30 min at 30 TSS/h = 15
    assert (after["w5"].type, after["w5"].zone, after["w5"].duration_min, after["w5"].tss) == ("recovery", 1, 30, 15.0)
    # tempo: Z3, 45 min at 70 TSS/h = 52.5
    assert (after["w7"].type, after["w7"].zone, after["w7"].tss) == ("tempo", 3, 52.5)
    # 60 -> 90 min scales 50 TSS to 75
    assert (after["w1"].duration_min, after["w1"].tss) == (90, 75.0)
    assert [w.id for w in apply_modification(PLAN, mod)] == ["w0", "w1", "w2", "w5", "w4", "w6", "w7"]
    with pytest.raises(ValueError, match="unknown workout"):
        apply_modification(PLAN, _mod(AddRestDay(workout_id="nope", reason="r", confidence=0.5)))
