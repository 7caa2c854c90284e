"""LoRA supervised fine-tuning of a causal language model with transformers, peft and trl.

:func:`run_sft` trains a LoRA adapter on chat conversations and writes only the adapter
(plus the tokenizer) to ``output_dir / "adapter"``, ready to be served by vLLM next to
the unchanged base model.

* **CPU** (no CUDA device): LoRA on float32 weights, no gradient checkpointing, and the output
  head projected only at the answer's positions (:class:`_AnswerHeadSFTTrainer`). The precision
  of the computation is chosen by :func:`resolve_precision`: bfloat16 autocast where the CPU has
  native bfloat16 instructions (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``), float32
  elsewhere (emulated bfloat16 is slower than float32).
* **CUDA**: QLoRA -- the base model is loaded in 4-bit NF4 with bitsandbytes (compute in
  bfloat16), training runs in bf16 with gradient checkpointing. bitsandbytes is imported
  only on this path; if it is not installed, the base model is loaded in bfloat16
  instead (plain LoRA) and a warning is logged.

Continued training
------------------
With ``parent_adapter_dir`` the run starts from an existing adapter instead of a new one: the base
model is loaded as above and the parent's LoRA weights are put on it with
``PeftModel.from_pretrained(..., is_trainable=True)``. The adapter keeps the parent's shape (rank,
alpha, target modules; a ``params`` asking for another rank or alpha is an error); only its dropout
is the run's. The saved adapter is a complete one (parent plus what this run learnt), served like any.

A ``model_loader`` (see :class:`LoadedModel`) replaces how the model and its trainable adapter are
built, e.g. by unsloth (:mod:`coachforge_trainer.backends`); everything else stays the same.

Loss masking
------------
The loss is computed on the **final assistant message** of each conversation only.
TRL's ``assistant_only_loss=True`` needs a chat template with ``{% generation %}``
markers; the SmolLM2 ChatML template has none, and TRL 1.16's
``get_training_chat_template`` cannot patch it (it raises ``ValueError`` for templates
it does not know). Each conversation is therefore converted to TRL's conversational
*prompt-completion* format -- ``prompt`` = every message before the last assistant
message, ``completion`` = that message -- for which TRL's ``completion_only_loss``
(enabled by default for this format) masks the prompt tokens. Earlier assistant turns of
a multi-turn conversation are context, not targets; the completion includes the
end-of-turn token, so the model learns to stop.

This module imports torch, transformers, peft and trl at import time; callers that must
stay light should import it lazily.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from peft import LoraConfig, PeftConfig, PeftModel
from transformers import (
    AutoTokenizer,
    EarlyStoppingCallback,
    PrinterCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # lazily exported
from trl.trainer.utils import create_model_from_path

__all__ = [
    "Checkpoint",
    "LoadedModel",
    "Progress",
    "RunSetup",
    "TrainParams",
    "TrainResult",
    "TrainingCancelled",
    "TrainingPaused",
    "cpu_has_bf16",
    "list_checkpoints",
    "progress_callbacks",
    "resolve_precision",
    "run_sft",
    "setup_run",
    "train_and_save",
]

Precision = Literal["auto", "bf16", "fp32"]
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of CPUs that compute in bfloat16 natively."""

logger = logging.getLogger("coachforge.trainer.sft")

ADAPTER_DIRNAME = "adapter"
"""Name of the folder, inside ``output_dir``, that receives the trained adapter."""
CHECKPOINTS_DIRNAME = "checkpoints"
"""Name of the folder, inside ``output_dir``, that holds ``checkpoint-<step>`` folders."""
_STATE_FILE = "trainer_state.json"
"""Written last into a checkpoint folder: a folder without it is incomplete."""

LINEAR_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers of a Llama-style decoder block, what ``"all-linear"`` adapts there."""

_MODEL_LOAD = threading.Lock()
"""Loading a model is not thread-safe: transformers swaps process-wide functions while it builds one
(parameters on the meta device, skipped weight init), so two loads at once in one process leave
models, or the process, with empty "meta" weights. A worker with several slots loads one at a time."""


def _accelerator_config(bf16: bool) -> dict[str, bool]:
    """Reuse accelerate's process-wide state when an earlier run set it up the same way (CPU or not,
    same mixed precision). Setting it up again clears it first, which breaks a run training in another
    thread of the process (a worker with several slots: "AcceleratorState object has no attribute
    distributed_type"). A run with another mixed precision still sets it up anew."""
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    same = bool(PartialState._shared_state) and state.get("_mixed_precision") == ("bf16" if bf16 else "no")
    return {"use_configured_state": True} if same else {}


@dataclass
class TrainParams:
    """Hyper-parameters of a LoRA fine-tuning run."""

    n_epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 5e-4
    lora_r: int = 16
    lora_alpha: int | None = 32
    """``None`` only with a parent adapter: its own alpha is kept."""
    lora_dropout: float = 0.0
    """0 skips PEFT's dropout copy of each adapted layer's input (faster, less memory)."""
    target_modules: str | list[str] = "all-linear"
    """Module names to adapt, or ``"all-linear"`` for every linear layer but the output head."""
    max_length: int = 1024
    """Conversations are truncated to this many tokens (the end is cut off)."""
    seed: int = 42
    logging_steps: int = 1
    """Report :class:`Progress` every this many optimizer steps."""
    max_steps: int = -1
    """If positive, stop after this many optimizer steps (overrides ``n_epochs``)."""
    micro_batch_size: int = 0
    """Examples per forward pass; ``batch_size`` is reached by gradient accumulation. ``0`` picks
    by device (:func:`micro_batch_for`): 1 on CPU, where one unpadded example per pass was measured
    fastest with the least memory (bench/train_throughput.py: 155 tokens/s and 3.3 GB vs 127 tokens/s
    and 11 GB at 4), and up to 8 on CUDA, where larger matrices keep the GPU busy."""
    checkpoint_steps: int = 0
    """Save a checkpoint every this many optimizer steps; ``0`` saves one at each epoch end."""
    save_checkpoints: bool = True
    """Write resumable checkpoints (adapter + optimizer, scheduler and RNG state)."""
    early_stopping_patience: int = 0
    """Stop when the validation loss has not improved for this many evaluations (``0``: never).
    Needs validation examples; the best checkpoint becomes the final adapter."""
    beta: float = 0.1
    """DPO only (:func:`coachforge_trainer.dpo.run_dpo`): weight of the penalty that keeps the trained
    model near the reference model; higher stays closer."""
    precision: Precision = "auto"
    """Computation precision: ``"bf16"`` (autocast; weights stay float32 on the CPU), ``"fp32"``, or
    ``"auto"``: bf16 on CUDA and on CPUs with native bfloat16 (:func:`resolve_precision`), fp32 elsewhere."""


@dataclass
class Progress:
    """Training progress, passed to ``on_progress`` at every logging step."""

    step: int
    """Optimizer steps completed so far."""
    total_steps: int
    epoch: float
    """Fractional epoch reached, e.g. ``1.5`` halfway through the second epoch."""
    train_loss: float | None
    """Mean training loss over the steps since the previous report."""
    learning_rate: float | None
    tokens_seen: int
    """Non-padding input tokens processed so far (prompt and completion)."""
    tokens_per_second: float
    eta_seconds: float | None
    """Estimated seconds until the end of training, ``None`` before the first step."""
    valid_loss: float | None = None
    """Loss on the validation examples at the latest evaluation, if any."""


@dataclass
class Checkpoint:
    """A complete checkpoint folder: a loadable adapter plus the state to resume from."""

    step: int
    epoch: float
    path: Path
    train_loss: float | None
    valid_loss: float | None


@dataclass
class TrainResult:
    """Outcome of a successful :func:`run_sft` call."""

    adapter_dir: Path | None
    """The trained adapter's folder; ``None`` only for a remote job whose remote offers no download of
    it (``remote_model`` is then served remotely, as an external model)."""
    steps: int
    trained_tokens: int
    """Non-padding input tokens processed over all epochs."""
    final_loss: float | None
    """Last reported training loss."""
    valid_loss: float | None
    """Validation loss of the saved adapter's evaluation (``None`` without validation examples)."""
    resumed_from_step: int
    """Step of the checkpoint training resumed from (``0``: started from scratch)."""
    device: str
    """``"cpu"`` or ``"cuda"``."""
    precision: str
    """``"bf16"`` or ``"fp32"``: the precision training computed in."""
    lora_r: int
    target_modules: list[str]
    """Names of the modules that were actually adapted (``"all-linear"`` resolved)."""
    remote_job_id: str | None = None
    """Backend ``openai_compatible``: the remote job that trained the adapter (None: trained here)."""
    remote_model: str | None = None
    """Backend ``openai_compatible``: the remote's fine-tuned model the adapter was downloaded from (or,
    without ``adapter_dir``, that serves the job's model)."""
    remote_base_url: str | None = None
    """Backend ``openai_compatible``: the remote API's base URL (without credentials)."""


@dataclass
class LoadedModel:
    """What a ``model_loader`` of :func:`run_sft` builds: the model with its trainable LoRA adapter
    (a ``PeftModel``), its tokenizer, and whether the trainer should turn on transformers' gradient
    checkpointing (a loader with its own says no)."""

    model: Any
    tokenizer: Any
    gradient_checkpointing: bool


ModelLoader = Callable[[Path, "TrainParams", "Path | None"], LoadedModel]
"""``(base_model_dir, params, parent_adapter_dir) -> LoadedModel``."""


class TrainingCancelled(Exception):
    """Raised by :func:`run_sft` when ``should_cancel`` asked training to stop."""


class TrainingPaused(Exception):
    """Raised by :func:`run_sft` when ``should_pause`` asked it to stop: a checkpoint of the
    last step was saved first, so calling :func:`run_sft` again resumes from there."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training paused after step {step}")
        self.step = step


def list_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """The complete checkpoints of a run, oldest first, with the metrics logged up to each."""
    folder = Path(output_dir) / CHECKPOINTS_DIRNAME
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if (path / _STATE_FILE).is_file():
            found.append(_read_checkpoint(path))
    return sorted(found, key=lambda c: c.step)


def _read_checkpoint(path: Path) -> Checkpoint:
    state = json.loads((path / _STATE_FILE).read_text(encoding="utf-8"))
    train_loss = valid_loss = None
    for entry in state.get("log_history", []):
        if "loss" in entry:
            train_loss = float(entry["loss"])
        if "eval_loss" in entry:
            valid_loss = float(entry["eval_loss"])
    return Checkpoint(step=int(state["global_step"]), epoch=float(state.get("epoch") or 0.0), path=path,
                      train_loss=train_loss, valid_loss=valid_loss)


def _remove_incomplete_checkpoints(output_dir: Path) -> None:
    folder = output_dir / CHECKPOINTS_DIRNAME
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if not (path / _STATE_FILE).is_file():
            logger.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)


class _AnswerHeadSFTTrainer(SFTTrainer):  # type: ignore[misc]  # trl is untyped
    """``SFTTrainer`` whose training loss on the CPU projects the output head only where a label is.

    The loss covers the final answer only, yet on devices without Triton (the CPU) TRL's fused
    head scores every position: with a 49k-token vocabulary that is a fifth of the model's FLOPs,
    spent mostly on prompt tokens. Here the backbone's last hidden states are sliced to the
    positions whose next token is labelled (``logits_to_keep``) before the head, and the loss is
    the token-level mean TRL computes (tests/trainer/test_sft.py checks loss and gradients
    against TRL's). On the coach data (prompts of 500-650 tokens, short answers) it took the
    service from 1.04x to 1.8-2.1x the tokens/s of a plain ``SFTTrainer`` in
    bench/train_throughput.py. On CUDA, TRL's chunked head already scores only labelled
    positions, without materialising the logits: it is kept there, as it is for evaluation.
    """

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs.get("labels")
        if return_outputs or not model.training or labels is None or labels.device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        targets = labels[:, 1:]  # position p predicts token p + 1
        keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        logits = model(**forward, use_cache=False, logits_to_keep=keep).logits
        targets = targets[:, keep]
        per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                                      ignore_index=-100, reduction="sum")
        count = (targets != -100).sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as TRL does: DDP averages the gradients
        return loss


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (a flag of :data:`CPU_BF16_FLAGS` in
    ``/proc/cpuinfo``, or in ``cpuinfo`` when given); ``False`` where that file cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_precision(precision: Precision, cuda: bool, cpuinfo: str | None = None) -> Literal["bf16", "fp32"]:
    """The precision a run computes in: ``precision`` unless ``"auto"``, which is bf16 on CUDA and fp32
    on a CPU, also one with native bfloat16 (:func:`cpu_has_bf16`): measured on such a CPU (AMX), bf16
    autocast matches fp32's first loss but falls behind from the first update on (loss 1.84 against
    1.51 at the second of four steps of tests/trainer/test_sft.py's run), so it is only used there
    when asked for."""
    if precision != "auto":
        return precision
    return "bf16" if cuda else "fp32"


def micro_batch_for(params: TrainParams, cuda: bool) -> int:
    """The micro-batch size a run uses: ``params.micro_batch_size``, or the device's default."""
    chosen = params.micro_batch_size or (8 if cuda else 1)
    return max(1, min(params.batch_size, chosen))


def run_sft(
    base_model_dir: Path,
    examples: list[dict[str, Any]],
    output_dir: Path,
    params: TrainParams,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    *,
    eval_examples: list[dict[str, Any]] | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    should_pause: Callable[[], bool] | None = None,
    parent_adapter_dir: Path | None = None,
    model_loader: ModelLoader | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on chat conversations and save it, resuming if a checkpoint exists.

    Args:
        base_model_dir: Hugging Face folder of the base model (weights and tokenizer with
            a chat template).
        examples: OpenAI chat-format conversations,
            ``{"messages": [{"role": ..., "content": ...}, ...]}``; each must contain an
            assistant message, and the loss is computed on the last one (see the module
            documentation). Other keys are ignored.
        output_dir: Directory for this run; created if missing. Checkpoints go to
            ``output_dir / "checkpoints" / "checkpoint-<step>"``; if complete ones are
            there already, training resumes from the latest (model, optimizer, scheduler
            and RNG state), so the same call finishes an interrupted run. The final
            adapter is written to ``output_dir / "adapter"`` atomically.
        params: Hyper-parameters.
        on_progress: Called with a :class:`Progress` at every logging step and after every
            evaluation.
        should_cancel: Polled after every optimizer step (and once before training);
            when it returns ``True`` training stops and :class:`TrainingCancelled` is
            raised without writing the adapter. Complete checkpoints are kept.
        eval_examples: Validation conversations (same format); the validation loss is
            computed at every checkpoint.
        on_checkpoint: Called after each checkpoint is completely written.
        should_pause: Polled after every optimizer step; when it returns ``True`` a
            checkpoint of that step is saved and :class:`TrainingPaused` is raised.
        parent_adapter_dir: Continued training: a PEFT LoRA adapter folder (trained on this
            base model) whose weights training starts from, instead of a new adapter. Its rank
            (and alpha) must be ``params``' (see the module documentation).
        model_loader: Builds the model with its trainable adapter instead of transformers and
            peft (a backend such as unsloth); given ``parent_adapter_dir`` too.

    Returns:
        A :class:`TrainResult` describing the saved adapter.

    Raises:
        ValueError: if ``examples`` is empty or malformed, or the parent adapter's shape is not
            ``params``'.
        TrainingCancelled: if ``should_cancel`` returned ``True``.
        TrainingPaused: if ``should_pause`` returned ``True``.
    """
    dataset = Dataset.from_list(_to_prompt_completion(examples))
    eval_dataset = Dataset.from_list(_to_prompt_completion(eval_examples)) if eval_examples else None
    if params.early_stopping_patience and eval_dataset is None:
        raise ValueError("early stopping needs validation examples")
    output_dir = Path(output_dir)
    try:
        run = setup_run(Path(base_model_dir), output_dir, params, parent_adapter_dir, model_loader)
        # One run at a time sets up accelerate's process-wide state (see _accelerator_config) and loads.
        with _MODEL_LOAD:
            config = SFTConfig(**run.training_arguments(params, eval_dataset is not None),
                               max_length=params.max_length)
            callback, callbacks = progress_callbacks(run, params, on_progress, should_cancel, should_pause,
                                                     on_checkpoint)
            trainer = _AnswerHeadSFTTrainer(
                model=run.model,
                args=config,
                train_dataset=dataset,
                eval_dataset=eval_dataset,
                processing_class=run.tokenizer,
                peft_config=run.peft_config,
                quantization_config=run.trainer_quantization_config,
                callbacks=callbacks,
            )
        return train_and_save(trainer, callback, run, params, f"{len(dataset)} examples",
                              has_eval=eval_dataset is not None, should_cancel=should_cancel)
    finally:
        _remove_incomplete_checkpoints(output_dir)


@dataclass
class RunSetup:
    """What a LoRA run starts from, shared by :func:`run_sft` and :func:`coachforge_trainer.dpo.run_dpo`:
    where it writes, the checkpoint it resumes from, the device and precision, and the model to train
    (a path TRL loads with ``model_init_kwargs`` and wraps in ``peft_config``, or a model that already
    carries its trainable adapter: a parent's, or a ``model_loader``'s)."""

    output_dir: Path
    resume_from: Checkpoint | None
    cuda: bool
    precision: Literal["bf16", "fp32"]
    micro_batch: int
    save_strategy: str
    early_stopping: bool
    tokenizer: Any
    model: Any
    peft_config: LoraConfig | None
    model_init_kwargs: dict[str, Any] | None
    quantization_config: Any
    gradient_checkpointing: bool
    parent: bool
    """Continued training: the model carries the parent adapter's weights."""

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    @property
    def trainer_quantization_config(self) -> Any:
        """What the trainer is given as ``quantization_config``: only for a model it loads itself."""
        return self.quantization_config if isinstance(self.model, str) else None

    def training_arguments(self, params: TrainParams, has_eval: bool) -> dict[str, Any]:
        """The ``TrainingArguments`` every trainer of a run shares (``SFTConfig``, ``DPOConfig``). Call it
        under :data:`_MODEL_LOAD`: it reads accelerate's process-wide state (:func:`_accelerator_config`)."""
        return {
            "output_dir": str(self.output_dir / CHECKPOINTS_DIRNAME),
            "num_train_epochs": params.n_epochs,
            "max_steps": params.max_steps,
            "per_device_train_batch_size": self.micro_batch,
            "per_device_eval_batch_size": self.micro_batch,
            "gradient_accumulation_steps": math.ceil(params.batch_size / self.micro_batch),
            "learning_rate": params.learning_rate,
            "seed": params.seed,
            "logging_steps": params.logging_steps,
            "use_cpu": not self.cuda,
            "bf16": self.precision == "bf16",
            "gradient_checkpointing": self.gradient_checkpointing,
            "model_init_kwargs": self.model_init_kwargs,
            "include_num_input_tokens_seen": "non_padding",
            "save_strategy": self.save_strategy,
            "save_steps": params.checkpoint_steps or 500,
            "eval_strategy": self.save_strategy if has_eval and self.save_strategy != "no" else "no",
            "eval_steps": params.checkpoint_steps or None,
            "load_best_model_at_end": self.early_stopping,
            "metric_for_best_model": "eval_loss" if self.early_stopping else None,
            "greater_is_better": False if self.early_stopping else None,
            "report_to": [],
            "disable_tqdm": True,
            "accelerator_config": _accelerator_config(self.precision == "bf16"),
        }


def setup_run(base_model_dir: Path, output_dir: Path, params: TrainParams, parent_adapter_dir: Path | None = None,
              model_loader: ModelLoader | None = None) -> RunSetup:
    """Prepare a run: its folder (incomplete checkpoints removed, the latest complete one to resume from),
    device, precision, tokenizer, and the model with its LoRA adapter: the parent's weights for continued
    training, a ``model_loader``'s model, or a new adapter of ``params``' shape (a ``peft_config``).
    Call it inside ``try: ... finally: _remove_incomplete_checkpoints(output_dir)``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_incomplete_checkpoints(output_dir)
    previous = list_checkpoints(output_dir)
    cuda = torch.cuda.is_available()
    if parent_adapter_dir is not None:
        _check_parent(Path(parent_adapter_dir), params)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    quantization_config = _quantization_config() if cuda and model_loader is None else None
    save_strategy = "no" if not params.save_checkpoints else "steps" if params.checkpoint_steps > 0 else "epoch"
    model: Any = str(base_model_dir)  # TRL loads it, with the model_init_kwargs below
    peft_config: LoraConfig | None = None
    gradient_checkpointing = cuda
    init_kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32}
    model_init_kwargs: dict[str, Any] | None = init_kwargs
    with _MODEL_LOAD:
        if model_loader is not None:
            loaded = model_loader(base_model_dir, params, parent_adapter_dir)
            model, tokenizer, gradient_checkpointing = loaded.model, loaded.tokenizer, loaded.gradient_checkpointing
            model_init_kwargs = None
        elif parent_adapter_dir is not None:
            model = _load_parent(base_model_dir, Path(parent_adapter_dir), params, init_kwargs, quantization_config)
            model_init_kwargs = None
        else:
            if params.lora_alpha is None:
                raise ValueError("a new adapter needs lora_alpha")
            peft_config = LoraConfig(
                r=params.lora_r,
                lora_alpha=params.lora_alpha,
                lora_dropout=params.lora_dropout,
                target_modules=params.target_modules,
                bias="none",
                task_type="CAUSAL_LM",
            )
    return RunSetup(output_dir=output_dir, resume_from=previous[-1] if previous else None, cuda=cuda,
                    precision=resolve_precision(params.precision, cuda), micro_batch=micro_batch_for(params, cuda),
                    save_strategy=save_strategy,
                    early_stopping=bool(params.early_stopping_patience) and save_strategy != "no",
                    tokenizer=tokenizer, model=model, peft_config=peft_config, model_init_kwargs=model_init_kwargs,
                    quantization_config=quantization_config, gradient_checkpointing=gradient_checkpointing,
                    parent=parent_adapter_dir is not None)


def progress_callbacks(run: RunSetup, params: TrainParams, on_progress: Callable[[Progress], None] | None,
                       should_cancel: Callable[[], bool] | None, should_pause: Callable[[], bool] | None,
                       on_checkpoint: Callable[[Checkpoint], None] | None,
                       ) -> tuple[_ProgressCallback, list[TrainerCallback]]:
    """The run's progress, cancel, pause and checkpoint callback, and every callback its trainer gets
    (early stopping too when the run stops early)."""
    callback = _ProgressCallback(on_progress, should_cancel, should_pause, on_checkpoint)
    callbacks: list[TrainerCallback] = [callback]
    if run.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
    return callback, callbacks


def train_and_save(trainer: Any, callback: _ProgressCallback, run: RunSetup, params: TrainParams, what: str, *,
                   has_eval: bool, should_cancel: Callable[[], bool] | None,
                   adapters: list[str] | None = None) -> TrainResult:
    """Train (resuming from the run's checkpoint), then write the adapter atomically to
    ``output_dir / "adapter"`` and describe it. ``what`` names the data in the log line; ``adapters``
    the adapters of the model to save (None: all of them).

    Raises:
        TrainingCancelled: if ``should_cancel`` returned ``True`` (before the first step or after one).
        TrainingPaused: if the callback's ``should_pause`` returned ``True``.
    """
    # With tqdm disabled, transformers prints every log dict to stdout; progress is
    # reported through ``on_progress`` and the logger instead.
    trainer.remove_callback(PrinterCallback)
    if should_cancel is not None and should_cancel():
        raise TrainingCancelled("training cancelled before the first step")

    resume_from = run.resume_from
    quantized = " (QLoRA, 4-bit NF4)" if run.quantization_config is not None else ""
    resumed = f", resuming from step {resume_from.step}" if resume_from else ""
    parent = ", continuing the parent adapter's training" if run.parent else ""
    logger.info("training LoRA r=%d on %s on %s in %s%s%s%s", params.lora_r, what, run.device, run.precision,
                quantized, parent, resumed)
    train_output = trainer.train(resume_from_checkpoint=str(resume_from.path) if resume_from else None)
    if callback.cancelled:
        raise TrainingCancelled(f"training cancelled after step {trainer.state.global_step}")
    if callback.paused:
        raise TrainingPaused(trainer.state.global_step)

    state = trainer.state
    final_loss = callback.last_loss
    if final_loss is None and math.isfinite(train_output.training_loss):
        final_loss = float(train_output.training_loss)
    model = trainer.model
    if not isinstance(model, PeftModel):
        raise RuntimeError(f"{type(trainer).__name__} returned a {type(model).__name__}, not a PeftModel")
    target_modules = _adapted_modules(model)
    valid_loss = None
    if run.early_stopping and state.best_metric is not None:
        valid_loss = float(state.best_metric)  # the best checkpoint was loaded back
    elif has_eval and callback.last_eval_step == state.global_step:
        valid_loss = callback.last_valid_loss
    elif has_eval:
        valid_loss = float(trainer.evaluate()["eval_loss"])

    output_dir = run.output_dir
    staging_dir: Path | None = Path(tempfile.mkdtemp(prefix=".adapter-tmp-", dir=output_dir))
    try:
        if adapters is None:
            model.save_pretrained(str(staging_dir))
        else:
            model.save_pretrained(str(staging_dir), selected_adapters=adapters)
        run.tokenizer.save_pretrained(str(staging_dir))
        _apply_umask_permissions(staging_dir)
        adapter_dir = output_dir / ADAPTER_DIRNAME
        _replace_dir(staging_dir, adapter_dir)
        staging_dir = None
    finally:
        if staging_dir is not None:
            shutil.rmtree(staging_dir, ignore_errors=True)
    logger.info(
        "adapter saved to %s after %d steps, %d tokens, final loss %s",
        adapter_dir,
        state.global_step,
        state.num_input_tokens_seen,
        final_loss,
    )
    return TrainResult(
        adapter_dir=adapter_dir,
        steps=state.global_step,
        trained_tokens=int(state.num_input_tokens_seen),
        final_loss=final_loss,
        valid_loss=valid_loss,
        resumed_from_step=resume_from.step if resume_from else 0,
        device=run.device,
        precision=run.precision,
        lora_r=int(getattr(model.peft_config[model.active_adapter], "r", params.lora_r)),
        target_modules=target_modules,
    )


class _ProgressCallback(TrainerCallback):
    """Reports :class:`Progress` and checkpoints; polls for cancellation and pause after every step."""

    def __init__(
        self,
        on_progress: Callable[[Progress], None] | None,
        should_cancel: Callable[[], bool] | None,
        should_pause: Callable[[], bool] | None,
        on_checkpoint: Callable[[Checkpoint], None] | None,
    ) -> None:
        self._on_progress = on_progress
        self._should_cancel = should_cancel
        self._should_pause = should_pause
        self._on_checkpoint = on_checkpoint
        self._started = time.monotonic()
        self._start_step = 0
        self._start_tokens = 0
        self.cancelled = False
        self.paused = False
        self.last_loss: float | None = None
        self.last_valid_loss: float | None = None
        self.last_eval_step = -1

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # On resume the state already holds the earlier steps: rates and ETA count this run only.
        self._started = time.monotonic()
        self._start_step = state.global_step
        self._start_tokens = int(state.num_input_tokens_seen)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._should_cancel is not None and self._should_cancel():
            logger.info("cancellation requested at step %d", state.global_step)
            self.cancelled = True
            control.should_training_stop = True
        elif self._should_pause is not None and self._should_pause():
            logger.info("pausing at step %d: saving a checkpoint", state.global_step)
            self.paused = True
            control.should_save = args.save_strategy != "no"
            control.should_training_stop = True

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        # Leaving the epoch early is not an epoch end: a cancelled run saves nothing more, a
        # paused one already saved the checkpoint of its last step.
        if self.cancelled or self.paused:
            control.should_save = False
            control.should_evaluate = False

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._on_checkpoint is None:
            return
        path = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if (path / _STATE_FILE).is_file():
            self._on_checkpoint(_read_checkpoint(path))

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics and "eval_loss" in metrics:
            self.last_valid_loss = float(metrics["eval_loss"])
            self.last_eval_step = state.global_step
            self._report(state, {"epoch": metrics.get("epoch", state.epoch or 0.0)})

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        # Only per-step training logs carry "loss"; the end-of-training summary
        # ("train_loss", "train_runtime", ...) is not a progress report.
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        self.last_loss = loss if math.isfinite(loss) else None
        self._report(state, logs)

    def _report(self, state: TrainerState, logs: dict[str, Any]) -> None:
        if self._on_progress is None:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        step, total = state.global_step, state.max_steps
        tokens = int(state.num_input_tokens_seen)
        done_here = step - self._start_step
        learning_rate = logs.get("learning_rate")
        self._on_progress(
            Progress(
                step=step,
                total_steps=total,
                epoch=float(logs.get("epoch", state.epoch or 0.0)),
                train_loss=self.last_loss,
                learning_rate=float(learning_rate) if learning_rate is not None else None,
                tokens_seen=tokens,
                tokens_per_second=(tokens - self._start_tokens) / elapsed,
                eta_seconds=elapsed / done_here * max(total - step, 0) if done_here > 0 else None,
                valid_loss=self.last_valid_loss,
            )
        )


def _to_prompt_completion(examples: list[dict[str, Any]]) -> list[dict[str, list[dict[str, str]]]]:
    """Split each chat conversation at its last assistant message.

    Returns TRL conversational prompt-completion records,
    ``{"prompt": [messages before it], "completion": [that message]}``. Only ``role``
    and ``content`` are kept; content given as a list of OpenAI text parts is joined.
    """
    if not examples:
        raise ValueError("no training examples")
    records = []
    for index, example in enumerate(examples):
        messages = example.get("messages") if isinstance(example, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"example {index}: expected a non-empty 'messages' list")
        normalized = [_normalize_message(message, index) for message in messages]
        if normalized[-1]["role"] != "assistant":
            raise ValueError(f"example {index}: the last message must be an assistant message")
        records.append({"prompt": normalized[:-1], "completion": normalized[-1:]})
    return records


def _normalize_message(message: Any, index: int) -> dict[str, str]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ValueError(f"example {index}: every message needs a string 'role'")
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        content = "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    if not isinstance(content, str):
        raise ValueError(f"example {index}: message content must be a string or a list of text parts")
    return {"role": message["role"], "content": content}


def _parent_config(parent_adapter_dir: Path) -> LoraConfig:
    if not (parent_adapter_dir / "adapter_config.json").is_file():
        raise ValueError("the parent adapter folder has no adapter_config.json")
    config = PeftConfig.from_pretrained(str(parent_adapter_dir))
    if not isinstance(config, LoraConfig):
        raise ValueError(f"the parent adapter is a {type(config).__name__}, not a LoRA adapter")
    return config


def _check_parent(parent_adapter_dir: Path, params: TrainParams) -> None:
    """Refuse a parent adapter whose rank or alpha is not the run's (its weights would not fit, or
    would be scaled differently from what the job reports)."""
    config = _parent_config(parent_adapter_dir)
    if config.r != params.lora_r:
        raise ValueError(f"the parent adapter has LoRA rank {config.r}, the job asks for {params.lora_r}")
    if params.lora_alpha is not None and config.lora_alpha != params.lora_alpha:
        raise ValueError(f"the parent adapter has LoRA alpha {config.lora_alpha}, the job asks for {params.lora_alpha}")


def _load_parent(base_model_dir: Path, parent_adapter_dir: Path, params: TrainParams,
                 model_init_kwargs: dict[str, Any], quantization_config: Any) -> PeftModel:
    """The base model (loaded as TRL would: same dtype, 4-bit on CUDA) with the parent adapter's
    weights on it, trainable; its dropout is the run's."""
    kwargs = dict(model_init_kwargs)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    base = create_model_from_path(str(base_model_dir), **kwargs)
    config = _parent_config(parent_adapter_dir)
    config.lora_dropout = params.lora_dropout
    config.inference_mode = False
    return PeftModel.from_pretrained(base, str(parent_adapter_dir), config=config, is_trainable=True)


def _adapted_modules(model: PeftModel) -> list[str]:
    """Names of the modules the active LoRA adapter was injected into, sorted.

    PEFT replaces ``"all-linear"`` (or a regex) in the adapter config by the set of
    module names it actually matched.
    """
    config = model.peft_config[model.active_adapter]
    modules = getattr(config, "target_modules", None)
    if isinstance(modules, str):
        return [modules]
    return sorted(modules or [])


def _quantization_config() -> Any:
    """4-bit NF4 bitsandbytes config for QLoRA, or ``None`` if bitsandbytes is missing."""
    try:
        import bitsandbytes  # noqa: F401  (only checks that it is installed)
    except ImportError:
        logger.warning("bitsandbytes is not installed: training plain LoRA on a bfloat16 base model")
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def _apply_umask_permissions(folder: Path) -> None:
    """Give ``folder`` and its files the permissions of a normally created folder.

    :func:`tempfile.mkdtemp` and the safetensors writer create private ``0o700`` /
    ``0o600`` entries, but the adapter must be readable by the inference server, which
    may run as another user; the process umask is applied instead.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(source: Path, target: Path) -> None:
    """Atomically move folder ``source`` to ``target``, replacing an existing ``target``."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        os.replace(target, trash / target.name)
        os.replace(source, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(source, target)
