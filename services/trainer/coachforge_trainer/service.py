"""Fine-tuning job logic: create (validate, queue, emit ``train.requested``), read, cancel."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared.db import Database
from coachforge_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from coachforge_shared.events import EventPublisher
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors
from coachforge_shared.ids import new_id, to_unix, utcnow
from coachforge_shared.logging import get_logger
from coachforge_trainer.metrics import JOBS_CREATED, JOBS_FINISHED
from coachforge_trainer.models import Job, JobCheckpoint, JobEvent
from coachforge_trainer.schemas import CreateJobRequest, Hyperparameters
from coachforge_trainer.settings import TrainerSettings

if TYPE_CHECKING:
    from coachforge_trainer.sft import TrainParams

log = get_logger("coachforge.trainer")

FINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class TrainerDeps:
    db: Database
    settings: TrainerSettings
    publisher: EventPublisher
    dataset: InternalChannel
    registry: InternalChannel

    def dataset_stub(self) -> dataset_pb2_grpc.DatasetServiceStub:
        return dataset_pb2_grpc.DatasetServiceStub(self.dataset.channel)

    def registry_stub(self) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(self.registry.channel)


@dataclass(frozen=True)
class MethodSettings:
    """A job's resolved training settings beyond OpenAI's hyperparameters, stored with the job."""

    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: str | list[str]
    max_length: int
    early_stopping_patience: int
    checkpoint_steps: int

    @classmethod
    def resolve(cls, settings: TrainerSettings, hp: Hyperparameters) -> MethodSettings:
        return cls(
            lora_r=settings.lora_r if hp.lora_r == "auto" else hp.lora_r,
            lora_alpha=settings.lora_alpha if hp.lora_alpha == "auto" else hp.lora_alpha,
            lora_dropout=settings.lora_dropout if hp.lora_dropout == "auto" else hp.lora_dropout,
            target_modules="all-linear" if hp.target_modules == "auto" else hp.target_modules,
            max_length=settings.max_length if hp.max_length == "auto" else hp.max_length,
            early_stopping_patience=hp.early_stopping_patience,
            checkpoint_steps=settings.checkpoint_steps if hp.checkpoint_steps == "auto" else hp.checkpoint_steps,
        )

    def train_params(self, job: Job, base_learning_rate: float) -> TrainParams:
        from coachforge_trainer.sft import TrainParams

        return TrainParams(n_epochs=job.n_epochs, batch_size=job.batch_size,
                           learning_rate=base_learning_rate * job.learning_rate_multiplier, lora_r=self.lora_r,
                           lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                           target_modules=self.target_modules, max_length=self.max_length, seed=job.seed,
                           checkpoint_steps=self.checkpoint_steps,
                           early_stopping_patience=self.early_stopping_patience)


def method_settings(settings: TrainerSettings, job: Job) -> MethodSettings:
    """The job's stored method settings (defaults from ``settings`` for jobs created before they existed)."""
    stored = json.loads(job.method_json or "{}")
    defaults = asdict(MethodSettings.resolve(settings, Hyperparameters()))
    return MethodSettings(**{**defaults, **stored})


def add_event(s: Any, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
    s.add(JobEvent(id=new_id("ftevent"), job_id=job_id, level=level, type=type, message=message,
                   data_json=json.dumps(data) if data is not None else None))


def _check_file(deps: TrainerDeps, tenant_id: str, file_id: str, param: str) -> dataset_pb2.File:
    try:
        with typed_rpc_errors():
            f: dataset_pb2.File = deps.dataset_stub().GetFile(
                dataset_pb2.GetFileRequest(file_id=file_id), metadata=deps.dataset.metadata(tenant_id), timeout=10)
    except NotFound:
        raise InvalidArgument(f"File {file_id} not found.", param=param, code="invalid_file") from None
    if f.purpose != "fine-tune":
        raise InvalidArgument(f"File {file_id} has purpose {f.purpose!r}, expected 'fine-tune'.", param=param)
    return f


def is_dataset_version(item_id: str | None) -> bool:
    """Whether a job's training or validation "file" is a dataset version id (``dsv-…``)."""
    return bool(item_id) and str(item_id).startswith("dsv-")


def _check_version(deps: TrainerDeps, tenant_id: str, version_id: str, param: str) -> dataset_pb2.DatasetVersion:
    try:
        with typed_rpc_errors():
            v: dataset_pb2.DatasetVersion = deps.dataset_stub().GetDatasetVersion(
                dataset_pb2.GetDatasetVersionRequest(dataset_version_id=version_id),
                metadata=deps.dataset.metadata(tenant_id), timeout=10)
    except NotFound:
        raise InvalidArgument(f"Dataset version {version_id} not found.", param=param, code="invalid_file") from None
    return v


@dataclass(frozen=True)
class _Data:
    """A job's training data as checked at creation."""

    examples: int
    description: str


def _check_training(deps: TrainerDeps, tenant_id: str, item_id: str) -> tuple[_Data, int]:
    """The training file or dataset version, and the version's validation examples (0 for a file)."""
    if is_dataset_version(item_id):
        v = _check_version(deps, tenant_id, item_id, "training_file")
        return _Data(int(v.train_examples), f"dataset version {item_id} ({v.name}, sha256 {v.sha256[:12]}): "
                                            f"{v.train_examples} training examples"), int(v.validation_examples)
    f = _check_file(deps, tenant_id, item_id, "training_file")
    return _Data(int(f.example_count), f"training file: {item_id} ({f.example_count} examples)"), 0


def _check_tokens(deps: TrainerDeps, tenant_id: str, file_id: str, param: str, max_length: int,
                  model: str, split: str = "") -> int:
    """Refuse a file (or a version's split) with examples longer than ``max_length`` tokens (counted
    by the dataset service with the base model's tokenizer); return its total tokens."""
    with typed_rpc_errors():
        counted: dataset_pb2.CheckTokensResponse = deps.dataset_stub().CheckTokens(
            dataset_pb2.CheckTokensRequest(id=file_id, max_length=max_length, base_model=model, split=split),
            metadata=deps.dataset.metadata(tenant_id), timeout=300)
    if counted.over_limit:
        raise InvalidArgument(f"{counted.message} Raise hyperparameters.max_length or shorten those examples.",
                              param=param, code="examples_too_long")
    return int(counted.total_tokens)


def create_job(deps: TrainerDeps, tenant_id: str, req: CreateJobRequest) -> Job:
    """Validate the request against the registry and the dataset service, store the job, queue it."""
    try:
        with typed_rpc_errors():
            model: registry_pb2.Model = deps.registry_stub().GetModel(
                registry_pb2.GetModelRequest(model_id=req.model), metadata=deps.registry.metadata(tenant_id),
                timeout=10)
    except NotFound:
        raise InvalidArgument(f"Model {req.model} does not exist or you do not have access to it.",
                              param="model", code="model_not_available") from None
    if model.adapter_uri:
        raise InvalidArgument(f"Model {req.model} is a fine-tuned model; fine-tune a base model.", param="model")
    train, version_validation = _check_training(deps, tenant_id, req.training_file)
    # A dataset version as validation_file means its validation split; without a validation_file,
    # a version's own validation split (when it has one) gives the job its validation loss.
    validation_file = req.validation_file
    validation_param = "validation_file"
    if validation_file and is_dataset_version(validation_file):
        if validation_file == req.training_file:
            has_split = version_validation > 0
        else:
            has_split = _check_version(deps, tenant_id, validation_file, "validation_file").validation_examples > 0
        if not has_split:
            raise InvalidArgument(f"Dataset version {validation_file} has no validation split.",
                                  param="validation_file", code="invalid_file")
    elif validation_file:
        _check_file(deps, tenant_id, validation_file, "validation_file")
    elif version_validation > 0:
        validation_file, validation_param = req.training_file, "training_file"
    hp = req.resolved_hyperparameters()
    s = deps.settings
    n_epochs = s.default_n_epochs if hp.n_epochs == "auto" else hp.n_epochs
    batch_size = (max(1, min(s.default_batch_size, train.examples // 4)) if hp.batch_size == "auto"
                  else hp.batch_size)
    lr_mult = 1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier
    method = MethodSettings.resolve(s, hp)
    if method.lora_r > s.max_lora_rank:
        raise InvalidArgument(f"lora_r={method.lora_r} exceeds the serving engines' maximum LoRA rank "
                              f"({s.max_lora_rank}); the adapter could not be served.",
                              param="hyperparameters.lora_r")
    if method.early_stopping_patience and not validation_file:
        raise InvalidArgument("Early stopping needs a validation_file (or a dataset version with a validation "
                              "split) to measure the validation loss on.",
                              param="hyperparameters.early_stopping_patience")
    train_tokens = _check_tokens(deps, tenant_id, req.training_file, "training_file", method.max_length, req.model,
                                 "train" if is_dataset_version(req.training_file) else "")
    if validation_file:
        _check_tokens(deps, tenant_id, validation_file, validation_param, method.max_length, req.model,
                      "validation" if is_dataset_version(validation_file) else "")
    tokens = train_tokens * n_epochs
    seconds = tokens / s.estimated_tokens_per_second
    job = Job(id=new_id("ftjob"), tenant_id=tenant_id, model=req.model, status="queued",
              training_file=req.training_file, validation_file=validation_file, suffix=req.suffix,
              n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=lr_mult,
              seed=req.seed if req.seed is not None else s.default_seed, method_json=json.dumps(asdict(method)),
              estimated_tokens=tokens, estimated_seconds=seconds,
              estimated_cost_usd=round(tokens / 1e6 * s.price_per_million_tokens, 6), queued_at=utcnow(),
              estimated_finish=utcnow() + timedelta(seconds=seconds))
    with deps.db.session() as sess:
        sess.add(job)
        sess.flush()
        add_event(sess, job.id, f"Created fine-tuning job: {job.id}")
        add_event(sess, job.id, f"Validated {train.description}")
        if is_dataset_version(validation_file):
            add_event(sess, job.id, f"Validation loss is measured on the validation split of dataset version "
                                    f"{validation_file}.")
        add_event(sess, job.id, f"Estimated {tokens} training tokens, about {seconds / 60:.0f} min and "
                                f"${job.estimated_cost_usd:.4f}.",
                  data={"estimated_tokens": tokens, "estimated_seconds": seconds,
                        "estimated_cost_usd": job.estimated_cost_usd})
        # Published inside the transaction: if the broker refuses, no job is left behind.
        deps.publisher.publish("train.requested", trainer_pb2.TrainRequested(job_id=job.id), tenant_id, key=job.id)
    JOBS_CREATED.labels(tenant_id).inc()
    log.info("job created", job_id=job.id, tenant=tenant_id, model=req.model, epochs=n_epochs)
    return job


def get_job(deps: TrainerDeps, tenant_id: str, job_id: str) -> Job:
    with deps.db.session() as s:
        job = s.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFound(f"Fine-tuning job {job_id} not found.", param="fine_tuning_job_id", code="job_not_found")
    return job


def list_jobs(deps: TrainerDeps, tenant_id: str, after: str | None, limit: int) -> tuple[list[Job], bool]:
    with deps.db.session() as s:
        q = select(Job).where(Job.tenant_id == tenant_id)
        if after:
            anchor = s.scalar(select(Job).where(Job.id == after, Job.tenant_id == tenant_id))
            if anchor is None:
                raise InvalidArgument(f"Unknown cursor {after}.", param="after")
            q = q.where((Job.created_at < anchor.created_at)
                        | ((Job.created_at == anchor.created_at) & (Job.id < anchor.id)))
        rows = list(s.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_events(deps: TrainerDeps, tenant_id: str, job_id: str, after: str | None,
                limit: int) -> tuple[list[JobEvent], bool]:
    get_job(deps, tenant_id, job_id)
    with deps.db.session() as s:
        q = select(JobEvent).where(JobEvent.job_id == job_id)
        if after:
            anchor = s.scalar(select(JobEvent.seq).where(JobEvent.id == after, JobEvent.job_id == job_id))
            if anchor is None:
                raise InvalidArgument(f"Unknown cursor {after}.", param="after")
            q = q.where(JobEvent.seq < anchor)
        rows = list(s.scalars(q.order_by(JobEvent.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def cancel_job(deps: TrainerDeps, tenant_id: str, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one when its worker finishes the current step."""
    get_job(deps, tenant_id, job_id)
    with deps.db.session() as s:
        job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
        assert job is not None
        if job.status in FINAL:
            raise FailedPrecondition(f"Job {job_id} has already {job.status}.", param="fine_tuning_job_id")
        job.cancel_requested = True
        if job.status in ("validating_files", "queued"):
            job.status = "cancelled"
            job.finished_at = utcnow()
            add_event(s, job.id, "Job cancelled before it started.")
            JOBS_FINISHED.labels("cancelled").inc()
        else:
            add_event(s, job.id, "Cancellation requested; stopping after the current step.")
    return job


def list_checkpoints(deps: TrainerDeps, tenant_id: str, job_id: str, after: str | None,
                     limit: int) -> tuple[list[JobCheckpoint], bool]:
    get_job(deps, tenant_id, job_id)
    with deps.db.session() as s:
        q = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
        if after:
            anchor = s.scalar(select(JobCheckpoint.step).where(JobCheckpoint.id == after,
                                                               JobCheckpoint.job_id == job_id))
            if anchor is None:
                raise InvalidArgument(f"Unknown cursor {after}.", param="after")
            q = q.where(JobCheckpoint.step < anchor)
        rows = list(s.scalars(q.order_by(JobCheckpoint.step.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def checkpoint_to_openai(job: Job, ckpt: JobCheckpoint) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job.checkpoint`` object."""
    return {"id": ckpt.id, "object": "fine_tuning.job.checkpoint", "created_at": to_unix(ckpt.created_at),
            "fine_tuned_model_checkpoint": f"{job.fine_tuned_model or job.id}:ckpt-step-{ckpt.step}",
            "fine_tuning_job_id": job.id, "step_number": ckpt.step,
            "metrics": {"step": ckpt.step, "epoch": ckpt.epoch, "train_loss": ckpt.train_loss,
                        "valid_loss": ckpt.valid_loss},
            "adapter_path": ckpt.path}


def job_hyperparameters(job: Job) -> dict[str, Any]:
    """The job's hyperparameters as OpenAI reports them, plus its method settings."""
    hp: dict[str, Any] = {"n_epochs": job.n_epochs, "batch_size": job.batch_size,
                          "learning_rate_multiplier": job.learning_rate_multiplier}
    hp.update(json.loads(job.method_json or "{}"))
    return hp


def to_openai(job: Job) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job`` object, plus ``estimate``, ``valid_loss``, ``device`` and ``attempts``."""
    error = None
    if job.status == "failed":
        error = {"code": job.error_code or "training_failed", "message": job.error_message or "", "param": None}
    hp = job_hyperparameters(job)
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": to_unix(job.created_at), "error": error,
        "fine_tuned_model": job.fine_tuned_model, "finished_at": to_unix(job.finished_at) or None,
        "hyperparameters": hp, "model": job.model, "organization_id": job.tenant_id,
        "result_files": [job.result_file] if job.result_file else [],
        "seed": job.seed, "status": job.status, "trained_tokens": job.trained_tokens,
        "training_file": job.training_file, "validation_file": job.validation_file, "suffix": job.suffix,
        "estimated_finish": to_unix(job.estimated_finish) or None, "integrations": [], "metadata": None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        "estimate": {"trained_tokens": job.estimated_tokens, "seconds": job.estimated_seconds,
                     "cost_usd": job.estimated_cost_usd},
        "valid_loss": job.valid_loss, "device": job.device, "attempts": job.attempts,
    }


def event_to_openai(ev: JobEvent) -> dict[str, Any]:
    return {"id": ev.id, "object": "fine_tuning.job.event", "created_at": to_unix(ev.created_at),
            "level": ev.level, "message": ev.message, "type": ev.type,
            "data": json.loads(ev.data_json) if ev.data_json else None}


_STATUS = {"validating_files": trainer_pb2.JOB_STATUS_VALIDATING_FILES, "queued": trainer_pb2.JOB_STATUS_QUEUED,
           "running": trainer_pb2.JOB_STATUS_RUNNING, "succeeded": trainer_pb2.JOB_STATUS_SUCCEEDED,
           "failed": trainer_pb2.JOB_STATUS_FAILED, "cancelled": trainer_pb2.JOB_STATUS_CANCELLED}


def status_to_proto(status: str) -> trainer_pb2.JobStatus.ValueType:
    return _STATUS[status]


def to_proto(job: Job) -> trainer_pb2.Job:
    method = json.loads(job.method_json or "{}")
    modules = method.get("target_modules", [])
    return trainer_pb2.Job(
        id=job.id, model=job.model, status=status_to_proto(job.status), training_file=job.training_file,
        validation_file=job.validation_file or "", suffix=job.suffix or "",
        hyperparameters=trainer_pb2.Hyperparameters(
            n_epochs=job.n_epochs, batch_size=job.batch_size, learning_rate_multiplier=job.learning_rate_multiplier,
            lora_r=method.get("lora_r", 0), lora_alpha=method.get("lora_alpha", 0),
            lora_dropout=method.get("lora_dropout"), max_length=method.get("max_length", 0),
            target_modules=[modules] if isinstance(modules, str) else modules,
            early_stopping_patience=method.get("early_stopping_patience", 0),
            checkpoint_steps=method.get("checkpoint_steps")),
        estimated_tokens=job.estimated_tokens or 0, estimated_seconds=job.estimated_seconds or 0.0,
        estimated_cost_usd=job.estimated_cost_usd or 0.0, valid_loss=job.valid_loss or 0.0, device=job.device or "",
        attempts=job.attempts or 0, result_files=[job.result_file] if job.result_file else [],
        fine_tuned_model=job.fine_tuned_model or "", trained_tokens=job.trained_tokens or 0,
        created_at=to_unix(job.created_at), finished_at=to_unix(job.finished_at), error_code=job.error_code or "",
        error_message=job.error_message or "", seed=job.seed, tenant_id=job.tenant_id,
        estimated_finish=to_unix(job.estimated_finish))
