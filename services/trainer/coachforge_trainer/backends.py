"""Training backends: what trains a job's adapter, chosen per job with ``"backend"`` (default ``trl``).

Every backend answers two questions, one on each side of the queue:

* :meth:`Backend.check` -- at job creation, in the API (which never imports torch): can the workers
  train this job with this backend? A refusal is a 400 on ``backend`` (or on ``method.type``) naming
  why, so a job that cannot run is never queued.
* :meth:`Backend.train` -- in the worker: train the job's adapter (:class:`TrainRun`) and return the
  :class:`~coachforge_trainer.sft.TrainResult`.

==================  ===================================================================================
backend             trains with
==================  ===================================================================================
``trl``             transformers + peft + TRL (LoRA on CPU, QLoRA on CUDA): ``SFTTrainer`` for method
                    ``supervised`` (:func:`run_sft`), ``DPOTrainer`` for ``dpo`` (:func:`run_dpo`)
``unsloth``         unsloth's ``FastLanguageModel`` (4-bit base, its LoRA kernels) under the same trainer;
                    CUDA workers with unsloth installed only; ``supervised`` only
``openai_compatible`` a remote OpenAI-compatible fine-tuning API, per tenant (``COACHFORGE_TRAINER_REMOTES_FILE``):
                    the worker creates and follows the remote job and downloads its adapter
                    (:mod:`coachforge_trainer.remote`); ``supervised`` only
==================  ===================================================================================

A new backend is a class with ``name``, ``check`` and ``train`` added to :data:`BACKENDS`. A backend
that trains elsewhere (listed in :data:`REMOTE_BACKENDS`) is followed by the workers' remote slots,
not their training slots.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coachforge_shared.errors import InvalidArgument
from coachforge_trainer.settings import TrainerSettings

if TYPE_CHECKING:
    from coachforge_trainer.sft import Checkpoint, LoadedModel, Progress, TrainParams, TrainResult

logger = logging.getLogger("coachforge.trainer.backends")

DEFAULT_BACKEND = "trl"


@dataclass
class TrainRun:
    """One training run of a job, as the worker hands it to its backend."""

    base_model_dir: Path
    examples: list[dict[str, Any]]
    output_dir: Path
    params: TrainParams
    method: str = "supervised"
    """OpenAI's method type: ``supervised`` (chat ``examples``) or ``dpo`` (preference-pair ``examples``)."""
    parent_adapter_dir: Path | None = None
    """Continued training: the folder of the adapter training starts from (None: a new adapter)."""
    eval_examples: list[dict[str, Any]] | None = None
    on_progress: Callable[[Progress], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    on_checkpoint: Callable[[Checkpoint], None] | None = None
    should_pause: Callable[[], bool] | None = None
    # What a remote backend (openai_compatible) needs besides the above; local backends ignore them.
    settings: TrainerSettings | None = None
    """The worker's settings (the remotes file, the poll interval)."""
    tenant_id: str = ""
    job_id: str = ""
    base_model: str = ""
    """The base model's name (what the remote job trains on)."""
    suffix: str | None = None
    learning_rate_multiplier: float = 1.0
    remote_job_id: str | None = None
    """The remote job an earlier attempt created and stored: followed again rather than created anew."""
    on_remote_job: Callable[[str], bool] | None = None
    """Store the id of the remote job just created on the local job; ``False``: the job is no longer ours."""
    on_event: Callable[[str, str, dict[str, Any] | None], None] | None = None
    """Add an event (message, level, data) to the local job."""
    mirrored_events: frozenset[str] = frozenset()
    """Ids of the remote job's events an earlier attempt already mirrored."""
    reported_step: int = 0
    """Last step whose progress an earlier attempt already reported."""
    lease_lost: Callable[[], bool] | None = None
    """Whether the worker lost the job (``should_cancel`` is true then too, but nothing must be cancelled)."""


class Backend(Protocol):
    """A way to train a job's adapter."""

    name: str

    def check(self, settings: TrainerSettings, method: str, tenant_id: str | None = None) -> None:
        """Refuse (400) a job the workers could not train with this backend for the tenant ``tenant_id``
        (``None``: no tenant's configuration applies); called at creation."""

    def train(self, run: TrainRun) -> TrainResult:
        """Train the run's adapter (in the worker)."""


def _unsupported_method(backend: str, method: str, methods: tuple[str, ...] = ("supervised",)) -> InvalidArgument:
    names = " or ".join(repr(m) for m in methods)
    return InvalidArgument(f"Fine-tuning method {method!r} is not supported by the {backend} backend yet; use "
                           f"method.type {names}.", param="method.type", code="unsupported_method")


def _train_sft(run: TrainRun, model_loader: Callable[..., LoadedModel] | None = None) -> TrainResult:
    from coachforge_trainer.sft import run_sft

    return run_sft(run.base_model_dir, run.examples, run.output_dir, run.params, on_progress=run.on_progress,
                   should_cancel=run.should_cancel, eval_examples=run.eval_examples,
                   on_checkpoint=run.on_checkpoint, should_pause=run.should_pause,
                   parent_adapter_dir=run.parent_adapter_dir, model_loader=model_loader)


def _train_dpo(run: TrainRun) -> TrainResult:
    from coachforge_trainer.dpo import run_dpo

    return run_dpo(run.base_model_dir, run.examples, run.output_dir, run.params, on_progress=run.on_progress,
                   should_cancel=run.should_cancel, eval_examples=run.eval_examples,
                   on_checkpoint=run.on_checkpoint, should_pause=run.should_pause,
                   parent_adapter_dir=run.parent_adapter_dir)


class TrlBackend:
    """transformers + peft + TRL (the default): LoRA on CPU workers, QLoRA on CUDA ones; supervised
    fine-tuning and DPO."""

    name = "trl"
    methods = ("supervised", "dpo")

    def check(self, settings: TrainerSettings, method: str, tenant_id: str | None = None) -> None:
        if method not in self.methods:
            raise _unsupported_method(self.name, method, self.methods)

    def train(self, run: TrainRun) -> TrainResult:
        if run.method == "dpo":
            return _train_dpo(run)
        if run.method != "supervised":
            raise ValueError(f"the {self.name} backend does not train method {run.method!r}")
        return _train_sft(run)


def unsloth_available(settings: TrainerSettings) -> bool:
    """Whether the workers have unsloth: ``settings.unsloth_installed``, or, unset, whether this process
    finds the package (without importing it: it needs torch and CUDA)."""
    if settings.unsloth_installed is not None:
        return settings.unsloth_installed
    return importlib.util.find_spec("unsloth") is not None


class UnslothBackend:
    """unsloth's ``FastLanguageModel``: the base model in 4-bit with unsloth's LoRA kernels and gradient
    checkpointing, trained by the same SFT trainer (same data, loss masking, checkpoints, progress)."""

    name = "unsloth"

    def check(self, settings: TrainerSettings, method: str, tenant_id: str | None = None) -> None:
        if settings.device_class != "cuda":
            raise InvalidArgument(f"The unsloth backend needs CUDA workers; this trainer's workers are "
                                  f"{settings.device_class!r} (COACHFORGE_TRAINER_DEVICE_CLASS). Use backend 'trl'.",
                                  param="backend", code="backend_unavailable")
        if not unsloth_available(settings):
            raise InvalidArgument("The unsloth backend is not installed on this trainer's workers "
                                  "(COACHFORGE_TRAINER_UNSLOTH_INSTALLED). Use backend 'trl'.",
                                  param="backend", code="backend_unavailable")
        if method != "supervised":
            raise _unsupported_method(self.name, method)

    def train(self, run: TrainRun) -> TrainResult:
        return _train_sft(run, model_loader=load_with_unsloth)


def load_with_unsloth(base_model_dir: Path, params: TrainParams, parent_adapter_dir: Path | None) -> LoadedModel:
    """The base model loaded by unsloth (4-bit) with a trainable LoRA adapter: a new one of the run's
    shape, or the parent's weights for continued training. Needs CUDA and the unsloth package."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("the unsloth backend needs a CUDA device; this worker has none")
    try:
        # unsloth patches transformers and TRL when it is imported, so it comes first here.
        from unsloth import FastLanguageModel  # type: ignore[import-not-found,unused-ignore]
    except ImportError as err:
        raise RuntimeError(f"the unsloth backend is not installed on this worker: {err}") from None
    from peft import PeftModel

    from coachforge_trainer.sft import LINEAR_PROJECTIONS, LoadedModel

    model, tokenizer = FastLanguageModel.from_pretrained(model_name=str(base_model_dir),
                                                         max_seq_length=params.max_length, dtype=None,
                                                         load_in_4bit=True)
    if parent_adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(parent_adapter_dir), is_trainable=True)
    else:
        modules = list(LINEAR_PROJECTIONS) if params.target_modules == "all-linear" else list(params.target_modules)
        model = FastLanguageModel.get_peft_model(
            model, r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
            target_modules=modules, bias="none", use_gradient_checkpointing="unsloth",
            random_state=params.seed)
    # unsloth brings its own gradient checkpointing; the trainer must not add transformers' on top.
    return LoadedModel(model=model, tokenizer=tokenizer, gradient_checkpointing=False)


class OpenAICompatibleBackend:
    """Training delegated to the tenant's remote OpenAI-compatible fine-tuning API (its entry in the
    remotes file, :func:`coachforge_trainer.remote.remote_for`): the worker creates the remote job,
    follows it and downloads its adapter (:func:`coachforge_trainer.remote.train_remote`)."""

    name = "openai_compatible"
    methods = ("supervised",)

    def check(self, settings: TrainerSettings, method: str, tenant_id: str | None = None) -> None:
        from coachforge_trainer.remote import remote_for

        if remote_for(settings, tenant_id) is None:
            raise InvalidArgument("The openai_compatible backend is not configured for this tenant. Use backend "
                                  "'trl'.", param="backend", code="backend_not_configured")
        if method not in self.methods:
            raise _unsupported_method(self.name, method, self.methods)

    def train(self, run: TrainRun) -> TrainResult:
        from coachforge_trainer.remote import RemoteTrainingFailed, remote_for, train_remote

        if run.method not in self.methods:
            raise ValueError(f"the {self.name} backend does not train method {run.method!r}")
        if run.parent_adapter_dir is not None:
            raise ValueError(f"the {self.name} backend cannot continue training a local adapter")
        settings = run.settings or TrainerSettings()
        remote = remote_for(settings, run.tenant_id)
        if remote is None:
            raise RemoteTrainingFailed("The openai_compatible backend is no longer configured for this tenant "
                                       "(no entry in the remotes file).", "backend_not_configured")
        return train_remote(run, remote, settings.remote_poll_seconds)


BACKENDS: dict[str, Backend] = {b.name: b for b in (TrlBackend(), UnslothBackend(), OpenAICompatibleBackend())}
"""Every backend by name."""
REMOTE_BACKENDS = frozenset({OpenAICompatibleBackend.name})
"""Backends whose jobs train elsewhere: a worker follows them in its remote slots, never in a training slot."""


def get_backend(name: str) -> Backend:
    """The backend called ``name``; an unknown name is a 400 on ``backend``."""
    found = BACKENDS.get(name)
    if found is None:
        raise InvalidArgument(f"Unknown backend {name!r}; expected one of {', '.join(BACKENDS)}.", param="backend",
                              code="invalid_backend")
    return found
