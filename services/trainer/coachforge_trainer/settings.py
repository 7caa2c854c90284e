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
    lora_alpha: int = Field(default=32, description="LoRA alpha of new adapters.")
    lora_dropout: float = Field(default=0.05, description="LoRA dropout.")
    max_length: int = Field(default=512, description="Examples are truncated to this many tokens.")
    default_seed: int = Field(default=42, description="Seed when the job gives none.")
    consumer_group: str = Field(default="trainer-workers", description="Kafka consumer group of the workers.")
    worker_id: str | None = Field(default=None, description="Name of this worker (default: host name + pid).")
