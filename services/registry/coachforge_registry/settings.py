"""Registry settings (env prefix ``COACHFORGE_REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_REGISTRY_", extra="ignore")

    base_models: list[str] = Field(
        default=["SmolLM2-135M-Instruct"],
        description="Base model ids the engines serve (JSON list); every tenant may use and fine-tune them.")
    consumer_group: str = Field(default="registry", description="Kafka consumer group for job.succeeded.")
    max_lora_rank: int = Field(
        default=16, ge=1,
        description="The engines' max LoRA rank (vLLM --max-lora-rank, default 16); higher-rank adapters are "
        "refused at registration and activation.")
    storage_url: str | None = Field(
        default=None,
        description="fsspec URL where adapter artifacts are stored: a local directory (all-in-one), "
        "s3://bucket/prefix (S3-compatible object storage through s3fs; the bucket must exist), memory:// "
        "(tests). Default: <artifacts_dir>/registry.")
    storage_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible server for an s3:// storage_url (MinIO, Ceph RGW, ...), "
        "e.g. http://minio:9000. Default: AWS S3. Credentials come from storage_options (key, secret) or, "
        "when absent, the way botocore finds them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, "
        "an IAM role).")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra options of the storage filesystem, a JSON object passed to fsspec (for s3fs: "
        'e.g. {"key": "...", "secret": "...", "client_kwargs": {"region_name": "eu-west-1"}}).')
    models_dir: Path | None = Field(
        default=None,
        description="Directory of the base models (one folder per id, with config.json) whose config hash "
        "identifies the base. Default: COACHFORGE_MODELS_DIR.")
    max_upload_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="Largest adapter upload (all files or the archive), in bytes; also "
                                               "the most an archive may unpack to.")
    staging_dir: Path | None = Field(
        default=None,
        description="Folder where adapter uploads are received and archives unpacked before they are checked and "
        "stored (a folder per upload, removed afterwards); it needs room for max_upload_bytes twice per upload in "
        "flight. Default: .registry-staging in the platform's artifacts_dir (the data volume), not the system's "
        "temporary folder.")
    inference_grpc_target: str | None = Field(
        default=None, description="gRPC address of inference, asked for the feedback on an avatar's stored "
                                  "completions (GET /v1/avatars/{name}/experiment) and how many new gold ones it "
                                  "has (a retrain trigger). Unset: the platform's gRPC target; empty: none (the "
                                  "experiment view answers 503, and retraining is off).")
    dataset_grpc_target: str | None = Field(
        default=None, description="gRPC address of the dataset service, which builds a retrain's dataset version "
                                  "and is asked whether the tenant has the knowledge base a persona names. Unset: "
                                  "the platform's gRPC target; empty: retraining is off and a persona's knowledge "
                                  "base is only checked for its form.")
    trainer_grpc_target: str | None = Field(
        default=None, description="gRPC address of the trainer, which runs a retrain's fine-tuning job. Unset: the "
                                  "platform's gRPC target; empty: retraining is off.")
    evaluator_grpc_target: str | None = Field(
        default=None, description="gRPC address of the evaluator, which compares a retrained model with the active "
                                  "one. Unset: the platform's gRPC target; empty: retraining is off.")
    retrain_poll_interval_s: float = Field(
        default=5.0, gt=0, description="How often the retrain driver looks at runs under way (seconds).")
    retrain_trigger_check_s: float = Field(
        default=60.0, gt=0, description="How often retrain policies' triggers (new gold, schedule) are checked.")
    retrain_lease_s: float = Field(
        default=900.0, gt=0, description="How long a process holds a retrain step before another may take it over "
                                         "(longer than the slowest step: building a large dataset version).")
    exports_enabled: bool = Field(
        default=True, description="Run model exports (POST /v1/models/{id}/exports) in this process's export "
                                  "worker; false: this replica only answers the API, another one converts.")
    export_poll_interval_s: float = Field(
        default=5.0, gt=0, description="How often the export worker looks for queued exports (seconds); a new "
                                       "export in this process wakes it at once.")
    export_lease_s: float = Field(
        default=120.0, gt=0, description="How long a worker holds an export between renewals (it renews every "
                                         "third of it while converting); a worker that stopped lets it lapse and "
                                         "the export is run again.")
    export_max_attempts: int = Field(
        default=3, ge=1, description="How many times an export is started before one interrupted again (its "
                                     "worker stopped mid-way) is marked failed.")
