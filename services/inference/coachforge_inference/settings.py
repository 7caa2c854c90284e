"""Inference settings (env prefix ``COACHFORGE_INFERENCE_``)."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Price(BaseModel):
    """US dollars per one million tokens."""

    input: float
    output: float


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_INFERENCE_", extra="ignore")

    engine_url: str = Field(default="http://127.0.0.1:8100",
                            description="Base URL of the vLLM OpenAI-compatible server (without /v1).")
    registry_grpc_target: str | None = Field(
        default=None, description="gRPC address of the registry (default: the platform's grpc_target).")
    usage_consumer_group: str = Field(
        default="coachforge-inference-usage",
        description="Consumer group that sums usage.recorded events into daily usage rows.")
    request_timeout_s: float = Field(default=300.0, description="Timeout of one engine call, seconds.")
    resolve_cache_s: float = Field(default=5.0, description="How long a model resolution is cached, seconds.")
    prices: dict[str, Price] = Field(
        default_factory=dict, description='Per-model prices, JSON: {"<model id>": {"input": 0.3, "output": 1.2}}.')
    base_price: Price = Field(default=Price(input=0.10, output=0.40),
                              description="Price of base models without an entry in prices.")
    fine_tuned_price: Price = Field(default=Price(input=0.30, output=1.20),
                                    description="Price of fine-tuned models without an entry in prices.")
