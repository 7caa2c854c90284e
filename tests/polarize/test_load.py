"""CTL / ATL / TSB / ramp against hand-computed values."""

from __future__ import annotations

import datetime as dt

import pytest

from polarize.load import LoadPoint, compute_load, load_on

D1 = dt.date(2025, 3, 1)


def _d(offset: int) -> dt.date:
    return D1 + dt.timedelta(days=offset)


def test_small_series_by_hand() -> None:
    # TSS: day1 = 100, day2 missing (0), day3 = 50.
    points = compute_load({_d(0): 100.0, _d(2): 50.0}, until=_d(2))
    assert [p.day for p in points] == [_d(0), _d(1), _d(2)]
    assert [p.tss for p in points] == [100.0, 0.0, 50.0]

    p1, p2, p3 = points
    # Day 1: ctl = 0 + (100 - 0)/42 = 50/21  = 2.380952
    #        atl = 0 + (100 - 0)/7  = 100/7  = 14.285714
    #        tsb = yesterday's 0 - 0 = 0; ramp = ctl - 0 (no history) = 2.380952
    assert p1.ctl == pytest.approx(2.380952, abs=1e-6)
    assert p1.atl == pytest.approx(14.285714, abs=1e-6)
    assert p1.tsb == 0.0
    assert p1.ramp == pytest.approx(2.380952, abs=1e-6)
    # Day 2 (0 TSS): ctl = 50/21 * 41/42 = 1025/441 = 2.324263
    #                atl = 100/7 * 6/7   = 600/49   = 12.244898
    #                tsb = 50/21 - 100/7 = -250/21  = -11.904762
    assert p2.ctl == pytest.approx(2.324263, abs=1e-6)
    assert p2.atl == pytest.approx(12.244898, abs=1e-6)
    assert p2.tsb == pytest.approx(-11.904762, abs=1e-6)
    assert p2.ramp == pytest.approx(2.324263, abs=1e-6)
    # Day 3 (50 TSS): ctl = 1025/441 * 41/42 + 50/42 = (42025 + 22050)/18522 = 64075/18522 = 3.459400
    #                 atl = 600/49 * 6/7 + 50/7      = (3600 + 2450)/343     = 6050/343    = 17.638484
    #                 tsb = 1025/441 - 600/49        = (1025 - 5400)/441     = -4375/441   = -9.920635
    assert p3.ctl == pytest.approx(3.459400, abs=1e-6)
    assert p3.atl == pytest.approx(17.638484, abs=1e-6)
    assert p3.tsb == pytest.approx(-9.920635, abs=1e-6)
    assert p3.ramp == pytest.approx(3.459400, abs=1e-6)


def test_ramp_is_ctl_change_over_seven_days() -> None:
    # 70 TSS every day: ctl_n = 70 * (1 - (41/42)^n).
    # ctl_1 = 70/42 = 1.666667; ctl_8 = 70 * (1 - 0.824663) = 12.273587  ((41/42)^8 = 0.824663)
    points = compute_load({_d(i): 70.0 for i in range(10)}, until=_d(9))
    assert points[0].ctl == pytest.approx(1.666667, abs=1e-6)
    assert points[7].ctl == pytest.approx(12.2736, abs=1e-3)
    # day 8 ramp = ctl_8 - ctl_1 = 12.273587 - 1.666667 = 10.606921
    assert points[7].ramp == pytest.approx(10.6069, abs=1e-3)
    for i in range(7, 10):
        assert points[i].ramp == pytest.approx(points[i].ctl - points[i - 7].ctl, abs=1e-12)
    # before a week of history the reference CTL is the starting 0
    assert points[6].ramp == pytest.approx(points[6].ctl, abs=1e-12)


def test_steady_state_converges() -> None:
    # After 400 days at 60 TSS: ctl = 60 * (1 - (41/42)^400) = 60 - 0.004, atl = 60, tsb ~ 0, ramp ~ 0.
    p = compute_load({_d(i): 60.0 for i in range(400)}, until=_d(399))[-1]
    assert p.ctl == pytest.approx(60.0, abs=0.01)
    assert p.atl == pytest.approx(60.0, abs=1e-6)
    assert p.tsb == pytest.approx(0.0, abs=0.01)
    assert p.ramp == pytest.approx(0.0, abs=0.01)


def test_rest_after_block_makes_tsb_positive() -> None:
    history = {_d(i): 100.0 for i in range(60)}
    points = compute_load(history, until=_d(69))
    assert points[59].tsb < 0  # fatigue after the block
    assert points[69].tsb > 0  # fresh after ten days off
    assert points[69].tss == 0.0


def test_bounds() -> None:
    history = {_d(0): 100.0, _d(5): 80.0}
    assert compute_load({}, until=_d(3)) == []
    assert compute_load(history, until=_d(-1)) == []
    # entries after ``until`` are ignored
    assert compute_load(history, until=_d(3)) == compute_load({_d(0): 100.0}, until=_d(3))
    # an explicit earlier start adds zero days with zero load
    early = compute_load(history, until=_d(0), start=_d(-2))
    assert [p.ctl for p in early[:2]] == [0.0, 0.0]
    assert early[2].ctl == pytest.approx(2.380952, abs=1e-6)
    with pytest.raises(ValueError, match="negative TSS"):
        compute_load({_d(0): -1.0}, until=_d(0))


def test_load_on_and_point_is_frozen() -> None:
    p = load_on({_d(0): 100.0}, _d(0))
    assert isinstance(p, LoadPoint)
    assert p.ctl == pytest.approx(2.380952, abs=1e-6)
    assert load_on({}, _d(0)) is None
    with pytest.raises(AttributeError):
        p.ctl = 1.0  # type: ignore[misc]
