"""Settings of the all-in-one stack (env prefix ``COACHFORGE_STACK_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_STACK_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface every port binds to.")
    http_port: int = Field(default=8000, description="REST port: every router, OpenAI base URL /v1.")
    grpc_port: int = Field(default=50051, description="gRPC port: every service.")
    metrics_port: int = Field(
        default=9400, description="Prometheus metrics of the services process (every service's /metrics); the REST "
                                  "port does not serve them.")
    engine_port: int = Field(default=8100, description="Port of the embedded vLLM engine.")
    broker_port: int = Field(default=9092, description="Port of the embedded Kafka-compatible broker.")
    trainer_workers: int = Field(
        default=1, description="Trainer worker processes (each trains COACHFORGE_TRAINER_CONCURRENCY jobs at a time, "
                               "default one, and besides follows up to COACHFORGE_TRAINER_REMOTE_CONCURRENCY jobs "
                               "of the openai_compatible backend, default four; their remotes are configured in "
                               "trainer-remotes.json in the data dir).")
    worker_metrics_port: int = Field(
        default=8101, description="Prometheus metrics port of the first trainer worker; worker i uses this + i.")
    extra_base_models: dict[str, str] = Field(
        default_factory=dict,
        description='More base models to serve and fine-tune, JSON {"<model id>": "<Hugging Face model folder or '
                    '.gguf file>"}: each is prepared into the models folder under its id and served by an engine of '
                    "its own (the same engine settings); requests for it and its fine-tuned versions go there.")
    extra_engine_port: int = Field(
        default=8110, description="Port of the first extra base model's engine; the i-th extra base uses this + i.")
    engine_max_model_len: int = Field(default=2048, description="vLLM --max-model-len.")
    engine_max_loras: int = Field(default=4, description="vLLM --max-loras: adapters active in one batch.")
    engine_max_lora_rank: int = Field(default=16, description="vLLM --max-lora-rank.")
    engine_kv_cache_bytes: int = Field(
        default=2 * 1024**3, ge=0,
        description="vLLM --kv-cache-memory-bytes of each engine (2 GiB: about 45k tokens of the bundled model); "
                    "0 sizes the KV cache by engine_kv_cache_share instead.")
    engine_kv_cache_share: float = Field(
        default=0.3, description="vLLM --gpu-memory-utilization, used when engine_kv_cache_bytes is 0; on CPU the "
                                 "share of the memory node's RAM the engine may use, its own memory included (so "
                                 "a small share fails on a machine with little RAM per node).")
    engine_dtype: str = Field(default="float32", description="vLLM --dtype (float32 is fastest on AVX2 CPUs).")
    ready_timeout_s: float = Field(default=600, description="How long start-up may take before giving up.")
