"""Request bodies of the registry API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class CreateAvatar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Alias, e.g. coach-anna.")
    model: str = Field(min_length=1, description="Model id it answers with (base or fine-tuned).")
    fallback: Literal["error", "base"] = Field(
        "error", description="When its adapter cannot be served: fail, or answer from the base model.")
    reason: str = Field("", max_length=500)
    store: StrictBool | None = Field(
        None, description="Keep its chat completions when a request does not say store (null: the tenant's "
                          "default, GET /v1/chat/completions/settings).")


class UpdateAvatar(BaseModel):
    """``PATCH /v1/avatars/{name}``: the avatar's settings; fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    store: StrictBool | None = Field(
        None, description="Keep its chat completions when a request does not say store; null follows the "
                          "tenant's default.")
    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


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


# -- retrain policies -----------------------------------------------------------------------------


class RetrainTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_new_gold: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Retrain once this many gold completions of the avatar were stored since the last retrain "
                    "started (null: no such trigger).")
    schedule_hours: float | None = Field(
        None, gt=0, le=24 * 366,
        description="Retrain every this many hours when at least one new gold completion came in (null: no "
                    "schedule).")


class RetrainStoredCompletions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gold: bool = Field(True, description="Only completions some rater marked gold.")
    min_rating: int | None = Field(None, ge=1, le=5, description="Only completions rated at least this.")
    metadata: dict[str, str] | None = Field(None, description="Only completions with every one of these pairs.")
    limit: int = Field(10_000, ge=1, le=1_000_000, description="At most this many completions.")


class RetrainDataset(BaseModel):
    """The recipe of each retrain's dataset version: the avatar's stored completions (every gold one
    so far, the new and those earlier versions held, corrections replacing answers) after the files."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200,
                             description="Dataset name (default: '<avatar>-retrain').")
    files: list[str] = Field(default_factory=list, max_length=100,
                             description="Uploaded file ids every version starts from (seed data).")
    stored_completions: RetrainStoredCompletions = Field(default_factory=RetrainStoredCompletions)
    validation_fraction: float = Field(0.1, ge=0.0, le=0.5, description="Share of conversations held out.")
    scrub_pii: bool = Field(True, description="Replace emails, phone numbers and URLs carrying tokens.")
    min_quality: float = Field(0.0, ge=0.0, le=1.0, description="Drop examples whose quality score is lower.")


class RetrainTraining(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1,
                              description="Base model to fine-tune (default: the active model's base).")
    suffix: str | None = Field(None, min_length=1, max_length=64,
                               description="Suffix of the new model's name (default: the avatar's name).")
    hyperparameters: dict[str, float | int | list[str] | None] = Field(
        default_factory=dict,
        description="Hyperparameters as in POST /v1/fine_tuning/jobs (n_epochs, batch_size, "
                    "learning_rate_multiplier, lora_r, lora_alpha, max_length, ...).")
    seed: int = Field(0, ge=0, description="Training seed (0: the trainer's default).")


class RetrainEvaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval_id: str = Field(min_length=1, max_length=64, description="The eval both models run (eval_…).")
    data_source: dict[str, object] = Field(
        description="The run's data source as in POST /v1/evals/{eval_id}/runs, without 'model' (the active "
                    "and the new model each get one run on the same items).")
    testing_criteria: str | None = Field(
        None, min_length=1, description="The primary criterion (default: the eval's first testing criterion).")
    margin: float = Field(0.0, ge=0.0, le=1.0,
                          description="How much the new model's pass rate must beat the active model's by.")


class RetrainPromotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["candidate", "activate"] = Field(
        "candidate", description="candidate: the new model gets traffic_share of the avatar's traffic; "
                                 "activate: it becomes the active model.")
    traffic_share: int = Field(10, ge=1, le=100, description="The candidate's share of traffic (0-100).")


class RetrainPolicyBody(BaseModel):
    """PUT /v1/avatars/{name}/retrain-policy."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: triggers are off (a manual retrain still works).")
    trigger: RetrainTrigger = Field(default_factory=RetrainTrigger)
    dataset: RetrainDataset = Field(default_factory=RetrainDataset)
    training: RetrainTraining = Field(default_factory=RetrainTraining)
    evaluation: RetrainEvaluation
    promotion: RetrainPromotion = Field(default_factory=RetrainPromotion)


class Retrain(BaseModel):
    """POST /v1/avatars/{name}/retrain."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500, description="Why; kept on the run and in the avatar's history.")
