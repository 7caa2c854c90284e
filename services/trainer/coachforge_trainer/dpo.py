"""LoRA Direct Preference Optimization (DPO) of a causal language model with TRL's ``DPOTrainer``.

:func:`run_dpo` trains a LoRA adapter on preference pairs -- OpenAI's DPO format, one
``{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`` per
example -- and writes only the adapter (plus the tokenizer) to ``output_dir / "adapter"``, like
:func:`coachforge_trainer.sft.run_sft`, whose run machinery it shares: the same
:class:`~coachforge_trainer.sft.TrainParams`, device and precision choice (LoRA on CPU, QLoRA on
CUDA), model loading under the same lock, resumable checkpoints, progress, cancel and pause
callbacks, and :class:`~coachforge_trainer.sft.TrainResult`.

Reference model
---------------
No second model is loaded: for a new adapter the reference log-probabilities are the base model's,
computed with the adapter disabled (``ref_model=None`` with a ``peft_config``). For continued
training (``parent_adapter_dir``) the parent's adapter is trained and TRL keeps a frozen copy of it
(adapter ``ref``) as the reference, so the run moves away from the parent model, not from the base;
only the trained adapter is saved.

Loss
----
TRL's sigmoid DPO loss with the job's ``beta`` (``params.beta``) on the log-probabilities of each
output's tokens given the prompt (rendered with the model's chat template). Dropout is off during
DPO (TRL's ``disable_dropout``), so ``lora_dropout`` does not apply here. ``input.tools`` are passed
to the chat template, which renders them where it knows how.

This module imports torch, transformers, peft and trl at import time; callers that must stay light
should import it lazily.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]  # lazily exported

from coachforge_trainer.sft import (
    _MODEL_LOAD,
    Checkpoint,
    Progress,
    TrainParams,
    TrainResult,
    _normalize_message,
    _remove_incomplete_checkpoints,
    progress_callbacks,
    setup_run,
    train_and_save,
)

__all__ = ["run_dpo", "to_preference_records"]

TRAINED_ADAPTER = "default"
"""The adapter DPO trains (PEFT's default name); a continued run's frozen reference copy is not saved."""


def _output(example: dict[str, Any], name: str, index: int) -> list[dict[str, str]]:
    given = example.get(name)
    if not isinstance(given, list) or len(given) != 1:
        raise ValueError(f"example {index}: {name} must be a list of one assistant message")
    message = _normalize_message(given[0], index)
    if message["role"] != "assistant":
        raise ValueError(f"example {index}: {name} must be an assistant message")
    return [message]


def to_preference_records(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI preference pairs as TRL's conversational preference records,
    ``{"prompt": [messages], "chosen": [answer], "rejected": [answer]}``, plus ``tools`` (JSON text)
    when some pair gives tools. Only ``role`` and ``content`` of each message are kept."""
    if not examples:
        raise ValueError("no preference pairs")
    records = []
    for index, example in enumerate(examples):
        given = example.get("input") if isinstance(example, dict) else None
        messages = given.get("messages") if isinstance(given, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"example {index}: expected a preference pair with a non-empty 'input.messages' list")
        assert isinstance(given, dict)
        tools = given.get("tools")
        records.append({"prompt": [_normalize_message(m, index) for m in messages],
                        "chosen": _output(example, "preferred_output", index),
                        "rejected": _output(example, "non_preferred_output", index),
                        "tools": json.dumps(tools) if tools else None})
    if all(r["tools"] is None for r in records):
        for record in records:
            del record["tools"]
    return records


def run_dpo(
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
) -> TrainResult:
    """Train a LoRA adapter with DPO on preference pairs and save it, resuming if a checkpoint exists.

    Args:
        base_model_dir: Hugging Face folder of the base model (weights and tokenizer with a chat template).
        examples: OpenAI preference pairs, ``{"input": {"messages": [...], "tools"?: [...]},
            "preferred_output": [{"role": "assistant", "content": ...}], "non_preferred_output": [...]}``.
        output_dir: Directory for this run, as for :func:`~coachforge_trainer.sft.run_sft` (checkpoints,
            resume, the adapter written atomically to ``output_dir / "adapter"``).
        params: Hyper-parameters; ``params.beta`` is DPO's beta.
        on_progress, should_cancel, on_checkpoint, should_pause: As for
            :func:`~coachforge_trainer.sft.run_sft`; the reported loss is the DPO loss.
        eval_examples: Validation pairs (same format); their DPO loss is computed at every checkpoint.
        parent_adapter_dir: Continued training: a LoRA adapter folder (trained on this base model) to
            start from, whose frozen copy is the reference model (see the module documentation).

    Returns:
        A :class:`~coachforge_trainer.sft.TrainResult` describing the saved adapter.

    Raises:
        ValueError: if ``examples`` is empty or not preference pairs, or the parent adapter's shape is
            not ``params``'.
        TrainingCancelled: if ``should_cancel`` returned ``True``.
        TrainingPaused: if ``should_pause`` returned ``True``.
    """
    dataset = Dataset.from_list(to_preference_records(examples))
    eval_dataset = Dataset.from_list(to_preference_records(eval_examples)) if eval_examples else None
    if params.early_stopping_patience and eval_dataset is None:
        raise ValueError("early stopping needs validation examples")
    output_dir = Path(output_dir)
    try:
        run = setup_run(Path(base_model_dir), output_dir, params, parent_adapter_dir)
        # One run at a time sets up accelerate's process-wide state and builds its trainer (see sft).
        with _MODEL_LOAD:
            config = DPOConfig(**run.training_arguments(params, eval_dataset is not None),
                               max_length=params.max_length, beta=params.beta, loss_type=["sigmoid"],
                               disable_dropout=True)
            callback, callbacks = progress_callbacks(run, params, on_progress, should_cancel, should_pause,
                                                     on_checkpoint)
            trainer = DPOTrainer(
                model=run.model,
                ref_model=None,
                args=config,
                train_dataset=dataset,
                eval_dataset=eval_dataset,
                processing_class=run.tokenizer,
                peft_config=run.peft_config,
                quantization_config=run.trainer_quantization_config,
                callbacks=callbacks,
            )
        return train_and_save(trainer, callback, run, params, f"{len(dataset)} preference pairs (DPO, beta "
                              f"{params.beta})", has_eval=eval_dataset is not None, should_cancel=should_cancel,
                              adapters=[TRAINED_ADAPTER])
    finally:
        _remove_incomplete_checkpoints(output_dir)
