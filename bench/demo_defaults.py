"""Which training defaults make ``make demo`` convincing in its time budget: train a few configurations
on the demo's own data and print, for each, the training time and how its answers grade.

Every configuration trains a LoRA adapter with :func:`coachforge_trainer.sft.run_sft` (as the trainer
worker does) on :func:`coachforge_launcher.demo.demo_examples` (the demo's training examples and its
held-out prompts, generated with another seed), in its own process. The adapter then answers every
held-out prompt greedily (transformers ``generate``, unconstrained, as the demo's unconstrained run
does) and the answers are graded by the demo's own criteria (the ``polarize_coach`` grader): valid
JSON, passes the safety rules, matches the rule-based modification. Printed per configuration:
examples, epoch reached / epochs of the schedule (one run is graded at every epoch end, from its
checkpoints), batch, learning rate, LoRA rank, optimizer steps, training seconds and tokens/s up to that
point, the training loss, and the three rates.

    .venv/bin/python bench/demo_defaults.py [--train 80] [--eval 24] [--seed 7] \\
        [--config "lr=1e-3 epochs=2 batch=4 r=16" --config "lr=2e-3 epochs=2 batch=4 r=16"]

A configuration is ``key=value`` words: ``lr``, ``epochs``, ``batch``, ``r`` (alpha = 2r), ``train``
(examples; default ``--train``). Timing depends on the machine and on what else runs on it: the
figures are for comparing configurations run one after the other, and the conditions are printed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_CONFIGS = ("lr=1e-3 epochs=3 batch=4 r=16", "lr=5e-4 epochs=3 batch=8 r=16")
CRITERIA = ("valid", "safe", "agrees")


def parse_config(text: str, train: int) -> dict[str, Any]:
    """``"lr=1e-3 epochs=2 batch=4 r=16"`` as keyword values (unknown keys are refused)."""
    config: dict[str, Any] = {"lr": 1e-3, "epochs": 2, "batch": 4, "r": 16, "train": train}
    for word in text.split():
        key, _, value = word.partition("=")
        if key not in config or not value:
            raise SystemExit(f"bad config word {word!r}: use {', '.join(f'{k}=…' for k in config)}")
        config[key] = float(value) if key == "lr" else int(value)
    return config


def answers(model_dir: Path, adapter_dir: Path, prompts: list[list[dict[str, str]]], *, batch: int = 8,
            max_new_tokens: int = 192) -> list[str]:
    """Greedy answers of the base model with the adapter merged, one per prompt (chat template applied)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()
    out: list[str] = []
    for start in range(0, len(prompts), batch):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[start:start + batch]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            generated = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def grade(items: list[dict[str, Any]], texts: list[str]) -> dict[str, Any]:
    """How many answers pass each of the demo's criteria, and the rules matched per scenario
    (``"fatigued": "3/6"``)."""
    from polarize.plugins import COACH_GRADER

    passed: dict[str, Any] = dict.fromkeys(CRITERIA, 0)
    scenarios: dict[str, list[int]] = {}
    for item, text in zip(items, texts, strict=True):
        for check in CRITERIA:
            ok = COACH_GRADER.grade({"check": check}, item, {"output_text": text})[1]
            passed[check] += ok
            if check == "agrees":
                counts = scenarios.setdefault(item["scenario"], [0, 0])
                counts[0] += int(ok)
                counts[1] += 1
    passed["by_scenario"] = {name: f"{ok}/{n}" for name, (ok, n) in sorted(scenarios.items())}
    return passed


def run_config(config: dict[str, Any], eval_n: int, seed: int, queue: Any) -> None:
    """Train ``config`` once, checkpointing at every epoch end, and grade every epoch's adapter (the
    rows for fewer epochs share this run's learning-rate schedule)."""
    from coachforge_launcher.demo import demo_examples
    from coachforge_launcher.models import prepare_base_model
    from coachforge_shared.settings import PlatformSettings
    from coachforge_trainer.sft import TrainParams, list_checkpoints, run_sft
    from polarize.plugins import coach_eval_item

    model_dir = prepare_base_model(PlatformSettings().models_dir, progress=False)
    train, held_out = demo_examples(config["train"], eval_n, seed)
    items = [coach_eval_item(e) for e in held_out]
    params = TrainParams(n_epochs=config["epochs"], batch_size=config["batch"], learning_rate=config["lr"],
                         lora_r=config["r"], lora_alpha=2 * config["r"], seed=seed)
    marks: dict[int, tuple[float, int]] = {}
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = run_sft(model_dir, [e.chat for e in train], Path(out), params,
                         on_progress=lambda p: marks.setdefault(p.step, (time.perf_counter() - started,
                                                                          p.tokens_seen)))
        for checkpoint in list_checkpoints(Path(out)):
            seconds, tokens = marks[checkpoint.step]
            t0 = time.perf_counter()
            texts = answers(model_dir, checkpoint.path, [item["messages"] for item in items])
            queue.put({**config, "epochs": round(checkpoint.epoch), "of": config["epochs"], "steps": checkpoint.step,
                       "seconds": seconds, "tokens": tokens, "answer_seconds": time.perf_counter() - t0,
                       "n": len(items), **grade(items, texts), "loss": checkpoint.train_loss,
                       "precision": result.precision, "example": texts[0]})
    queue.put(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=80, help="training examples (default 80)")
    parser.add_argument("--eval", type=int, default=24, help="held-out prompts (default 24)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the training data (default 7, as the demo)")
    parser.add_argument("--config", action="append", help=f"a configuration (repeatable; default {DEFAULT_CONFIGS})")
    args = parser.parse_args()
    configs = [parse_config(c, args.train) for c in (args.config or DEFAULT_CONFIGS)]
    ctx = mp.get_context("spawn")
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} at start")
    head = (f"{'train':>5} {'epoch':>5} {'batch':>5} {'lr':>7} {'r':>3} {'steps':>5} {'train s':>7} {'tok/s':>6} "
            f"{'loss':>6} {'valid':>6} {'safe':>6} {'match':>6}")
    rows = []
    for config in configs:
        queue = ctx.Queue()
        proc = ctx.Process(target=run_config, args=(config, args.eval, args.seed, queue))
        proc.start()
        while (row := queue.get()) is not None:
            rows.append(row)
            print(f"{config} after epoch {row['epochs']}: valid {row['valid']}, match {row['agrees']} of "
                  f"{row['n']} ({', '.join(f'{k} {v}' for k, v in row['by_scenario'].items())}); "
                  f"first answer: {row['example'][:160]}", flush=True)
        proc.join()
    print(f"\nheld-out prompts: {rows[0]['n']} (seed {args.seed} + 10000); precision {rows[0]['precision']}")
    print(head)
    print("-" * len(head))
    for r in rows:
        rate = {c: f"{100 * r[c] / r['n']:.0f}%" for c in CRITERIA}
        print(f"{r['train']:>5} {r['epochs']:>2}/{r['of']:<2} {r['batch']:>5} {r['lr']:>7.0e} {r['r']:>3} "
              f"{r['steps']:>5} "
              f"{r['seconds']:>7.0f} {r['tokens'] / r['seconds']:>6.0f} {r['loss'] or 0:>6.3f} "
              f"{rate['valid']:>6} {rate['safe']:>6} {rate['agrees']:>6}")
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end; answering took "
          + ", ".join(f"{r['answer_seconds']:.0f}s" for r in rows))


if __name__ == "__main__":
    main()
