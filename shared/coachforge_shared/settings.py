"""Platform-wide settings shared by every service.

Each service adds its own settings class (env prefix ``COACHFORGE_<SVC>_``) in its
``settings.py``; this module holds only what all of them need. Every variable is
documented on its field; nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".coachforge"


class PlatformSettings(BaseSettings):
    """Settings every service reads (env prefix ``COACHFORGE_``)."""

    model_config = SettingsConfigDict(env_prefix="COACHFORGE_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Directory for the all-in-one mode's state: SQLite file, artifacts, keys, logs.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "COACHFORGE_DATABASE_URL"),
        description="SQLAlchemy URL (e.g. postgresql+psycopg://u@h/db). Default: SQLite in data_dir.",
    )
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, comma separated.",
    )
    event_partitions: int = Field(
        default=3, ge=1,
        description="Partitions of each event topic, used when the services create the topics that do not "
        "exist yet (existing topics keep theirs). A consumer group handles events on at most this many members "
        "at once; trainer workers claim their jobs from the database, so it does not limit training.",
    )
    kafka_delivery_timeout_ms: int = Field(
        default=120_000, ge=1_000,
        description="How long the producer keeps trying to deliver an event before it gives up (kafka-python's "
        "delivery_timeout_ms; its request and metadata waits are capped by it). An event not waited for that "
        "it gives up on is kept in the outbox table and sent again when the broker is back.",
    )
    outbox_poll_seconds: float = Field(
        default=2.0, gt=0,
        description="How often the outbox relay looks for events to send when no commit of this process "
        "woke it (rows written by other processes, retries while the broker is away).",
    )
    outbox_batch_size: int = Field(
        default=100, ge=1,
        description="Events the outbox relay sends per transaction (locked with SKIP LOCKED on PostgreSQL, so "
        "that several processes relay different rows).",
    )
    internal_token: str | None = Field(
        default=None,
        description="Shared secret services present to each other over gRPC. "
        "Default: generated once and stored in data_dir/internal-token.",
    )
    api_key: str | None = Field(
        default=None,
        description="All-in-one mode: accepted as an API key of the default tenant. "
        "When unset a key is generated on first start and stored in data_dir/api-key.",
    )
    default_tenant: str = Field(default="default", description="Tenant id of the all-in-one mode's owner.")
    grpc_target: str = Field(
        default="127.0.0.1:50051",
        description="Address of the gRPC server hosting the other services (all-in-one: one port). "
        "Per-service overrides live in each service's settings.",
    )
    grpc_method_concurrency: int | None = Field(
        default=None, ge=1,
        description="Calls of one plain (thread-pool) gRPC method a process serves at once; one more is refused "
        "at once with RESOURCE_EXHAUSTED (the caller answers 503 and may retry), so that one stalled method "
        "cannot take every thread of the server's pool (32). Default: half the pool (16). Health checks and "
        "async methods are not limited.",
    )
    grpc_stream_idle_timeout_s: float = Field(
        default=60.0, gt=0,
        description="A client-streaming gRPC call (e.g. a file upload) whose client sends nothing for this many "
        "seconds is ended with DEADLINE_EXCEEDED, and the thread waiting for it is free again.",
    )
    grpc_client_timeout_s: float = Field(
        default=30.0, gt=0,
        description="Deadline of a call from one service to another made without a timeout of its own (the "
        "long streaming calls, such as exports and training data, set theirs where they are made).",
    )
    log_level: str = Field(default="INFO", description="Log level (DEBUG, INFO, WARNING, ERROR).")
    log_json: bool = Field(default=False, description="Log one JSON object per line instead of console text.")
    artifacts_dir: Path | None = Field(
        default=None, description="Where adapters and result files are stored. Default: data_dir/artifacts."
    )
    models_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "coachforge" / "models",
        description="Directory holding prepared base models, one folder per model id.",
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'coachforge.db'}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return self.artifacts_dir or self.data_dir / "artifacts"


@lru_cache
def platform_settings() -> PlatformSettings:
    """The process-wide settings (read once)."""
    return PlatformSettings()
