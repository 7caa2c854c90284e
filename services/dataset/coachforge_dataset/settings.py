"""Dataset service settings (env prefix ``COACHFORGE_DATASET_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatasetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_DATASET_", extra="ignore")

    max_upload_bytes: int = Field(
        default=1024**3, description="Largest accepted upload in bytes; enforced while reading the stream."
    )
    max_line_bytes: int = Field(
        default=8 * 1024**2, ge=1,
        description="Longest line of an upload in bytes (without its newline). A longer line is never held whole "
                    "in memory: it is an invalid line ('longer than the limit'), which rejects the file under the "
                    "strict policy and is dropped and reported under the lenient one.")
    max_errors_in_response: int = Field(
        default=20, description="How many invalid lines an error response lists (the total is always given)."
    )
    chunk_bytes: int = Field(default=1024 * 1024, description="Chunk size for streaming uploads and downloads.")
    default_upload_policy: Literal["strict", "lenient"] = Field(
        default="strict", description="Policy of an upload that names none: strict rejects a file with any "
                                      "invalid line; lenient drops and reports invalid lines.")
    trainer_grpc_target: str | None = Field(
        default=None, description="Trainer gRPC address asked, before a file is deleted, whether an unfinished "
                                  "fine-tuning job uses it. Unset: the platform's gRPC target; empty: do not ask.")
    inference_grpc_target: str | None = Field(
        default=None, description="Inference gRPC address that stored chat completions are read from when a dataset "
                                  "version is built from them. Unset: the platform's gRPC target; empty: none (a "
                                  "stored_completions source is refused).")
    max_synthetic_examples: int = Field(default=50_000, description="Most examples one synthetic-data call makes.")
    eligibility_min_answer_chars: int = Field(
        default=3, ge=1, description="A final assistant answer shorter than this (whitespace aside) makes an example "
                                     "too_short in the fine-tuning eligibility check.")
    pipeline_workers: int = Field(
        default=1, description="Processes that parse and hash lines when a dataset version is built (1: in the "
                               "service process).")
