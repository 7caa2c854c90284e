"""Request bodies of the coach API (REST bodies and the gRPC requests are validated by these)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from polarize.schema import WorkoutType

ExternalId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                                  description="The app's own id (letters, digits, '.', '_', ':', '-').")]
WorkoutId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                                 description="The app's own workout id, at most 32 characters: the model "
                                             "names workouts by it.")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanIn(_Body):
    """The plan the athlete currently follows."""

    name: str = Field("", max_length=200)
    phase: str = Field("", max_length=40, description="e.g. base, build, peak, taper, recovery.")
    goal: str = Field("", max_length=200, description="Goal event.")
    goal_date: dt.date | None = None


class AthleteIn(_Body):
    """An athlete; importing the same external_id again updates it."""

    external_id: ExternalId
    name: str = Field("", max_length=200)
    sport: str = Field("", max_length=40, description="Main sport: run, bike, swim, tri, …")
    ill_or_injured: bool = Field(False, description="Flagged ill or injured: key sessions may then be dropped.")
    hrv_baseline_ms: float | None = Field(None, gt=0, le=300,
                                          description="HRV baseline; default: the average of the last 28 days.")
    plan: PlanIn | None = None


class WorkoutIn(_Body):
    """A planned or completed workout; importing the same external_id again updates it."""

    external_id: WorkoutId
    athlete_id: ExternalId | None = Field(None, description="The athlete's external id (batch import only).")
    status: Literal["planned", "completed"] = "planned"
    date: dt.date
    sport: str = Field(min_length=1, max_length=40)
    type: WorkoutType
    zone: int = Field(ge=1, le=5, description="Intensity zone 1..5.")
    duration_min: int = Field(gt=0, le=1440)
    tss: float = Field(ge=0, le=1000)
    key_session: bool = False
    notes: str = Field("", max_length=1000)


class WellnessIn(_Body):
    """How the athlete felt on one day; importing the same athlete and date again updates it."""

    athlete_id: ExternalId | None = Field(None, description="The athlete's external id (batch import only).")
    date: dt.date
    sleep_hours: float | None = Field(None, ge=0, le=24)
    soreness: int | None = Field(None, ge=1, le=10, description="1 (fresh) .. 10 (very sore).")
    hrv_ms: float | None = Field(None, gt=0, le=300)
    resting_hr: int | None = Field(None, ge=20, le=220)
    rpe: int | None = Field(None, ge=1, le=10, description="Perceived exertion of the day, 1..10.")
    notes: str = Field("", max_length=1000)


class ImportBatch(_Body):
    """Athletes, workouts and wellness days in one transaction (workouts and days name their athlete)."""

    athletes: list[AthleteIn] = Field(default_factory=list, max_length=1000)
    workouts: list[WorkoutIn] = Field(default_factory=list, max_length=20000)
    wellness: list[WellnessIn] = Field(default_factory=list, max_length=20000)


class RecommendIn(_Body):
    """Ask for a recommendation (a preview: nothing is changed)."""

    model: str | None = Field(None, min_length=1, max_length=300,
                              description="Model id or avatar; default: the coach's configured model.")
    question: str | None = Field(None, max_length=2000, description="The athlete's question, if any.")
    today: dt.date | None = Field(None, description="The athlete's today; default: the server's date (UTC).")
    token_budget: int | None = Field(None, ge=128, le=32768, description="Prompt budget in model tokens.")
    knowledge_base: str | None = Field(
        None, pattern=r"^(kb-[A-Za-z0-9_-]{1,64})?$",
        description="Knowledge base (kb-…) searched for the context's training principles; \"\": none; default: "
                    "the coach's configured knowledge_base.")


class ApplyIn(_Body):
    """Apply a recommendation (by id) or a modification given here; idempotent by request_id."""

    request_id: str = Field(min_length=1, max_length=100, description="Client-chosen id; a repeat is a no-op.")
    recommendation_id: str | None = Field(None, max_length=64)
    modification: dict[str, Any] | None = Field(
        None, description="A workout modification (see GET /v1/coach/schema); instead of recommendation_id.")
    today: dt.date | None = None


class OutcomeIn(_Body):
    """Whether the athlete followed a recommendation (recorded as feedback on its stored completion)."""

    followed: StrictBool = Field(description="The athlete followed it (rating 5) or not (rating 2).")
    comment: str | None = Field(None, max_length=2000, description="The athlete's words, if any.")
