"""Training throughput of LoRA SFT on this machine, by micro-batch size.

Runs a few real optimizer steps of batch 8 on synthetic Polarize coach examples for each
micro-batch size (the rest of the batch comes from gradient accumulation) and prints
tokens/s, seconds per step and peak resident memory, with ratios against micro-batch 8.

    .venv/bin/python bench/training_throughput.py [--steps 3] [--micro 8 4 2 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path


def one_run(micro: int, steps: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    from coachforge_launcher.models import prepare_base_model
    from coachforge_shared.coach.synthetic import generate_examples
    from coachforge_shared.settings import PlatformSettings
    from coachforge_trainer.sft import TrainParams, run_sft

    model = prepare_base_model(PlatformSettings().models_dir, progress=False)
    examples = [e.chat for e in generate_examples(8 * (steps + 1), seed=11)]
    marks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as out:
        result = run_sft(model, examples, Path(out), TrainParams(batch_size=8, micro_batch_size=micro,
                                                                 max_steps=steps, n_epochs=1),
                         on_progress=lambda p: marks.append((time.perf_counter(), p.tokens_seen)))
    # Skip the first step (warm-up) when there are more.
    (t0, n0), (t1, n1) = (marks[0], marks[-1]) if len(marks) > 1 else ((marks[0][0] - 1, 0), marks[0])
    queue.put({"micro": micro, "tokens_per_s": (n1 - n0) / (t1 - t0),
               "s_per_step": (t1 - t0) / max(len(marks) - 1, 1),
               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": result.steps})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--micro", type=int, nargs="+", default=[8, 4, 2, 1])
    args = parser.parse_args()
    ctx = mp.get_context("spawn")  # a fresh process per size, so peak memory is its own
    rows = []
    for micro in args.micro:
        queue = ctx.Queue()
        proc = ctx.Process(target=one_run, args=(micro, args.steps, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    base = next((r for r in rows if r["micro"] == 8), rows[0])
    print(f"{'micro-batch':>11} {'tokens/s':>9} {'s/step':>7} {'peak RSS MB':>12} {'speed vs base':>14}")
    for r in rows:
        print(f"{r['micro']:>11} {r['tokens_per_s']:9.1f} {r['s_per_step']:7.1f} {r['peak_mb']:12.0f} "
              f"{r['tokens_per_s'] / base['tokens_per_s']:13.2f}x")


if __name__ == "__main__":
    main()
