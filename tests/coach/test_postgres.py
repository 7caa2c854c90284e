"""Transaction semantics on PostgreSQL: concurrent applies of one request id apply it once; an
apply is all or nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TODAY, ScriptedModels, athlete_batch  # type: ignore[import-not-found]
from sqlalchemy import func, select

from coachforge_coach import service
from coachforge_coach.models import PlanChange
from coachforge_coach.schemas import ApplyIn
from coachforge_coach.service import CoachDeps
from coachforge_coach.settings import CoachSettings
from coachforge_shared import migrate
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import FailedPrecondition

MOD = {"operations": [{"op": "change_duration", "workout_id": "p-fri", "new_duration_min": 50, "reason": "short",
                       "confidence": 0.5}], "message": "Shorter Friday."}


@pytest.fixture
def pg(scratch_postgres: str, tmp_path: Path) -> Iterator[CoachDeps]:
    migrate.upgrade(scratch_postgres)
    db = Database(scratch_postgres)
    create_tenant(db, "acme")
    deps = CoachDeps(db=db, settings=CoachSettings(), models_dir=tmp_path, models=ScriptedModels())
    service.import_batch(deps, "acme", athlete_batch())
    yield deps
    db.dispose()


def _friday(deps: CoachDeps) -> dict[str, object]:
    rows = service.list_workouts(deps, "acme", "anna", TODAY, TODAY + dt.timedelta(days=7))
    return next(w for w in rows if w["external_id"] == "p-fri")


def test_concurrent_applies_of_one_request_apply_once(pg: CoachDeps) -> None:
    version = _friday(pg)["version"]
    body = ApplyIn.model_validate({"request_id": "same", "modification": MOD, "today": TODAY.isoformat()})
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: service.apply(pg, "acme", "k", "anna", body), range(6)))
    assert len({r["id"] for r in results}) == 1
    assert sum(1 for r in results if not r["replayed"]) == 1
    with pg.db.session() as s:
        assert s.scalar(select(func.count()).select_from(PlanChange)) == 1
    friday = _friday(pg)
    assert friday["duration_min"] == 50 and friday["version"] == version + 1


def test_concurrent_applies_of_different_requests_are_serialised(pg: CoachDeps) -> None:
    bodies = [ApplyIn.model_validate({"request_id": f"r{i}", "today": TODAY.isoformat(), "modification": {
        "operations": [{"op": "change_duration", "workout_id": "p-fri", "new_duration_min": 55 - i, "reason": "x",
                        "confidence": 0.5}], "message": "x"}}) for i in range(4)]
    version = _friday(pg)["version"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda b: service.apply(pg, "acme", "k", "anna", b), bodies))
    assert all(r["status"] == "applied" for r in results)
    # every change saw the one before it: each "before" is a distinct version, no update was lost
    befores = sorted(r["before"][0]["version"] for r in results)
    assert befores == [version, version + 1, version + 2, version + 3]
    assert _friday(pg)["version"] == version + 4
    # only the newest change can be undone; the others touched a workout changed since
    newest = max(results, key=lambda r: r["after"][0]["version"])
    for r in results:
        if r is not newest:
            with pytest.raises(FailedPrecondition, match="changed after"):
                service.undo(pg, "acme", "k", r["id"])
    assert service.undo(pg, "acme", "k", newest["id"])["status"] == "undone"
