"""Fixtures of the coach tests: a coach on the migrated SQLite database with a scripted model."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coachforge_coach.clients import ChatAnswer
from coachforge_coach.schemas import ImportBatch
from coachforge_coach.service import CoachDeps
from coachforge_coach.settings import CoachSettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import CoachForgeError

TODAY = dt.date(2025, 3, 10)  # a Monday
BASE = "SmolLM2-135M-Instruct"


@dataclass
class ScriptedModels:
    """A ModelClient answering with ``answer`` (text) or raising it (a typed error)."""

    answer: str | CoachForgeError = '{"operations": [], "message": "Keep going."}'
    base: str | CoachForgeError = BASE
    calls: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    feedback_error: Exception | None = None
    completion_ids: int = 0

    def base_model(self, tenant_id: str, model: str) -> str:
        if isinstance(self.base, CoachForgeError):
            raise self.base
        return self.base

    def chat(self, tenant_id: str, model: str, messages: list[dict[str, str]], *, response_format: dict[str, Any],
             max_tokens: int, temperature: float, seed: int, timeout: float,
             store_metadata: dict[str, str] | None = None) -> ChatAnswer:
        self.calls.append({"tenant": tenant_id, "model": model, "messages": messages,
                           "response_format": response_format, "max_tokens": max_tokens,
                           "store_metadata": store_metadata})
        if isinstance(self.answer, CoachForgeError):
            raise self.answer
        self.completion_ids += 1
        return ChatAnswer(content=self.answer, finish_reason="stop", model=model,
                          id=f"chatcmpl-{self.completion_ids}")

    def record_feedback(self, tenant_id: str, completion_id: str, *, rater: str, rating: int, comment: str,
                        timeout: float) -> None:
        self.feedback.append({"tenant": tenant_id, "completion_id": completion_id, "rater": rater,
                              "rating": rating, "comment": comment})
        if self.feedback_error is not None:
            raise self.feedback_error


@pytest.fixture
def models() -> ScriptedModels:
    return ScriptedModels()


@pytest.fixture
def deps(db: Database, models: ScriptedModels, tmp_path: Path) -> CoachDeps:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    return CoachDeps(db=db, settings=CoachSettings(), models_dir=tmp_path / "no-models", models=models)


def day(offset: int) -> str:
    return (TODAY + dt.timedelta(days=offset)).isoformat()


def workout(wid: str, offset: int, kind: str = "endurance", zone: int = 2, minutes: int = 60, tss: float = 50.0,
            *, status: str = "planned", key: bool = False, athlete: str = "anna") -> dict[str, Any]:
    return {"external_id": wid, "athlete_id": athlete, "status": status, "date": day(offset), "sport": "run",
            "type": kind, "zone": zone, "duration_min": minutes, "tss": tss, "key_session": key}


def week_plan(athlete: str = "anna") -> list[dict[str, Any]]:
    """Mon intervals (key), Tue endurance, Wed tempo, Thu recovery, Fri endurance, Sat long, Sun rest."""
    return [
        workout("p-mon", 0, "intervals", 4, 60, 85, key=True, athlete=athlete),
        workout("p-tue", 1, "endurance", 2, 60, 50, athlete=athlete),
        workout("p-wed", 2, "tempo", 3, 60, 70, athlete=athlete),
        workout("p-thu", 3, "recovery", 1, 40, 20, athlete=athlete),
        workout("p-fri", 4, "endurance", 2, 60, 50, athlete=athlete),
        workout("p-sat", 5, "long", 2, 120, 100, athlete=athlete),
    ]


def athlete_batch(*, daily_tss: float = 60.0, days: int = 120, sleep: float = 7.5, soreness: int = 3,
                  ill: bool = False, athlete: str = "anna", recent_tss: float | None = None) -> ImportBatch:
    """An athlete with ``days`` of completed training (by default steady: CTL ~57, TSB ~-3; ``recent_tss``
    over the last 7 days), wellness for the last 14 days, and next week's plan."""
    done = []
    for back in range(days, 0, -1):
        tss = recent_tss if recent_tss is not None and back <= 7 else daily_tss
        done.append(workout(f"d{back}", -back, "endurance", 2, 60, tss, status="completed", athlete=athlete))
    wellness = [{"athlete_id": athlete, "date": day(-back), "sleep_hours": sleep, "soreness": soreness,
                 "hrv_ms": 60.0, "resting_hr": 48} for back in range(14, -1, -1)]
    return ImportBatch.model_validate({
        "athletes": [{"external_id": athlete, "name": athlete.title(), "sport": "run", "ill_or_injured": ill,
                      "plan": {"name": "Spring", "phase": "build", "goal": "10k", "goal_date": day(40)}}],
        "workouts": done + week_plan(athlete), "wellness": wellness})


def answer(*ops: dict[str, Any], message: str = "Adjusted.") -> str:
    return json.dumps({"operations": list(ops), "message": message})
