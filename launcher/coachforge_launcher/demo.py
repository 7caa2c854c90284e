"""The quickstart behind ``make demo``: synthetic Polarize coach data → fine-tune → compare.

Everything goes through the public API with the official ``openai`` SDK, exactly as a client would;
the comparison of the base and the fine-tuned model is an eval of the evaluator service."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence

import httpx
from openai import OpenAI
from tqdm import tqdm

from coachforge_launcher.compare import Comparison, finish, format_table
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_launcher.settings import StackSettings
from coachforge_launcher.stack import Stack
from coachforge_shared.settings import PlatformSettings
from polarize.plugins import coach_eval_item
from polarize.synthetic import SyntheticExample, generate_examples, to_jsonl

DEMO_ITEM_SCHEMA = {"type": "object", "required": ["messages", "state", "upcoming", "today", "expected"]}
DEMO_CRITERIA = [
    {"type": "polarize_coach", "name": "valid JSON", "check": "valid"},
    {"type": "polarize_coach", "name": "passes safety", "check": "safe"},
    {"type": "polarize_coach", "name": "matches rules", "check": "agrees", "agreement": "operations"},
]
"""What the demo measures, graded by the evaluator: the answer is a valid workout modification; the
safety rules accept every operation; its operations are the rule-based modification's."""


def evaluate(client: OpenAI, http: httpx.Client, models: Sequence[str], examples: Sequence[SyntheticExample], *,
             max_completion_tokens: int = 256, progress: bool = True) -> Comparison:
    """Run each model on the held-out prompts as an eval run (unconstrained answers, temperature 0)
    and return the evaluator's comparison of them (the first model is the baseline)."""
    items = [coach_eval_item(ex) for ex in examples]
    ev = client.evals.create(name="demo: held-out coach prompts", metadata={"kind": "coachforge-demo"},
                             data_source_config={"type": "custom", "item_schema": DEMO_ITEM_SCHEMA,
                                                 "include_sample_schema": True},
                             testing_criteria=DEMO_CRITERIA)  # type: ignore[arg-type]
    runs = [client.evals.runs.create(ev.id, name=model, data_source={
        "type": "completions", "model": model,
        "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
        "sampling_params": {"temperature": 0, "max_completion_tokens": max_completion_tokens},
        "source": {"type": "file_content", "content": [{"item": item} for item in items]}}) for model in models]
    return finish(client, http, ev.id, runs, progress=progress)


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
        with httpx.Client(base_url=stack.base_url + "/", timeout=600,
                          headers={"Authorization": f"Bearer {stack.prepared.api_key}"}) as http:
            comparison = evaluate(client, http, [BASE_MODEL_ID, fine_tuned], held_out)
        print("\n" + format_table(comparison) + "\n")
        sample = client.chat.completions.create(model=fine_tuned, messages=held_out[0].chat["messages"][:-1],  # type: ignore[arg-type]
                                                temperature=0, max_tokens=256)
        print("Example answer of the fine-tuned model:\n" + (sample.choices[0].message.content or ""))
        print("Rule-based answer:\n" + held_out[0].answer)
        print("Stopping the stack…")
    print(f"Demo finished in {time.perf_counter() - started:.0f}s.")
    return 0
