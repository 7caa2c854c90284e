"""Inference settings (env prefix ``COACHFORGE_INFERENCE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from coachforge_shared.settings import split_list


class Price(BaseModel):
    """US dollars per one million tokens."""

    input: float
    output: float


class EnginePoolSettings(BaseModel):
    """The engines of one base model: fixed URLs and/or a headless service resolved again and again."""

    urls: list[str] = Field(default_factory=list, description="Base URLs of its vLLM engines (without /v1).")
    service: str | None = Field(default=None, description='Headless service "host:port" whose addresses join them.')


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_INFERENCE_", extra="ignore")

    engine_url: str = Field(default="http://127.0.0.1:8100",
                            description="Base URL of the vLLM OpenAI-compatible server (without /v1); the one "
                                        "engine used when neither engine_urls nor engine_service is set.")
    engine_api_key: SecretStr | None = Field(
        default=None,
        description="API key the engines require (vLLM's --api-key / VLLM_API_KEY), sent as 'Authorization: "
                    "Bearer' on every engine call. Only inference holds it: nothing else may load adapters into "
                    "or generate with the engines.")
    engine_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Base URLs of several vLLM engines (comma-separated or a JSON list); replaces engine_url.")
    engine_service: str | None = Field(
        default=None,
        description='Headless service "host:port" whose addresses are the engines (e.g. '
                    '"coachforge-engine.ns.svc:8000"); re-resolved every engine_discovery_interval_s and '
                    "added to engine_urls.")
    engine_pools: dict[str, EnginePoolSettings] = Field(
        default_factory=dict,
        description='Engines of further base models, JSON: {"<base model id>": {"urls": ["http://…:8000"], "service": '
                    '"host:port"}}. A request for a base model, or a model fine-tuned on it, goes to its pool; every '
                    "base without an entry to the default pool (engine_url, engine_urls, engine_service). Each engine "
                    "serves its base under the base model's id (vLLM --served-model-name).")
    engine_discovery_interval_s: float = Field(
        default=15.0, description="How often engine_service is resolved again, seconds.")
    engine_health_interval_s: float = Field(
        default=5.0, description="How often each engine's GET /health is checked, seconds; an engine that fails "
                                 "it (or a call) leaves the rotation until it passes again.")
    engine_max_loras: int = Field(
        default=4, ge=1,
        description="Adapters kept loaded per engine (its --max-loras / --max-cpu-loras); beyond it the least "
                    "recently used idle adapter is unloaded first.")
    adapter_cache_dir: Path | None = Field(
        default=None,
        description="Where adapters kept in object storage (s3://…) are downloaded before an engine loads them "
                    "(default: <data_dir>/adapter-cache). Engines read the files themselves, so on Kubernetes "
                    "this must be a volume mounted at the same path in the inference and engine pods.")
    adapter_storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description='fsspec options for fetching remote adapters, JSON, e.g. {"endpoint_url": '
                    '"http://minio:9000", "key": "…", "secret": "…"}; without credentials s3fs uses the usual AWS '
                    "chain (AWS_* variables, a profile, an IAM role).")
    remotes_file: str | None = Field(
        default=None,
        description='JSON file of the tenants\' remote OpenAI-compatible APIs, the trainer\'s (COACHFORGE_TRAINER_'
                    'REMOTES_FILE): {"<tenant id>": {"base_url": "https://api.openai.com/v1", "api_key": "..."}}. '
                    "Requests for an external model (trained by a remote that offers no download of its adapter) "
                    "are forwarded to its remote with the tenant's key from this file, only while the tenant's "
                    "entry names that remote (503 otherwise). Read again whenever it changed.")
    registry_grpc_target: str | None = Field(
        default=None, description="gRPC address of the registry (default: the platform's grpc_target).")
    dataset_grpc_target: str | None = Field(
        default=None, description="gRPC address of the dataset service, searched for the knowledge snippets of "
                                  "an avatar persona with knowledge (default: the platform's grpc_target; empty: "
                                  "none, such avatars answer without knowledge and say so).")
    knowledge_timeout_s: float = Field(
        default=2.0, gt=0, le=60,
        description="Longest wait for a knowledge search, seconds; past it the request is answered without "
                    "knowledge (x-coachforge-knowledge: unavailable).")
    usage_consumer_group: str = Field(
        default="coachforge-inference-usage",
        description="Consumer group that sums usage.recorded events into daily usage rows.")
    stored_consumer_group: str = Field(
        default="coachforge-inference-stored",
        description="Consumer group that keeps completion.stored events (chat completions asked with store) "
                    "as stored completions.")
    stored_retention_days: int = Field(
        default=30, ge=0,
        description="How many days a stored chat completion is kept (with its metadata and feedback) for a tenant "
                    "that did not set its own retention_days (PUT /v1/chat/completions/settings); 0 keeps them "
                    "forever.")
    stored_purge_interval_s: float = Field(
        default=3600.0, gt=0,
        description="How often stored completions past their tenant's retention are deleted, seconds (the first "
                    "pass runs within a minute of the start; every replica may run it, deletes are idempotent).")
    stored_purge_batch: int = Field(
        default=1000, ge=1,
        description="Stored completions deleted per transaction by the retention purge (short transactions: no "
                    "long locks).")
    stored_policy_cache_s: float = Field(
        default=5.0, ge=0,
        description="How long a tenant's stored completion policy is cached on the request path, seconds (a PUT "
                    "refreshes this replica at once, other replicas within this time).")
    request_timeout_s: float = Field(default=300.0, description="Timeout of one engine call, seconds.")
    max_n: int = Field(default=16, ge=1, description="Most choices (n) one completion request may ask for.")
    max_json_depth: int = Field(
        default=32, ge=4, description="Deepest nesting of objects and arrays accepted in a completion request's body.")
    default_max_requests_per_1_minute: int = Field(
        default=0, ge=0, description="Requests per minute of a tenant without its own limit (0: no limit), per "
                                     "inference replica.")
    default_max_tokens_per_1_minute: int = Field(
        default=0, ge=0, description="Tokens (prompt + completion) per minute of a tenant without its own limit "
                                     "(0: no limit), per inference replica.")
    default_max_tokens_per_1_day: int = Field(
        default=0, ge=0, description="Tokens per UTC day of a tenant without its own quota (0: no quota).")
    default_max_cost_usd_per_1_day: float = Field(
        default=0.0, ge=0, description="US dollars per UTC day of a tenant without its own quota (0: no quota).")
    limits_cache_s: float = Field(
        default=5.0, gt=0, description="How long a tenant's limits and the day's usage are cached on the request "
                                       "path, seconds (a daily quota is enforced to within this time).")
    limits_default_max_tokens: int = Field(
        default=256, ge=1, description="Completion tokens a request without max_tokens is admitted on by a tokens "
                                       "limit (it is charged what it used once answered).")
    resolve_cache_s: float = Field(
        default=5.0, description="How long a model resolution is cached, seconds (a safety net: model.* events "
                                 "drop a tenant's entries as soon as they arrive); one used past half of it is "
                                 "fetched again in the background.")
    prices: dict[str, Price] = Field(
        default_factory=dict, description='Per-model prices, JSON: {"<model id>": {"input": 0.3, "output": 1.2}}.')
    base_price: Price = Field(default=Price(input=0.10, output=0.40),
                              description="Price of base models without an entry in prices.")
    fine_tuned_price: Price = Field(default=Price(input=0.30, output=1.20),
                                    description="Price of fine-tuned models without an entry in prices.")

    @field_validator("engine_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        return split_list(value)
