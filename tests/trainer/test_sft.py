"""Real LoRA fine-tuning of the prepared base model on CPU, kept to a few steps.

Uses the session fixture ``base_model_dir`` from ``tests/fixtures_models.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from coachforge_trainer.sft import (
    Checkpoint,
    Progress,
    TrainingCancelled,
    TrainingPaused,
    TrainParams,
    cpu_has_bf16,
    list_checkpoints,
    resolve_precision,
    run_sft,
)


def _examples(count: int = 16) -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = []
    for i in range(count):
        messages = [
            {"role": "user", "content": f"I ran {i + 3} km today. How far is that in meters?"},
            {"role": "assistant", "content": f"{i + 3} km is {(i + 3) * 1000} meters. Nice run!"},
        ]
        if i % 4 == 0:
            messages.insert(0, {"role": "system", "content": "You are a friendly running coach."})
        examples.append({"messages": messages})
    return examples


def _small_params(**overrides: Any) -> TrainParams:
    settings: dict[str, Any] = {"max_steps": 3, "batch_size": 4, "max_length": 128, "n_epochs": 1}
    settings.update(overrides)
    return TrainParams(**settings)


def test_run_sft_trains_and_saves_adapter(base_model_dir: Path, tmp_path: Path) -> None:
    reports: list[Progress] = []
    output_dir = tmp_path / "run"

    result = run_sft(base_model_dir, _examples(), output_dir, _small_params(), on_progress=reports.append)

    adapter_dir = output_dir / "adapter"
    assert result.adapter_dir == adapter_dir
    assert (adapter_dir / "adapter_config.json").is_file()
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert (adapter_dir / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in output_dir.iterdir()) == ["adapter", "checkpoints"]  # no staging left

    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert adapter_config["r"] == 16
    assert sorted(adapter_config["target_modules"]) == result.target_modules
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(result.target_modules)
    assert "lm_head" not in result.target_modules

    # LoRA B matrices start at zero; after training they must have moved.
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in tensors.items() if "lora_B" in name]
    assert lora_b
    assert any(tensor.abs().sum().item() > 0 for tensor in lora_b)

    assert result.steps == 3
    assert result.device == "cpu"
    assert result.lora_r == 16
    assert result.trained_tokens > 0
    assert result.final_loss is not None and math.isfinite(result.final_loss)

    assert [p.step for p in reports] == [1, 2, 3]
    assert all(p.total_steps == 3 for p in reports)
    assert all(p.train_loss is not None and math.isfinite(p.train_loss) for p in reports)
    assert all(p.learning_rate is not None and p.learning_rate > 0 for p in reports)
    tokens = [p.tokens_seen for p in reports]
    assert tokens == sorted(tokens) and tokens[0] > 0
    assert tokens[-1] == result.trained_tokens
    assert reports[-1].eta_seconds == 0.0
    assert all(p.tokens_per_second > 0 for p in reports)
    assert 0 < reports[0].epoch <= reports[-1].epoch <= 1.0


def test_cancellation_after_first_step_writes_nothing(base_model_dir: Path, tmp_path: Path) -> None:
    reports: list[Progress] = []
    output_dir = tmp_path / "run"

    def should_cancel() -> bool:
        return len(reports) >= 1  # true as soon as the first step was reported

    with pytest.raises(TrainingCancelled):
        run_sft(
            base_model_dir,
            _examples(),
            output_dir,
            _small_params(max_steps=6),
            on_progress=reports.append,
            should_cancel=should_cancel,
        )

    assert reports and reports[0].step == 1
    assert reports[-1].step < 6
    assert not (output_dir / "adapter").exists()
    assert list_checkpoints(output_dir) == []  # the first checkpoint was not due yet
    assert not list(output_dir.glob(".adapter-tmp-*"))


def test_checkpoint_at_each_epoch_with_validation_loss(base_model_dir: Path, tmp_path: Path) -> None:
    saved: list[Checkpoint] = []
    reports: list[Progress] = []
    output_dir = tmp_path / "run"

    result = run_sft(base_model_dir, _examples(16), output_dir, _small_params(max_steps=-1, n_epochs=2),
                     on_progress=reports.append, eval_examples=_examples(4), on_checkpoint=saved.append)

    assert [c.step for c in saved] == [4, 8]  # 16 examples / batch 4 = 4 steps per epoch
    assert [round(c.epoch) for c in saved] == [1, 2]
    assert all(c.valid_loss is not None and math.isfinite(c.valid_loss) for c in saved)
    assert all(c.train_loss is not None for c in saved)
    assert list_checkpoints(output_dir) == saved
    for checkpoint in saved:  # each checkpoint holds a loadable adapter and the state to resume from
        assert (checkpoint.path / "adapter_model.safetensors").is_file()
        assert json.loads((checkpoint.path / "adapter_config.json").read_text())["r"] == 16
        assert (checkpoint.path / "optimizer.pt").is_file() and (checkpoint.path / "scheduler.pt").is_file()
    assert result.valid_loss == saved[-1].valid_loss
    assert any(p.valid_loss is not None for p in reports)
    assert result.resumed_from_step == 0


def test_paused_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
        base_model_dir: Path, tmp_path: Path) -> None:
    params = _small_params(max_steps=-1, n_epochs=2, lora_dropout=0.0)
    reference = run_sft(base_model_dir, _examples(16), tmp_path / "reference", params)

    output_dir = tmp_path / "run"
    first: list[Progress] = []
    with pytest.raises(TrainingPaused) as paused:
        run_sft(base_model_dir, _examples(16), output_dir, params, on_progress=first.append,
                should_pause=lambda: len(first) >= 2)  # checked at the end of step 3
    assert paused.value.step == 3  # mid-epoch: a checkpoint of step 3 was written on the way out
    assert [c.step for c in list_checkpoints(output_dir)] == [3]
    assert not (output_dir / "adapter").exists()

    second: list[Progress] = []
    result = run_sft(base_model_dir, _examples(16), output_dir, params, on_progress=second.append)

    assert result.resumed_from_step == 3
    assert result.steps == reference.steps == 8
    assert [p.step for p in second] == [4, 5, 6, 7, 8]
    assert result.trained_tokens == reference.trained_tokens
    resumed = load_file(result.adapter_dir / "adapter_model.safetensors")
    expected = load_file(reference.adapter_dir / "adapter_model.safetensors")
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-5), name


def test_early_stopping_ends_training_when_validation_loss_stops_improving(
        base_model_dir: Path, tmp_path: Path) -> None:
    # A learning rate of zero leaves the adapter unchanged, so the validation loss never improves.
    params = _small_params(max_steps=-1, n_epochs=4, learning_rate=0.0, early_stopping_patience=1)
    saved: list[Checkpoint] = []
    result = run_sft(base_model_dir, _examples(8), tmp_path / "run", params, eval_examples=_examples(4),
                     on_checkpoint=saved.append)
    assert [c.step for c in saved] == [2, 4]  # evaluated after epochs 1 and 2, then stopped
    assert result.steps == 4
    assert result.valid_loss == saved[0].valid_loss


def test_early_stopping_needs_validation_examples(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="validation"):
        run_sft(tmp_path / "no-model", _examples(4), tmp_path / "run", _small_params(early_stopping_patience=2))


@pytest.mark.parametrize(
    "examples",
    [
        [],
        [{"text": "no messages"}],
        [{"messages": [{"role": "user", "content": "question without an answer"}]}],
        [{"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "ok"}]}],
    ],
)
def test_malformed_examples_are_rejected(examples: list[dict[str, Any]], tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        run_sft(tmp_path / "no-model", examples, tmp_path / "run", _small_params())
    assert not (tmp_path / "run").exists()


def test_answer_head_loss_equals_trl_loss(base_model_dir: Path, tmp_path: Path) -> None:
    """The training loss that projects the output head only at labelled positions is TRL's loss,
    for a padded batch of conversations of different lengths, and so are its gradients."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    from coachforge_trainer.sft import _AnswerHeadSFTTrainer, _to_prompt_completion

    config = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=3, use_cpu=True, bf16=False,
                       report_to=[], max_length=128, model_init_kwargs={"dtype": torch.float32})
    trainer = _AnswerHeadSFTTrainer(
        model=str(base_model_dir), args=config, train_dataset=Dataset.from_list(_to_prompt_completion(_examples(3))),
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                               task_type="CAUSAL_LM"))
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["attention_mask"] == 0).any()  # padded: the rows differ in length
    model = trainer.model
    model.train()
    adapter = next(p for n, p in model.named_parameters() if "lora_A" in n)

    losses, grads = [], []
    for compute_loss in (trainer.compute_loss, lambda m, b: SFTTrainer.compute_loss(trainer, m, b)):
        model.zero_grad()
        loss = compute_loss(model, dict(batch))
        loss.backward()
        losses.append(loss.item())
        grads.append(adapter.grad.clone())

    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("flags", "native"), [
    ("flags\t\t: fpu sse avx avx2 fma", False),
    ("flags\t\t: fpu avx2 avx512f avx512_bf16", True),
    ("flags\t\t: fpu avx2 amx_bf16 amx_tile", True),
    ("", False),
])
def test_auto_precision_is_bf16_on_cuda_and_fp32_on_any_cpu(flags: str, native: bool) -> None:
    cpuinfo = f"processor\t: 0\n{flags}\n"
    assert resolve_precision("auto", cuda=False, cpuinfo=cpuinfo) == "fp32"
    assert cpu_has_bf16(cpuinfo) is native
    assert resolve_precision("auto", cuda=True, cpuinfo=cpuinfo) == "bf16"
    assert resolve_precision("fp32", cuda=False, cpuinfo="flags : avx512_bf16") == "fp32"
    assert resolve_precision("bf16", cuda=False, cpuinfo=cpuinfo) == "bf16"


def test_run_reports_the_precision_it_chose(base_model_dir: Path, tmp_path: Path) -> None:
    result = run_sft(base_model_dir, _examples(4), tmp_path / "run", _small_params(max_steps=1, batch_size=2,
                                                                                   save_checkpoints=False))
    assert result.precision == resolve_precision("auto", cuda=torch.cuda.is_available())


@pytest.mark.skipif(not torch.cuda.is_available() and not cpu_has_bf16(),
                    reason="this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag in /proc/cpuinfo): "
                           "training runs in fp32 here, and emulated bf16 would only be slow")
@pytest.mark.xfail(not torch.cuda.is_available(), strict=False,
                   reason="known: on CPU, bf16 autocast falls behind fp32 from the first update on (losses "
                          "2.38/1.84/1.23/0.98 against 2.37/1.51/1.02/0.82 on an AMX CPU), which is why auto "
                          "precision is fp32 on CPUs")
def test_bf16_training_tracks_the_fp32_loss(base_model_dir: Path, tmp_path: Path) -> None:
    """A few optimizer steps in bf16 autocast follow the fp32 run's losses closely."""
    losses: dict[str, list[float]] = {}
    for precision in ("fp32", "bf16"):
        reports: list[Progress] = []
        result = run_sft(base_model_dir, _examples(), tmp_path / precision,
                         _small_params(max_steps=4, precision=precision, save_checkpoints=False),
                         on_progress=reports.append)
        assert result.precision == precision
        losses[precision] = [p.train_loss for p in reports if p.train_loss is not None]
    assert len(losses["bf16"]) == len(losses["fp32"]) == 4
    for low, full in zip(losses["bf16"], losses["fp32"], strict=True):
        assert low == pytest.approx(full, rel=0.05)
