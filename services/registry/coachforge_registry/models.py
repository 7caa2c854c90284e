"""Registry tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from coachforge_shared.db import Base, UTCDateTime
from coachforge_shared.ids import utcnow


class ModelVersion(Base):
    """A fine-tuned adapter on top of a base model, owned by a tenant."""

    __tablename__ = "model_versions"
    __table_args__ = (Index("ix_model_versions_line_version", "tenant_id", "base_model", "suffix", "version",
                            unique=True),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String(300), unique=True)
    base_model: Mapped[str] = mapped_column(String(200))
    adapter_uri: Mapped[str] = mapped_column(String(1000))
    lora_rank: Mapped[int] = mapped_column(Integer)
    target_modules_json: Mapped[str] = mapped_column(Text, default="[]")
    job_id: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    # candidate -> active (an avatar answers with it) -> retired (no avatar does any more).
    status: Mapped[str] = mapped_column(String(20), default="candidate")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Line = (tenant, base model, suffix); version numbers count up per line from 1.
    suffix: Mapped[str] = mapped_column(String(64), default="", server_default="")
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    source: Mapped[str] = mapped_column(String(20), default="job", server_default="job")  # job | upload
    # Where the registry stored the artifact ("" when it could not be read at registration).
    artifact_uri: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    # [{"path", "sha256", "size"}] for every artifact file, their total size and one digest over them.
    files_json: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    artifact_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Base model identity: name (base_model) + sha256 of its config.json ("" when unknown).
    base_config_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Lineage (job, training file, hyperparameters, metrics) and evaluation results, JSON objects.
    lineage_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    eval_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, default=utcnow)
    # An external model (a job trained by a remote OpenAI-compatible API that offers no download of its
    # adapter): the remote's model id and base URL (without credentials). Inference forwards its requests
    # there; it has no artifact (no files, size 0). None for an adapter served by the engines.
    external_model: Mapped[str | None] = mapped_column(String(300), nullable=True, default=None)
    external_base_url: Mapped[str | None] = mapped_column(String(1000), nullable=True, default=None)


class Avatar(Base):
    """A tenant's named alias (e.g. ``coach-anna``) for the model version that answers as it."""

    __tablename__ = "avatars"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    active_model: Mapped[str] = mapped_column(String(300))
    fallback: Mapped[str] = mapped_column(String(10), default="error")
    # Optional second version with the share of traffic (0-100) it should get (A/B, applied later).
    candidate_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    candidate_share: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A pinned avatar refuses activate/rollback until unpinned.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Keep its chat completions (OpenAI's "store") when a request does not say: None follows the
    # tenant's default, True/False overrides it.
    store: Mapped[bool | None] = mapped_column(Boolean, nullable=True, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The active persona version (its latest, see AvatarPersona); None: no persona.
    persona_version: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    # The persona version the candidate share answers with (None: the active persona); set without
    # a candidate model, the candidate share answers with the active model and this persona.
    candidate_persona_version: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)


class AvatarPersona(Base):
    """One version of an avatar's persona: system prompt (a template over the request's metadata),
    sampling defaults, few-shot turns, response format. Versions are never changed; a rollback adds
    a version with an earlier one's settings."""

    __tablename__ = "avatar_personas"

    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # The settings as validated by schemas.PersonaSettings, JSON object.
    settings_json: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AvatarChange(Base):
    """One change of an avatar's active model: who, when, why, from what to what."""

    __tablename__ = "avatar_changes"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(40))
    from_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    to_model: Mapped[str] = mapped_column(String(300))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    # Other facts of the change (candidate and its share, pinned), JSON object.
    detail_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RetrainPolicy(Base):
    """How an avatar retrains itself: when (new gold examples, a schedule), on what data, with which
    hyperparameters, and what the new model must prove on which eval before it takes traffic."""

    __tablename__ = "retrain_policies"

    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # The policy as PUT (validated by schemas.RetrainPolicyBody), JSON object.
    policy_json: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    # When the trigger was last checked, and when it last started a retrain (the "new gold" cursor).
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RetrainRun(Base):
    """One retrain of an avatar: dataset version → fine-tuning job → evaluation of the new model
    against the active one on the same items → promoted, rejected or failed, with the numbers."""

    __tablename__ = "retrain_runs"
    __table_args__ = (Index("ix_retrain_runs_status_lease", "status", "lease_until"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id", ondelete="CASCADE"), index=True)
    # queued → training → evaluating → promoted | rejected | failed | canceled
    status: Mapped[str] = mapped_column(String(20), default="queued")
    trigger: Mapped[str] = mapped_column(String(20))  # manual | gold | schedule
    actor: Mapped[str] = mapped_column(String(200))
    # The policy this run follows (a copy: a later PUT does not change a run under way), JSON object.
    policy_json: Mapped[str] = mapped_column(Text)
    dataset_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    baseline_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    eval_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    baseline_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    candidate_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The decision and its numbers (comparison, margin, interval), JSON object.
    decision_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    error: Mapped[str] = mapped_column(Text, default="", server_default="")
    # A process advancing the run holds it until lease_until (several registry replicas share the work).
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ModelExport(Base):
    """One export of a fine-tuned version: a file to take it elsewhere (the adapter, merged weights,
    a GGUF, an Ollama bundle), made once per version, format, quantization and persona by a worker
    of the registry, and kept in its artifact store with its sha256."""

    __tablename__ = "model_exports"
    __table_args__ = (Index("ix_model_exports_identity", "version_id", "format", "quantization", "avatar_id",
                            "persona_version", unique=True),
                      Index("ix_model_exports_status_lease", "status", "lease_until"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(20))  # adapter | merged | gguf | ollama
    quantization: Mapped[str] = mapped_column(String(10), default="", server_default="")  # "" for adapter/merged
    # The avatar whose persona the Modelfile carries (ollama only; "" and 0: none) and a copy of
    # that persona version's settings (JSON object, "" for none): the worker needs no other row.
    avatar_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    avatar: Mapped[str] = mapped_column(String(64), default="", server_default="")
    persona_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    persona_json: Mapped[str] = mapped_column(Text, default="", server_default="")
    # queued -> running -> succeeded | failed
    status: Mapped[str] = mapped_column(String(20), default="queued")
    filename: Mapped[str] = mapped_column(String(400))
    artifact_uri: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    error: Mapped[str] = mapped_column(Text, default="", server_default="")
    error_code: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # How many times a worker started it, and the worker holding it until lease_until (a worker that
    # stopped mid-way lets its lease lapse; the export is then run again, up to a limit).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
