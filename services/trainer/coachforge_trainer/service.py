"""Fine-tuning job logic: create (validate, queue, emit ``train.requested``), read, cancel."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, NotFound
from coachforge_shared.events import EventPublisher
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.logging import get_logger
from coachforge_trainer import lifecycle, repository
from coachforge_trainer.backends import REMOTE_BACKENDS, get_backend
from coachforge_trainer.lifecycle import Note
from coachforge_trainer.models import Job, JobCheckpoint, JobEvent
from coachforge_trainer.schemas import CreateJobRequest, Hyperparameters
from coachforge_trainer.settings import TrainerSettings
from coachforge_trainer.spec import (
    MethodSettings,
    ParentAdapter,
    continue_from,
    is_dataset_version,
    job_hyperparameters,
)

log = get_logger("coachforge.trainer")


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
    format: str = "chat"
    """``chat`` (conversations) or ``preference`` (OpenAI's preference pairs); dataset versions are chat."""


DATA_FORMATS = {"supervised": "chat", "dpo": "preference"}
"""What the training (and validation) data of each trained method must hold."""


def _check_format(method: str, item_id: str, found: str, param: str) -> None:
    """Refuse data of the wrong kind for the method: a dpo job trains on preference pairs, a supervised
    one on chat conversations (400 ``invalid_training_file_format`` on ``param``)."""
    wanted = DATA_FORMATS.get(method)
    if wanted is None or found == wanted:
        return
    if method == "dpo" and is_dataset_version(item_id):
        raise InvalidArgument(f"Dataset version {item_id} holds chat conversations; a dpo job trains on preference "
                              'pairs: upload a preference file ({"input": {"messages": [...]}, "preferred_output": '
                              '[...], "non_preferred_output": [...]} per line, purpose fine-tune) and name it.',
                              param=param, code=f"invalid_{param}_format")
    if method == "dpo":
        raise InvalidArgument(f"File {item_id} holds chat conversations; a dpo job trains on preference pairs, one "
                              '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": '
                              "[...]} per line.", param=param, code=f"invalid_{param}_format")
    raise InvalidArgument(f"File {item_id} holds preference pairs, which train a dpo job (method.type 'dpo'); a "
                          f"{method} job trains on chat conversations.", param=param, code=f"invalid_{param}_format")


def _check_training(deps: TrainerDeps, tenant_id: str, item_id: str) -> tuple[_Data, int]:
    """The training file or dataset version, and the version's validation examples (0 for a file)."""
    if is_dataset_version(item_id):
        v = _check_version(deps, tenant_id, item_id, "training_file")
        return _Data(int(v.train_examples), f"dataset version {item_id} ({v.name}, sha256 {v.sha256[:12]}): "
                                            f"{v.train_examples} training examples"), int(v.validation_examples)
    f = _check_file(deps, tenant_id, item_id, "training_file")
    kind = f.format or "chat"
    what = "preference pairs" if kind == "preference" else "examples"
    return _Data(int(f.example_count), f"training file: {item_id} ({f.example_count} {what})", kind), 0


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


@dataclass
class JobPlan:
    """A job as creation would store it, checked and estimated but not saved (what a dry run answers)."""

    job: Job
    estimate: dict[str, Any]
    eligibility: dict[str, Any]
    notes: list[Note] = field(default_factory=list)

    def as_openai(self) -> dict[str, Any]:
        """The ``fine_tuning.job.estimate`` object."""
        return {"object": "fine_tuning.job.estimate", "model": self.job.model,
                "training_file": self.job.training_file, "validation_file": self.job.validation_file,
                "hyperparameters": {**job_hyperparameters(self.job), "preset": self.job.preset},
                "preset": self.job.preset, "estimate": self.estimate, "eligibility": self.eligibility}


def resolve_preset(settings: TrainerSettings, req: CreateJobRequest) -> tuple[Hyperparameters, list[str]]:
    """The request's hyperparameters with its preset filling those left 'auto' (explicit values win),
    and warnings about preset values that had to be lowered. An unknown preset is a 400 on "preset"."""
    hp = req.resolved_hyperparameters()
    if req.preset is None:
        return hp, []
    table = settings.presets.get(settings.device_class, {})
    if req.preset not in table:
        raise InvalidArgument(f"Unknown preset {req.preset!r}; expected one of {', '.join(sorted(table)) or 'none'} "
                              f"(device class {settings.device_class}).", param="preset", code="invalid_preset")
    filled: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in table[req.preset].items():
        if getattr(hp, key, None) != "auto":
            continue
        if key == "lora_r" and value > settings.max_lora_rank:
            warnings.append(f"Preset {req.preset} asks for lora_r {int(value)}; the serving engines accept at most "
                            f"{settings.max_lora_rank}, so lora_r {settings.max_lora_rank} is used.")
            value = settings.max_lora_rank
        filled[key] = value
    return type(hp).model_validate({**hp.model_dump(), **filled}), warnings


def _check_eligibility(deps: TrainerDeps, tenant_id: str, item_id: str) -> dataset_pb2.CheckEligibilityResponse:
    """The dataset service's eligibility scan of the training data; too few usable examples is a 400."""
    split = "train" if is_dataset_version(item_id) else ""
    with typed_rpc_errors():
        found: dataset_pb2.CheckEligibilityResponse = deps.dataset_stub().CheckEligibility(
            dataset_pb2.CheckEligibilityRequest(id=item_id, split=split), metadata=deps.dataset.metadata(tenant_id),
            timeout=300)
    if found.usable < deps.settings.min_usable_examples:
        advice = " ".join(found.advice)
        raise InvalidArgument(f"The training data has {found.usable} usable examples; at least "
                              f"{deps.settings.min_usable_examples} are needed. {found.message}."
                              + (f" {advice}" if advice else ""),
                              param="training_file", code="invalid_training_file")
    return found


def estimate(settings: TrainerSettings, model: str, tokens_per_epoch: int, epochs: int, usable: int,
             batch_size: int) -> dict[str, Any]:
    """Tokens, steps, time and price of a job on the settings' device class."""
    device = settings.device_class
    per_second = settings.tokens_per_second.get(device, settings.estimated_tokens_per_second)
    price = settings.price_table.get(model, {}).get(device, settings.price_per_million_tokens)
    total = tokens_per_epoch * epochs
    return {"tokens_per_epoch": tokens_per_epoch, "epochs": epochs, "total_tokens": total,
            "steps": math.ceil(usable / batch_size) * epochs, "device": device, "tokens_per_second": per_second,
            "seconds": total / per_second, "cost_usd": round(total / 1e6 * price, 6),
            "price_per_million_tokens": price}


def _resolve_model(deps: TrainerDeps, tenant_id: str, req: CreateJobRequest) -> tuple[str, ParentAdapter | None]:
    """The base model the job trains on and, when ``model`` names one of the tenant's fine-tuned models,
    that parent adapter (continued training). An unknown model, or another tenant's, is a 400 on ``model``."""
    try:
        with typed_rpc_errors():
            model: registry_pb2.Model = deps.registry_stub().GetModel(
                registry_pb2.GetModelRequest(model_id=req.model), metadata=deps.registry.metadata(tenant_id),
                timeout=10)
    except NotFound:
        raise InvalidArgument(f"Model {req.model} does not exist or you do not have access to it.",
                              param="model", code="model_not_available") from None
    if model.external_model:  # no adapter here to start from: it lives on the remote that trained it
        raise InvalidArgument(f"{model.id} is an external model, served by the remote that trained it; its adapter "
                              f"is not here to continue training from. Name its base model {model.base_model}.",
                              param="model", code="unsupported_continued_training")
    if not model.adapter_uri:
        return model.base_model or model.id or req.model, None
    return model.base_model, ParentAdapter.from_registry(model.id, model.base_model, model.lora_rank,
                                                         list(model.target_modules), model.lineage_json)


def plan_job(deps: TrainerDeps, tenant_id: str, req: CreateJobRequest) -> JobPlan:
    """Validate the request against the registry and the dataset service and estimate it; nothing is stored."""
    # The request's own checks first, then the registry's model, then the data (the dataset service).
    req.check_method()
    get_backend(req.backend).check(deps.settings, req.method_type, tenant_id=tenant_id)
    s = deps.settings
    hp, warnings = resolve_preset(s, req)
    hp_param = req.hyperparameters_param()
    base_model, parent = _resolve_model(deps, tenant_id, req)
    if parent is not None and req.backend in REMOTE_BACKENDS:
        raise InvalidArgument(f"The {req.backend} backend trains on a remote API, which cannot start from the adapter "
                              f"of {parent.model_id}; name its base model {base_model} or use backend 'trl'.",
                              param="model", code="unsupported_continued_training")
    method = MethodSettings.resolve(s, hp)
    if parent is not None:
        # Only what the request asked for explicitly must match the parent (a preset's rank does not).
        method = continue_from(parent, method, req.resolved_hyperparameters(), hp_param)
    elif method.lora_r > s.max_lora_rank:
        raise InvalidArgument(f"lora_r={method.lora_r} exceeds the serving engines' maximum LoRA rank "
                              f"({s.max_lora_rank}); the adapter could not be served.",
                              param=f"{hp_param}.lora_r")
    train, version_validation = _check_training(deps, tenant_id, req.training_file)
    _check_format(req.method_type, req.training_file, train.format, "training_file")
    # A dataset version as validation_file means its validation split; without a validation_file,
    # a version's own validation split (when it has one) gives the job its validation loss.
    validation_file = req.validation_file
    validation_param = "validation_file"
    if validation_file and is_dataset_version(validation_file):
        _check_format(req.method_type, validation_file, "chat", "validation_file")
        if validation_file == req.training_file:
            has_split = version_validation > 0
        else:
            has_split = _check_version(deps, tenant_id, validation_file, "validation_file").validation_examples > 0
        if not has_split:
            raise InvalidArgument(f"Dataset version {validation_file} has no validation split.",
                                  param="validation_file", code="invalid_file")
    elif validation_file:
        checked = _check_file(deps, tenant_id, validation_file, "validation_file")
        _check_format(req.method_type, validation_file, checked.format or "chat", "validation_file")
    elif version_validation > 0:
        validation_file, validation_param = req.training_file, "training_file"
    n_epochs = s.default_n_epochs if hp.n_epochs == "auto" else hp.n_epochs
    # The default (or a preset's) batch size is capped at a quarter of the examples: a small file
    # still gets several steps per epoch. An explicit batch_size is used as given.
    if req.resolved_hyperparameters().batch_size != "auto":
        batch_size = int(hp.batch_size)
    else:
        wanted = s.default_batch_size if hp.batch_size == "auto" else hp.batch_size
        batch_size = max(1, min(wanted, train.examples // 4))
    lr_mult = 1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier
    if method.early_stopping_patience and not validation_file:
        raise InvalidArgument("Early stopping needs a validation_file (or a dataset version with a validation "
                              "split) to measure the validation loss on.",
                              param=f"{hp_param}.early_stopping_patience")
    train_tokens = _check_tokens(deps, tenant_id, req.training_file, "training_file", method.max_length, base_model,
                                 "train" if is_dataset_version(req.training_file) else "")
    if validation_file:
        _check_tokens(deps, tenant_id, validation_file, validation_param, method.max_length, base_model,
                      "validation" if is_dataset_version(validation_file) else "")
    found = _check_eligibility(deps, tenant_id, req.training_file)
    if found.usable < s.warn_usable_examples:
        warnings.insert(0, f"Only {found.usable} usable training examples (fewer than {s.warn_usable_examples}): "
                           f"the fine-tune may learn little or overfit; {s.warn_usable_examples} or more varied "
                           f"examples usually train a useful adapter.")
    eligibility = {"examples": found.examples, "usable": found.usable,
                   "unusable": {u.reason: u.count for u in found.unusable},
                   "warnings": warnings, "advice": list(found.advice)}
    est = estimate(s, base_model, train_tokens, n_epochs, int(found.usable), batch_size)
    tokens, seconds = est["total_tokens"], est["seconds"]
    job = Job(id=new_id("ftjob"), tenant_id=tenant_id, model=base_model,
              parent_model=parent.model_id if parent is not None else None, method_type=req.method_type,
              backend=req.backend,
              training_file=req.training_file, validation_file=validation_file, suffix=req.suffix,
              n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=lr_mult,
              seed=req.seed if req.seed is not None else s.default_seed, method_json=method.as_json(),
              estimated_tokens=tokens, estimated_seconds=seconds, estimated_cost_usd=est["cost_usd"],
              estimate_json=json.dumps({"estimate": est, "eligibility": eligibility}), preset=req.preset,
              queued_at=utcnow(), estimated_finish=utcnow() + timedelta(seconds=seconds))
    notes = [Note(f"Validated {train.description}")]
    if parent is not None:
        alpha = f", alpha {method.lora_alpha}" if method.lora_alpha is not None else ""
        notes.append(Note(f"Continuing the training of {parent.model_id}: its adapter (LoRA rank {method.lora_r}"
                          f"{alpha} on {', '.join(method.target_modules)}) is the starting point, on base model "
                          f"{base_model}.", data={"parent_model": parent.model_id, "base_model": base_model}))
    if req.method_type == "dpo":
        reference = f"the parent model {parent.model_id}" if parent is not None else f"the base model {base_model}"
        notes.append(Note(f"Method: DPO on preference pairs, beta {method.beta}; the reference model is {reference}.",
                          data={"method": "dpo", "beta": method.beta}))
    if req.backend != "trl":
        notes.append(Note(f"Training backend: {req.backend}."))
    if is_dataset_version(validation_file):
        notes.append(Note(f"Validation loss is measured on the validation split of dataset version "
                          f"{validation_file}."))
    if req.preset:
        notes.append(Note(f"Hyperparameters from preset {req.preset} ({s.device_class}); explicit values kept."))
    notes.append(Note(f"{found.message}.", data=eligibility))
    notes.extend(Note(w, level="warn") for w in warnings)
    notes.append(Note(f"Estimated {tokens} training tokens, {est['steps']} steps, about {seconds / 60:.0f} min on "
                      f"{est['device']} and ${job.estimated_cost_usd:.4f}.",
                      data={"estimated_tokens": tokens, "estimated_seconds": seconds,
                            "estimated_cost_usd": job.estimated_cost_usd, **est}))
    return JobPlan(job, est, eligibility, notes)


def create_job(deps: TrainerDeps, tenant_id: str, req: CreateJobRequest) -> Job | JobPlan:
    """Validate and estimate the request; unless it is a dry run (then the plan is returned and
    nothing is stored or emitted), store the job and queue it."""
    plan = plan_job(deps, tenant_id, req)
    if req.dry_run:
        return plan
    job = plan.job
    with deps.db.session() as sess:
        lifecycle.create(sess, deps.publisher, job, plan.notes)
    log.info("job created", job_id=job.id, tenant=tenant_id, model=job.model, parent=job.parent_model,
             backend=job.backend, epochs=job.n_epochs)
    return job


def get_job(deps: TrainerDeps, tenant_id: str, job_id: str) -> Job:
    with deps.db.session() as s:
        return repository.job(s, tenant_id, job_id)


def list_jobs(deps: TrainerDeps, tenant_id: str, after: str | None, limit: int) -> tuple[list[Job], bool]:
    with deps.db.session() as s:
        return repository.jobs_page(s, tenant_id, after, limit)


def list_events(deps: TrainerDeps, tenant_id: str, job_id: str, after: str | None,
                limit: int) -> tuple[list[JobEvent], bool]:
    with deps.db.session() as s:
        repository.job(s, tenant_id, job_id)
        return repository.events_page(s, job_id, after, limit)


def cancel_job(deps: TrainerDeps, tenant_id: str, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one when its worker finishes the current step."""
    with deps.db.session() as s:
        repository.job(s, tenant_id, job_id)
        return lifecycle.request_cancel(s, deps.publisher, job_id)


def list_checkpoints(deps: TrainerDeps, tenant_id: str, job_id: str, after: str | None,
                     limit: int) -> tuple[list[JobCheckpoint], bool]:
    with deps.db.session() as s:
        repository.job(s, tenant_id, job_id)
        return repository.checkpoints_page(s, job_id, after, limit)
