"""Real LoRA DPO of the prepared base model on CPU with TRL's DPOTrainer, kept to a few steps: a new
adapter against the base model, then continued training of that adapter (a frozen copy of it is
the reference, and only the trained adapter is saved).

Uses the session fixture ``base_model_dir`` from ``tests/fixtures_models.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from coachforge_trainer.dpo import run_dpo, to_preference_records
from coachforge_trainer.sft import Progress, TrainParams


def _pairs(count: int = 8) -> list[dict[str, Any]]:
    return [{"input": {"messages": [{"role": "user", "content": f"I ran {i + 3} km on sore legs. Run hard tomorrow?"}],
                       "tools": [], "parallel_tool_calls": True},
             "preferred_output": [{"role": "assistant", "content": f"After {i + 3} km on sore legs, rest tomorrow."}],
             "non_preferred_output": [{"role": "assistant", "content": "Yes, push through it."}]}
            for i in range(count)]


def _params(**overrides: Any) -> TrainParams:
    return TrainParams(**{"n_epochs": 1, "batch_size": 4, "max_length": 128, "beta": 0.1, **overrides})


def test_preference_records_are_trl_s_conversational_format() -> None:
    records = to_preference_records(_pairs(2))
    assert records[0] == {"prompt": [{"role": "user", "content": "I ran 3 km on sore legs. Run hard tomorrow?"}],
                          "chosen": [{"role": "assistant", "content": "After 3 km on sore legs, rest tomorrow."}],
                          "rejected": [{"role": "assistant", "content": "Yes, push through it."}]}
    tools = [{"type": "function", "function": {"name": "plan", "parameters": {}}}]
    with_tools = _pairs(1)
    with_tools[0]["input"]["tools"] = tools
    assert json.loads(to_preference_records(with_tools)[0]["tools"]) == tools
    for bad in ({"messages": [{"role": "user", "content": "hi"}]},
                {**_pairs(1)[0], "preferred_output": []},
                {**_pairs(1)[0], "non_preferred_output": [{"role": "user", "content": "x"}]}):
        with pytest.raises(ValueError, match="example 0"):
            to_preference_records([bad])
    with pytest.raises(ValueError, match="no preference pairs"):
        to_preference_records([])


def test_run_dpo_trains_a_new_adapter_then_continues_it(base_model_dir: Path, tmp_path: Path) -> None:
    reports: list[Progress] = []
    result = run_dpo(base_model_dir, _pairs(), tmp_path / "first", _params(), on_progress=reports.append,
                     eval_examples=_pairs(2))
    adapter = tmp_path / "first" / "adapter"
    assert result.adapter_dir == adapter and (adapter / "adapter_model.safetensors").is_file()
    assert (result.steps, result.device, result.lora_r) == (2, "cpu", 16)
    assert [p.step for p in reports if p.valid_loss is None] == [1, 2]
    # Before the first update the policy is the reference: the DPO loss is log 2.
    assert reports[0].train_loss == pytest.approx(math.log(2), abs=1e-3)
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    assert result.valid_loss is not None and math.isfinite(result.valid_loss)
    assert result.trained_tokens > 0
    lora_b = [t for name, t in load_file(adapter / "adapter_model.safetensors").items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum().item() > 0 for t in lora_b)

    # Continued training: the parent adapter is trained, a frozen copy of it is the reference (so the
    # first loss is log 2 again), and only the trained adapter is saved.
    reports.clear()
    again = run_dpo(base_model_dir, _pairs(), tmp_path / "second", _params(), on_progress=reports.append,
                    parent_adapter_dir=adapter)
    assert again.steps == 2 and reports[0].train_loss == pytest.approx(math.log(2), abs=1e-3)
    saved = tmp_path / "second" / "adapter"
    assert not (saved / "ref").exists()
    assert sorted(json.loads((saved / "adapter_config.json").read_text())["target_modules"]) == result.target_modules
    before = load_file(adapter / "adapter_model.safetensors")
    after = load_file(saved / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not before[k].equal(after[k]) for k in before)
