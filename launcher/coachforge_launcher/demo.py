"""The quickstart behind ``make demo``: synthetic Polarize coach data → fine-tune → compare.

Everything goes through the public API with the official ``openai`` SDK, exactly as a client would."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from openai import OpenAI
from tqdm import tqdm

from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_launcher.settings import StackSettings
from coachforge_launcher.stack import Stack
from coachforge_shared.settings import PlatformSettings
from polarize.rules import check_operation
from polarize.schema import InvalidModification, parse_modification
from polarize.synthetic import SyntheticExample, generate_examples, matches_expected, to_jsonl


@dataclass
class Score:
    model: str
    valid_json: int = 0
    matches_rules: int = 0
    safe: int = 0
    total: int = 0
    seconds: float = 0.0


def evaluate(client: OpenAI, model: str, examples: Sequence[SyntheticExample], *, label: str) -> Score:
    """Ask ``model`` for each held-out prompt and score its answers against the rule-based ones."""
    score = Score(model=model, total=len(examples))

    def ask(ex: SyntheticExample) -> str:
        r = client.chat.completions.create(model=model, messages=ex.chat["messages"][:-1],  # type: ignore[arg-type]
                                           temperature=0, max_tokens=256)
        return r.choices[0].message.content or ""

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(tqdm(pool.map(ask, examples), total=len(examples), desc=f"Evaluating {label}",
                            unit="prompt"))
    score.seconds = time.perf_counter() - started
    for ex, answer in zip(examples, answers, strict=True):
        try:
            mod = parse_modification(answer)
        except InvalidModification:
            continue
        score.valid_json += 1
        assert ex.expected is not None  # held-out examples are rule-based (free_text_share=0)
        score.matches_rules += matches_expected(mod, ex.expected)
        score.safe += not check_operation(mod, ex.state, ex.upcoming, ex.today)
    return score


def follow_job(client: OpenAI, job_id: str) -> str:
    """Show a progress bar (step, loss, ETA) until the job finishes; returns the fine-tuned model."""
    seen: set[str] = set()
    with tqdm(desc="Fine-tuning", unit="step") as bar:
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            events = client.fine_tuning.jobs.list_events(job_id, limit=50).data
            for ev in reversed(events):
                if ev.id in seen:
                    continue
                seen.add(ev.id)
                data = ev.data if isinstance(ev.data, dict) else None
                if ev.type == "metrics" and data:
                    bar.total = data.get("total_steps")
                    bar.n = data.get("step", bar.n)
                    bar.set_postfix(loss=f"{data.get('train_loss') or 0:.3f}",
                                    tok_s=f"{data.get('tokens_per_second') or 0:.0f}")
                    bar.refresh()
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(2)
    if job.status != "succeeded" or not job.fine_tuned_model:
        raise RuntimeError(f"fine-tuning job {job_id} ended {job.status}: {job.error}")
    return job.fine_tuned_model


def wait_for_model(client: OpenAI, model: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while model not in {m.id for m in client.models.list()}:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{model} was not registered within {timeout:.0f}s")
        time.sleep(1)


def print_table(scores: Sequence[Score]) -> None:
    header = f"{'model':<58} {'valid JSON':>11} {'matches rules':>14} {'passes safety':>14} {'time':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    def pct(n: int, total: int) -> str:
        return f"{n}/{total} {100 * n / max(total, 1):3.0f}%"

    for s in scores:
        print(f"{s.model:<58} {pct(s.valid_json, s.total):>11} {pct(s.matches_rules, s.total):>14} "
              f"{pct(s.safe, s.total):>14} "
              f"{s.seconds:6.1f}s")
    print()


def run_demo(*, train_examples: int, eval_examples: int, epochs: int, seed: int) -> int:
    platform, stack_settings = PlatformSettings(), StackSettings()
    started = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C does, so the stack below is always stopped.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    with Stack(platform, stack_settings) as stack:
        assert stack.prepared is not None
        client = OpenAI(base_url=stack.base_url, api_key=stack.prepared.api_key, max_retries=2, timeout=600)
        train = generate_examples(train_examples, seed)
        held_out = generate_examples(eval_examples, seed + 10_000, free_text_share=0.0)
        path = platform.data_dir / "demo" / "coach-train.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_jsonl(train))
        print(f"Generated {len(train)} synthetic coach examples ({path}), {len(held_out)} held out.")
        with path.open("rb") as f:
            uploaded = client.files.create(file=f, purpose="fine-tune")
        print(f"Uploaded {uploaded.id} ({uploaded.bytes} bytes).")
        job = client.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL_ID,
                                             hyperparameters={"n_epochs": epochs}, suffix="coach-demo")
        print(f"Created {job.id} (epochs {job.hyperparameters.n_epochs}, batch {job.hyperparameters.batch_size}).")
        fine_tuned = follow_job(client, job.id)
        wait_for_model(client, fine_tuned)
        done = client.fine_tuning.jobs.retrieve(job.id)
        print(f"Fine-tuned model {fine_tuned} ({done.trained_tokens} tokens trained).")
        scores = [evaluate(client, BASE_MODEL_ID, held_out, label="base"),
                  evaluate(client, fine_tuned, held_out, label="fine-tuned")]
        print_table(scores)
        sample = client.chat.completions.create(model=fine_tuned, messages=held_out[0].chat["messages"][:-1],  # type: ignore[arg-type]
                                                temperature=0, max_tokens=256)
        print("Example answer of the fine-tuned model:\n" + (sample.choices[0].message.content or ""))
        print("Rule-based answer:\n" + held_out[0].answer)
        print("Stopping the stack…")
    print(f"Demo finished in {time.perf_counter() - started:.0f}s.")
    return 0
