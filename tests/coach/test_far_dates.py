"""Dates far from now, as the API fuzzer sends them: an athlete's ``today`` outside the calendar the
load windows need (``today=0001-01-02`` made the load and the recommendation fail with a 500) is a
400 naming it; and a workout from centuries ago (or a ``today`` centuries ahead) does not make every
load or recommendation of that athlete compute the load day by day since then (seconds each)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from coachforge_coach import service
from coachforge_coach.schemas import ApplyIn, ImportBatch, RecommendIn
from coachforge_coach.service import CoachDeps
from coachforge_shared.errors import InvalidArgument


@pytest.mark.parametrize("today", [dt.date(1, 1, 2), dt.date(1899, 12, 31), dt.date(3000, 1, 1), dt.date.max])
def test_today_out_of_range_is_refused_naming_it(deps: CoachDeps, today: dt.date) -> None:
    service.import_batch(deps, "acme", ImportBatch.model_validate({"athletes": [{"external_id": "anna"}]}))
    keep = {"operations": [], "message": "Keep going."}
    for call in (lambda: service.load_metrics(deps, "acme", "anna", today, days=3650),
                 lambda: service.recommend(deps, "acme", "anna", RecommendIn(today=today)),
                 lambda: service.apply(deps, "acme", "k", "anna", ApplyIn(request_id="r1", today=today,
                                                                          modification=keep))):
        with pytest.raises(InvalidArgument) as refused:
            call()
        assert refused.value.param == "today" and str(today) in refused.value.message


def test_today_at_the_edges_is_answered(deps: CoachDeps) -> None:
    service.import_batch(deps, "acme", ImportBatch.model_validate({"athletes": [{"external_id": "anna"}]}))
    for today in (service.EARLIEST_TODAY, service.LATEST_TODAY):
        load = service.load_metrics(deps, "acme", "anna", today, days=3650)
        assert load["today"]["date"] == today.isoformat()
        assert service.recommend(deps, "acme", "anna", RecommendIn(today=today))["state"]["tsb"] == 0.0


def test_the_load_reads_a_bounded_window_however_old_the_workouts(deps: CoachDeps,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    old = {"external_id": "w-old", "athlete_id": "anna", "status": "completed", "date": "1900-01-01",
           "sport": "run", "type": "endurance", "zone": 2, "duration_min": 60, "tss": 80}
    service.import_batch(deps, "acme", ImportBatch.model_validate({"athletes": [{"external_id": "anna"}],
                                                                   "workouts": [old]}))
    computed: list[tuple[dt.date, dt.date]] = []
    compute_load = service.compute_load

    def spy(daily: Any, *, until: dt.date, start: dt.date | None = None) -> Any:
        points = compute_load(daily, until=until, start=start)
        computed.append((points[0].day, points[-1].day) if points else (until, until))
        return points

    monkeypatch.setattr(service, "compute_load", spy)
    for today in (dt.date(1900, 1, 2), dt.date(2026, 6, 1), service.LATEST_TODAY):
        load = service.load_metrics(deps, "acme", "anna", today, days=2)
        service.recommend(deps, "acme", "anna", RecommendIn(today=today))
        assert load["today"]["date"] == today.isoformat()
    for first, last in computed:
        assert (last - first).days <= service.LOAD_WINDOW_DAYS
    near = service.load_metrics(deps, "acme", "anna", dt.date(1900, 1, 2), days=2)["points"]
    assert near[0] == {"date": "1900-01-01", "tss": 80.0, "ctl": 1.9, "atl": 11.43, "tsb": 0.0, "ramp": 1.9}
