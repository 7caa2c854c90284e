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
``trl``             transformers + peft + TRL's ``SFTTrainer`` (LoRA on CPU, QLoRA on CUDA): :func:`run_sft`
``unsloth``         unsloth's ``FastLanguageModel`` (4-bit base, its LoRA kernels) under the same trainer;
                    CUDA workers with unsloth installed only
``openai_compatible`` a remote OpenAI-compatible fine-tuning API; not configured yet (refused at creation)
==================  ===================================================================================

A new backend is a class with ``name``, ``check`` and ``train`` added to :data:`BACKENDS`.
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
    """OpenAI's method type (only ``supervised`` is trained so far)."""
    parent_adapter_dir: Path | None = None
    """Continued training: the folder of the adapter training starts from (None: a new adapter)."""
    eval_examples: list[dict[str, Any]] | None = None
    on_progress: Callable[[Progress], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    on_checkpoint: Callable[[Checkpoint], None] | None = None
    should_pause: Callable[[], bool] | None = None


class Backend(Protocol):
    """A way to train a job's adapter."""

    name: str

    def check(self, settings: TrainerSettings, method: str) -> None:
        """Refuse (400) a job the workers could not train with this backend; called at creation."""

    def train(self, run: TrainRun) -> TrainResult:
        """Train the run's adapter (in the worker)."""


def _unsupported_method(backend: str, method: str) -> InvalidArgument:
    return InvalidArgument(f"Fine-tuning method {method!r} is not supported by the {backend} backend yet; use "
                           f"method.type 'supervised'.", param="method.type", code="unsupported_method")


def _train_sft(run: TrainRun, model_loader: Callable[..., LoadedModel] | None = None) -> TrainResult:
    from coachforge_trainer.sft import run_sft

    return run_sft(run.base_model_dir, run.examples, run.output_dir, run.params, on_progress=run.on_progress,
                   should_cancel=run.should_cancel, eval_examples=run.eval_examples,
                   on_checkpoint=run.on_checkpoint, should_pause=run.should_pause,
                   parent_adapter_dir=run.parent_adapter_dir, model_loader=model_loader)


class TrlBackend:
    """transformers + peft + TRL (the default): LoRA on CPU workers, QLoRA on CUDA ones."""

    name = "trl"

    def check(self, settings: TrainerSettings, method: str) -> None:
        if method != "supervised":
            raise _unsupported_method(self.name, method)

    def train(self, run: TrainRun) -> TrainResult:
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

    def check(self, settings: TrainerSettings, method: str) -> None:
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
    """Training delegated to a remote OpenAI-compatible fine-tuning API: no tenant has one configured yet."""

    name = "openai_compatible"

    def check(self, settings: TrainerSettings, method: str) -> None:
        raise InvalidArgument("The openai_compatible backend is not configured for this tenant. Use backend 'trl'.",
                              param="backend", code="backend_not_configured")

    def train(self, run: TrainRun) -> TrainResult:
        raise RuntimeError("the openai_compatible backend is not configured")


BACKENDS: dict[str, Backend] = {b.name: b for b in (TrlBackend(), UnslothBackend(), OpenAICompatibleBackend())}
"""Every backend by name."""


def get_backend(name: str) -> Backend:
    """The backend called ``name``; an unknown name is a 400 on ``backend``."""
    found = BACKENDS.get(name)
    if found is None:
        raise InvalidArgument(f"Unknown backend {name!r}; expected one of {', '.join(BACKENDS)}.", param="backend",
                              code="invalid_backend")
    return found
