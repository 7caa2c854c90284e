"""Platform-wide settings shared by every service.

Each service adds its own settings class (env prefix ``COACHFORGE_<SVC>_``) in its
``settings.py``; this module holds only what all of them need. Every variable is
documented on its field; nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def split_list(value: Any) -> Any:
    """A list setting given as text: a JSON list (``["a", "b"]``) or comma-separated values (``a, b``,
    blanks dropped); any other value as it is. Use it as the field's ``mode="before"`` validator, with
    ``Annotated[list[...], NoDecode]`` so that pydantic-settings hands the text over undecoded."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [v.strip() for v in text.split(",") if v.strip()]


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
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client (producers, consumers, topic admin, the CLI) talks to the brokers: "
        "PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS; use it whenever SASL passwords cross a "
        "network).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism when kafka_security_protocol is SASL_*.",
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the certificate authority that signed the brokers' certificates (SSL and "
        "SASL_SSL; default: the system's trust store).",
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
        description="Accepted as an API key of the default tenant with every scope (all-in-one start, "
        "coachforge migrate); at least 32 characters. When unset the all-in-one mode generates one on first "
        "start and stores it in data_dir/api-key.",
    )
    api_key_cache_s: float = Field(
        default=5.0, ge=0,
        description="How long a process remembers a valid API key before asking the database again, seconds. A "
        "key revoked through the admin API stops working at once in the process that revoked it; in other "
        "processes (and after coachforge keys revoke) within this time. 0: every request asks the database.",
    )
    default_tenant: str = Field(default="default", description="Tenant id of the all-in-one mode's owner.")
    grpc_target: str = Field(
        default="127.0.0.1:50051",
        description="Address of the gRPC server hosting the other services (all-in-one: one port). "
        "Per-service overrides live in each service's settings.",
    )
    max_request_bytes: int = Field(
        default=4 * 1024**2, ge=1024,
        description="Largest request body on the REST port, in bytes (chat requests, every JSON body); a larger one "
        "is refused with 413 before it is read. Upload routes have their own limit, their service's max_upload_bytes.",
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
    log_json: bool | None = Field(
        default=None,
        description="Log one JSON object per line instead of console text. Default: JSON unless standard error "
        "is a terminal. Control characters in logged values are escaped either way.",
    )
    artifacts_dir: Path | None = Field(
        default=None, description="Where adapters and result files are stored. Default: data_dir/artifacts."
    )
    models_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "coachforge" / "models",
        description="Directory holding prepared base models, one folder per model id.",
    )

    @field_validator("api_key")
    @classmethod
    def _api_key_long_enough(cls, value: str | None) -> str | None:
        from coachforge_shared.auth import check_configured_key

        return None if value is None else check_configured_key(value)

    @model_validator(mode="after")
    def _sasl_complete(self) -> PlatformSettings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
                self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"COACHFORGE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                             "COACHFORGE_KAFKA_SASL_MECHANISM, COACHFORGE_KAFKA_SASL_USERNAME and "
                             "COACHFORGE_KAFKA_SASL_PASSWORD")
        return self

    def kafka_options(self) -> dict[str, Any]:
        """Security options of every kafka-python client (producer, consumer, admin)."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None
            options.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                           sasl_plain_password=self.kafka_sasl_password.get_secret_value())
        if self.kafka_ssl_cafile is not None:
            options["ssl_cafile"] = str(self.kafka_ssl_cafile)
        return options

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
