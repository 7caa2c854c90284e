"""Request bodies of the registry API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CreateAvatar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Alias, e.g. coach-anna.")
    model: str = Field(min_length=1, description="Model id it answers with (base or fine-tuned).")
    fallback: Literal["error", "base"] = Field(
        "error", description="When its adapter cannot be served: fail, or answer from the base model.")
    reason: str = Field("", max_length=500)


class Activate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Model id to activate.")
    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Pin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Model id to pin the avatar to.")
    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Unpin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Candidate model id; null clears the candidate.")
    traffic_share: int = Field(0, ge=0, le=100, description="Share of traffic (0-100) meant for the candidate.")
    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Evaluation name, e.g. coach-rules-v1.")
    metrics: dict[str, float] = Field(description="Metric name -> value, e.g. {\"valid_json\": 0.92}.")
