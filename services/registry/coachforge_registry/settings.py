"""Registry settings (env prefix ``COACHFORGE_REGISTRY_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_REGISTRY_", extra="ignore")

    base_models: list[str] = Field(
        default=["SmolLM2-135M-Instruct"],
        description="Base model ids the engines serve (JSON list); every tenant may use and fine-tune them.")
    consumer_group: str = Field(default="registry", description="Kafka consumer group for job.succeeded.")
