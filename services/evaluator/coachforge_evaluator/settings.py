"""Evaluator settings (env prefix ``COACHFORGE_EVALUATOR_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EvaluatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_EVALUATOR_", extra="ignore")

    inference_grpc_target: str | None = Field(
        default=None, description="gRPC address of the inference service (default: the platform's grpc_target).")
    registry_grpc_target: str | None = Field(
        default=None, description="gRPC address of the registry (default: the platform's grpc_target).")
    dataset_grpc_target: str | None = Field(
        default=None, description="gRPC address of the dataset service, which a run with a file_id source reads "
                                  "its items from (default: the platform's grpc_target; empty: file_id sources "
                                  "are refused).")
    consumer_group: str = Field(default="evaluator", description="Kafka consumer group taking eval.run.requested.")
    run_concurrency: int = Field(default=4, ge=1, le=64,
                                 description="Items of one run sampled and graded at the same time.")
    max_runs: int = Field(default=2, ge=1, le=64, description="Runs one evaluator process executes at the same time.")
    max_items: int = Field(default=10_000, ge=1, description="Most items one run may have.")
    lease_seconds: float = Field(default=30.0, gt=0,
                                 description="A running run's lease; renewed while it runs. A run whose lease "
                                             "expired (its process died) is taken over and resumed.")
    sweep_interval_s: float = Field(default=5.0, gt=0,
                                    description="How often queued runs and runs with an expired lease are looked for.")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Timeout of one sampling or judge call.")
    default_max_completion_tokens: int = Field(
        default=256, ge=1, description="Tokens a sample may have when the run's sampling_params set none.")
