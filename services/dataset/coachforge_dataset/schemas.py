"""Request bodies of the dataset API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coachforge_dataset.pipeline.clean import DEFAULT_NEAR_DUP_THRESHOLD

InputFormat = Literal["openai", "sharegpt", "alpaca", "chatml", "coach"]


class StoredCompletionsSource(BaseModel):
    """Stored chat completions (and their feedback) to build a version from, read from inference."""

    model_config = ConfigDict(extra="forbid")

    min_rating: int | None = Field(None, ge=1, le=5, description="Only completions a rater rated at least this.")
    gold: bool | None = Field(None, description="true: only completions some rater marked gold.")
    model: str | None = Field(None, min_length=1, description="Only this model (answered or requested).")
    avatar: str | None = Field(None, min_length=1, description="Only completions asked through this avatar.")
    metadata: dict[str, str] | None = Field(None, description="Only completions with every one of these pairs.")
    created_after: int | None = Field(None, ge=0, description="Only completions created after (unix seconds).")
    limit: int = Field(10_000, ge=1, le=1_000_000, description="At most this many completions.")


class CreateDatasetVersion(BaseModel):
    """Build an immutable dataset version from uploaded files and/or stored chat completions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Dataset name; versions of one name form a history.")
    files: list[str] = Field(default_factory=list, max_length=100,
                             description="Uploaded file ids, read in this order.")
    stored_completions: StoredCompletionsSource | None = Field(
        None, description="Stored chat completions matching these filters, read after the files: the request's "
                          "messages with the latest correction (else the stored answer) as the assistant's turn.")
    format: InputFormat | None = Field(None, description="Input format; detected from the first lines when unset.")
    policy: Literal["strict", "lenient"] = Field(
        "lenient", description="strict: any invalid line rejects the build; lenient: invalid lines are dropped "
                               "and reported.")
    dedupe: bool = Field(True, description="Remove exact and near duplicates.")
    near_dup_threshold: float = Field(DEFAULT_NEAR_DUP_THRESHOLD, gt=0.5, le=1.0,
                                      description="Estimated Jaccard similarity above which two examples are "
                                                  "near duplicates.")
    min_quality: float = Field(0.0, ge=0.0, le=1.0, description="Drop examples whose quality score is lower.")
    scrub_pii: bool = Field(False, description="Replace emails, phone numbers and URLs carrying tokens.")
    validation_fraction: float = Field(0.1, ge=0.0, le=0.5, description="Share of conversations held out.")
    seed: int = Field(0, ge=0, description="Seed of the train/validation split.")
    base_model: str = Field("SmolLM2-135M-Instruct", description="Model whose tokenizer counts tokens.")
    max_tokens: int | None = Field(None, gt=0, description="Examples with more tokens are invalid lines.")

    @model_validator(mode="after")
    def _has_a_source(self) -> CreateDatasetVersion:
        if not self.files and self.stored_completions is None:
            raise ValueError("a dataset version needs files, stored_completions or both")
        return self


class CreateSyntheticData(BaseModel):
    """Generate synthetic Polarize coach examples into a new file."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, description="Number of examples (at most the service's max_synthetic_examples).")
    seed: int = Field(0, ge=0, description="Same count and seed, same file.")
    filename: str | None = Field(None, min_length=1, max_length=200, description="Name of the stored file.")
