"""Training throughput: this service's LoRA SFT configuration against a plain default SFTTrainer.

Both runs train a LoRA adapter (r=16, all linear layers) on the same synthetic Polarize coach
conversations for the same number of optimizer steps of batch 8, each in its own process (so
peak memory is its own), and report non-padding tokens per second measured after the first
(warm-up) step, seconds per step, peak resident memory and model FLOPs utilisation:

* ``service``  -- :func:`coachforge_trainer.sft.run_sft` as the trainer worker calls it
  (micro-batches of ``--micro`` with gradient accumulation, loss on the final answer only, the
  output head projected only at the answer's positions on CPU, QLoRA on CUDA).
* ``baseline`` -- ``SFTTrainer`` with its defaults (``per_device_train_batch_size=8``, loss on
  every token), ``use_cpu`` on a machine without CUDA, in the precision the service chooses
  (:func:`coachforge_trainer.sft.resolve_precision`: bf16 autocast on CUDA, fp32 on CPUs), so the
  two compare like for like.

MFU counts 4·N FLOPs per trained token for LoRA (forward 2N + backward through the frozen base
2N; the adapter's own weight gradients are negligible), N = the base model's parameters; it is
printed only when the peak is known (``--peak-tflops``, or an H100/H200 detected: 989 dense BF16).

    .venv/bin/python bench/train_throughput.py [--steps 4] [--micro 2,8] [--lora-dropout 0] [--peak-tflops X]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 8


def _setup(steps: int) -> tuple[Path, list[dict[str, Any]]]:
    from coachforge_launcher.models import prepare_base_model
    from coachforge_shared.settings import PlatformSettings
    from polarize.synthetic import generate_examples

    model = prepare_base_model(PlatformSettings().models_dir, progress=False)
    return model, [e.chat for e in generate_examples(BATCH * steps, seed=11)]


def _result(marks: list[tuple[float, int]], steps: int, name: str, params: int) -> dict[str, Any]:
    # Skip the first step (warm-up) when there are more.
    (t0, n0), (t1, n1) = (marks[0], marks[-1]) if len(marks) > 1 else ((marks[0][0] - 1, 0), marks[0])
    return {"name": name, "tokens_per_s": (n1 - n0) / (t1 - t0), "s_per_step": (t1 - t0) / max(len(marks) - 1, 1),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": steps, "params": params}


def _param_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
                total += math.prod(f.get_slice(key).get_shape())
    return total


def run_service(steps: int, micro: int, dropout: float | None, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    from coachforge_trainer.sft import TrainParams, run_sft

    model, examples = _setup(steps)
    marks: list[tuple[float, int]] = []
    params = TrainParams(batch_size=BATCH, micro_batch_size=micro, max_steps=steps, n_epochs=1, max_length=1024,
                         save_checkpoints=False)
    if dropout is not None:
        params.lora_dropout = dropout
    with tempfile.TemporaryDirectory() as out:
        run_sft(model, examples, Path(out), params,
                on_progress=lambda p: marks.append((time.perf_counter(), p.tokens_seen)))
    name = f"service (micro {micro or 'auto'}{'' if dropout is None else f', dropout {dropout:g}'})"
    queue.put(_result(marks, steps, name, _param_count(model)))


def run_baseline(steps: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    model, examples = _setup(steps)
    marks: list[tuple[float, int]] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    from coachforge_trainer.sft import resolve_precision

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=str(model),
            args=SFTConfig(output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps, report_to=[],
                           use_cpu=not cuda, bf16=resolve_precision("auto", cuda) == "bf16", save_strategy="no",
                           disable_tqdm=True, include_num_input_tokens_seen="non_padding"),
            train_dataset=Dataset.from_list([{"messages": e["messages"]} for e in examples]),
            peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
            callbacks=[Marks()],
        )
        trainer.train()
    queue.put(_result(marks, steps, "baseline SFTTrainer", _param_count(model)))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _peak_tflops(given: float | None) -> float | None:
    if given:
        return given
    try:
        import torch

        if torch.cuda.is_available() and any(g in torch.cuda.get_device_name() for g in ("H100", "H200")):
            return 989.0
    except ImportError:
        pass
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps of batch 8 per run (first is warm-up)")
    parser.add_argument("--micro", default=None,
                        help="micro-batch size(s) of the service configuration, comma-separated (default: the "
                             "service's default); each is its own run")
    parser.add_argument("--lora-dropout", type=float, default=None,
                        help="LoRA dropout of the service runs (default: the service's default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s, for MFU")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    from coachforge_trainer.sft import TrainParams

    micros = [int(m) for m in args.micro.split(",")] if args.micro else [TrainParams().micro_batch_size]  # 0: auto
    runs: list[tuple[Any, tuple[Any, ...]]] = [(run_baseline, ())]
    runs += [(run_service, (m, args.lora_dropout)) for m in micros]
    for target, extra in runs:
        queue = ctx.Queue()
        proc = ctx.Process(target=target, args=(args.steps, *extra, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    peak = _peak_tflops(args.peak_tflops)
    base = rows[0]
    print(f"{'configuration':<22} {'tokens/s':>9} {'s/step':>7} {'peak RSS MB':>12} {'MFU (4N)':>9} "
          f"{'vs baseline':>12}")
    for r in rows:
        mfu = f"{r['tokens_per_s'] * 4 * r['params'] / (peak * 1e12):8.1%}" if peak else "     n/a"
        print(f"{r['name']:<22} {r['tokens_per_s']:9.1f} {r['s_per_step']:7.1f} {r['peak_mb']:12.0f} {mfu:>9} "
              f"{r['tokens_per_s'] / base['tokens_per_s']:11.2f}x")
    from coachforge_trainer.sft import resolve_precision

    print(f"base model parameters: {base['params'] / 1e6:.1f}M; tokens are non-padding input tokens; precision "
          f"{resolve_precision('auto', cuda=_cuda())} for both")


if __name__ == "__main__":
    main()
