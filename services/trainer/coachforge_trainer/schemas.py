"""Request bodies of the fine-tuning API (OpenAI-compatible)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = Field("auto", description="Passes over the data.")
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = Field("auto", description="Examples per step.")
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = Field(
        "auto", description="Scales the base learning rate.")
    # Method settings beyond OpenAI's three (the SDK passes them through in the same object).
    lora_r: Auto | Annotated[int, Field(ge=1, le=256)] = Field("auto", description="LoRA rank.")
    lora_alpha: Auto | Annotated[int, Field(ge=1, le=1024)] = Field("auto", description="LoRA alpha (scaling).")
    lora_dropout: Auto | Annotated[float, Field(ge=0, lt=1)] = Field("auto", description="LoRA dropout.")
    target_modules: Auto | Literal["all-linear"] | Annotated[list[Annotated[str, Field(
        pattern=r"^[A-Za-z0-9_.]+$")]], Field(min_length=1)] = Field(
        "auto", description="Module names to adapt (e.g. q_proj, v_proj) or 'all-linear'.")
    max_length: Auto | Annotated[int, Field(ge=16, le=32768)] = Field(
        "auto", description="Examples longer than this many tokens are rejected at job creation.")
    early_stopping_patience: Annotated[int, Field(ge=0, le=100)] = Field(
        0, description="Stop after this many evaluations without a lower validation loss (needs a "
                       "validation file); 0 never stops early.")
    checkpoint_steps: Auto | Annotated[int, Field(ge=0)] = Field(
        "auto", description="Save a checkpoint every this many steps; 0 = at each epoch end.")


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"]
    supervised: SupervisedMethod | None = None


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Base model id.")
    training_file: str = Field(min_length=1, description=(
        "Id of an uploaded file with purpose fine-tune, or of a dataset version (dsv-…) to train on its "
        "train split."))
    validation_file: str | None = Field(None, description=(
        "Id of an uploaded file, or of a dataset version for its validation split. When omitted and "
        "training_file is a dataset version with a validation split, that split is used (and reported "
        "here as the version's id)."))
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$",
                               description="Up to 64 characters added to the fine-tuned model name.")
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    # Beyond OpenAI's body (the SDK sends them with extra_body).
    preset: str | None = Field(None, max_length=32, description=(
        "Hyperparameter preset: quick, balanced or thorough (the trainer's presets table for its device "
        "class). It fills the hyperparameters left 'auto'; explicit values win."))
    dry_run: bool = Field(False, description=(
        "Validate everything a real create would and answer the estimate (fine_tuning.job.estimate) "
        "without creating a job."))

    def resolved_hyperparameters(self) -> Hyperparameters:
        if self.method is not None and self.method.supervised is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()
