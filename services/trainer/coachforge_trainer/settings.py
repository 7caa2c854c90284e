"""Trainer service settings (env prefix ``COACHFORGE_TRAINER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_TRAINER_", extra="ignore")

    dataset_grpc_target: str | None = Field(
        default=None, description="gRPC address of the dataset service (default: the platform's grpc_target).")
    registry_grpc_target: str | None = Field(
        default=None, description="gRPC address of the registry service (default: the platform's grpc_target).")
    default_n_epochs: int = Field(default=3, description="Epochs when the job asks for 'auto'.")
    default_batch_size: int = Field(default=8, description="Batch size when the job asks for 'auto'.")
    base_learning_rate: float = Field(
        default=5e-4, description="Learning rate that learning_rate_multiplier scales (LoRA on small models).")
    lora_r: int = Field(default=16, description="LoRA rank of new adapters.")
    max_lora_rank: int = Field(
        default=16, description="Largest LoRA rank the serving engines accept (vLLM --max-lora-rank); jobs asking "
                                "for more are refused at creation.")
    lora_alpha: int = Field(default=32, description="LoRA alpha of new adapters.")
    lora_dropout: float = Field(
        default=0.0, description="LoRA dropout when the job gives none. 0 skips a dropout copy of every adapted "
                                 "layer's input: on CPU 8% more tokens/s and 15% less memory than 0.05 "
                                 "(bench/train_throughput.py).")
    max_length: int = Field(
        default=1024, description="Longest example in tokens when the job gives no max_length (longer ones are "
                                  "refused at job creation); the coach prompts are 500-650 tokens.")
    default_seed: int = Field(default=42, description="Seed when the job gives none.")
    consumer_group: str = Field(default="trainer-workers", description="Kafka consumer group of the workers.")
    worker_id: str | None = Field(default=None, description="Name of this worker (default: host name + pid).")
    lease_seconds: float = Field(
        default=60.0, gt=0,
        description="A running job's worker renews its lease this often x3; a job whose lease expired (its worker "
                    "died) is queued again and resumes from its last checkpoint.")
    max_attempts: int = Field(
        default=3, ge=1, description="A job whose worker was lost this many times fails instead of being queued again.")
    concurrency: int = Field(
        default=1, ge=1,
        description="Jobs one worker process trains at once (its slots): a free slot claims the oldest queued job "
                    "from the database. On a GPU node keep one per GPU the process may use.")
    claim_scan_seconds: float = Field(
        default=10.0, gt=0,
        description="An idle slot looks for a queued job this often even when no train.requested event woke it, "
                    "so a job whose event was lost, or went to a busy worker, is still trained by any idle one.")
    checkpoint_steps: int = Field(
        default=0, ge=0, description="Default checkpoint interval in optimizer steps; 0 = at each epoch end.")
    metrics_port: int | None = Field(
        default=None, description="Serve the worker's Prometheus metrics on this port (none: not served).")
    price_per_million_tokens: float = Field(
        default=3.0, ge=0, description="Training price per 1M trained tokens (tokens x epochs), for estimates.")
    estimated_tokens_per_second: float = Field(
        default=90.0, gt=0,
        description="Training throughput assumed for the time estimate before a job starts (tokens/s; about 90 "
                    "for the small model on two CPU cores, thousands on a GPU).")

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3
