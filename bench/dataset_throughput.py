"""Dataset pipeline throughput: validate + dedupe (exact and near) + split on generated chat data.

Generates ``--examples`` OpenAI chat JSONL lines on the fly (never all in memory: a
generator feeds the pipeline line by line), with about 3% exact duplicates, 2% near
duplicates (one word changed), 0.5% invalid lines and conversations of 1-3 examples, then
runs the dataset service's pipeline (validation, exact + near dedupe, seeded split; no
quality filter, PII scrubbing or statistics) writing train/validation JSONL to a temporary
folder, and prints examples/s and the peak resident memory of the whole process tree.

    .venv/bin/python bench/dataset_throughput.py [--examples 1000000] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

SYSTEMS = (
    "You are a concise endurance coach.",
    "You are Polarize, a friendly training assistant for runners and cyclists. Answer briefly.",
    "Answer as a helpful assistant.",
)


def _vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vi", "po", "se", "da", "fe", "gu", "ho", "ji", "zu", "be"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def generate_lines(n: int, seed: int = 0) -> Iterator[bytes]:
    """``n`` JSONL lines (bytes, no newline), generated one at a time."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    recent: list[dict[str, object]] = []
    conversation = 0
    left_in_conversation = 0
    for _ in range(n):
        roll = rng.random()
        if roll < 0.005:
            yield rng.choice([b'{"messages": [', b'{"messages": [{"role": "bot", "content": "x"}]}',
                              b'{"messages": [{"role": "user", "content": "only a question"}]}', b"\xff\xfe"])
            continue
        if recent and roll < 0.035:
            yield json.dumps(rng.choice(recent)).encode()
            continue
        if recent and roll < 0.055:
            obj = json.loads(json.dumps(rng.choice(recent)))
            words = obj["messages"][-1]["content"].split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
            obj["messages"][-1]["content"] = " ".join(words)
            yield json.dumps(obj).encode()
            continue
        if left_in_conversation == 0:
            conversation += 1
            left_in_conversation = rng.randint(1, 3)
        left_in_conversation -= 1
        user = " ".join(rng.choices(vocab, k=rng.randint(8, 40))) + "?"
        answer = " ".join(rng.choices(vocab, k=rng.randint(15, 80))) + "."
        system = rng.choice(SYSTEMS)
        # The words need no JSON escaping, so the line is formatted directly (json.dumps layout).
        text = (f'{{"messages": [{{"role": "system", "content": "{system}"}}, {{"role": "user", "content": '
                f'"{user}"}}, {{"role": "assistant", "content": "{answer}"}}], "conversation_id": "c{conversation}"}}')
        if len(recent) < 1000:
            recent.append(json.loads(text))
        elif rng.random() < 0.01:
            recent[rng.randrange(len(recent))] = json.loads(text)
        yield text.encode()


class TreeRss:
    """Samples the resident memory of this process plus all its descendants (workers, the
    fork server) every 20 ms and keeps the largest sum seen."""

    def __init__(self) -> None:
        self.peak = 0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = times.user + times.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2, help="processes for parsing and hashing (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from coachforge_dataset.pipeline import run_pipeline_to_files

    with tempfile.TemporaryDirectory() as tmp, TreeRss() as rss:
        start = time.perf_counter()
        result = run_pipeline_to_files(generate_lines(args.examples, args.seed), Path(tmp), format="openai",
                                       dedupe=True, min_quality=0.0, scrub_pii=False, validation_fraction=0.1,
                                       seed=args.seed, stats=False, workers=args.workers)
        elapsed = time.perf_counter() - start
    c = result.lineage
    print(f"examples          {args.examples:,} lines ({c.invalid:,} invalid, {c.exact_duplicates:,} exact and "
          f"{c.near_duplicates:,} near duplicates removed; train {c.train:,}, validation {c.validation:,})")
    cpu = sum(rss.cpu.values())
    print(f"time              {elapsed:.1f} s wall (generation included), {cpu:.1f} s CPU over all processes")
    print(f"CPU throughput    {args.examples / cpu:,.0f} examples per CPU-second "
          f"(x2 = {2 * args.examples / cpu:,.0f}/s on 2 otherwise idle cores)")
    print(f"throughput        {args.examples / elapsed:,.0f} examples/s")
    print(f"peak RSS          {rss.peak / 2**20:,.0f} MiB (sum over this process and its {args.workers} workers, "
          f"sampled every 20 ms); this process alone: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
