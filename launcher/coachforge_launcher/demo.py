"""The quickstart behind ``make demo``: synthetic Polarize coach data → fine-tune → compare.

Everything goes through the public API with the official ``openai`` SDK, exactly as a client would;
the comparison of the base and the fine-tuned model is an eval of the evaluator service: both models
answer the same held-out prompts (athletes generated with another seed than the training data's) twice,
once unconstrained and once with decoding constrained to the workout-modification JSON schema (the
run's ``sampling_params.response_format``, as the coach service asks inference).

``bench/demo_defaults.py`` trains configurations on this data and grades them with the same criteria:
the place to choose the training settings below from.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from openai import OpenAI

from coachforge_launcher import client as client_commands
from coachforge_launcher.compare import Comparison, report, wait
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_launcher.settings import StackSettings
from coachforge_launcher.stack import Stack
from coachforge_shared.settings import PlatformSettings
from polarize.plugins import coach_eval_item
from polarize.schema import parse_modification, response_format
from polarize.synthetic import SyntheticExample, generate_examples, to_jsonl

HELD_OUT_SEED_OFFSET = 10_000
"""The held-out prompts come from ``seed + HELD_OUT_SEED_OFFSET``: other athletes than the training data's."""
CONTEXT_BUDGET = 0
"""Prompt budget of the demo's examples: 0 asks the context builder for its compact form (load, wellness,
readiness and the week's plan, about 300 tokens with the system prompt), which trains and answers about
twice as fast as the coach service's fuller 600-token context."""
FREE_TEXT_SHARE = 0.1
"""Share of plain-text coaching answers in the demo's training data (the model keeps its voice)."""
BATCH_SIZE = 4
"""Examples per optimizer step."""
LEARNING_RATE_MULTIPLIER = 2.0
"""Times the trainer's base learning rate (5e-4): 1e-3. Measured with bench/demo_defaults.py on the demo's
80 examples and 24 held-out prompts (greedy, unconstrained; 2 cores, fp32, about 320 tokens/s): batch 4 at
1e-3 ends epoch 1 (20 steps) at 83% valid JSON and 38% matching the rules (it answers "no change"
everywhere), epoch 2 (40 steps) at 100% valid, 100% safe, 88% matching (fatigued 8/8, fresh 4/4,
normal 4/4, taper 4/4, ill 1/4: it rests two of the three days), and a third epoch adds nothing (88%).
Before the context named the rules' options (``Options:``), the same run ended at 17-46% matching:
the operation was right but on the neighbouring workout; with options naming only the workout id, the
messages named the wrong workout now and then (hence its day, sport and type in each option). The
service's defaults (batch 8 at 5e-4, 3 epochs, 30 steps) end at 0% valid."""
LORA_R = 16
MAX_ANSWER_TOKENS = 160
"""The longest rule-based answer is about 140 tokens."""
WIDTH = 100
"""Everything the demo prints fits a terminal this wide."""

DEMO_ITEM_SCHEMA: dict[str, Any] = {"type": "object",
                                   "required": ["messages", "state", "upcoming", "today", "expected"]}
DEMO_CRITERIA = [
    {"type": "polarize_coach", "name": "valid JSON", "check": "valid"},
    {"type": "polarize_coach", "name": "passes safety", "check": "safe"},
    {"type": "polarize_coach", "name": "matches rules", "check": "agrees", "agreement": "operations"},
]
"""What the demo measures, graded by the evaluator: the answer is a valid workout modification; the
safety rules accept every operation; its operations are the rule-based modification's."""
DECODINGS: dict[str, dict[str, Any] | None] = {"free": None, "schema": response_format()}
"""Unconstrained answers, and answers constrained to the workout-modification JSON schema."""


def demo_examples(train_examples: int, eval_examples: int, seed: int) -> tuple[list[SyntheticExample],
                                                                                list[SyntheticExample]]:
    """The demo's training examples (seed ``seed``) and its held-out modification prompts (another seed)."""
    train = generate_examples(train_examples, seed, free_text_share=FREE_TEXT_SHARE, budget=CONTEXT_BUDGET)
    held_out = generate_examples(eval_examples, seed + HELD_OUT_SEED_OFFSET, free_text_share=0.0,
                                 budget=CONTEXT_BUDGET)
    return train, held_out


@dataclass
class DemoEvaluation:
    """The evaluator's comparisons of the fine-tuned model against the base model, per decoding."""

    eval_id: str
    by_decoding: dict[str, Comparison]


def evaluate(client: OpenAI, http: httpx.Client, base: str, tuned: str, examples: Sequence[SyntheticExample], *,
             max_completion_tokens: int = MAX_ANSWER_TOKENS, progress: bool = True) -> DemoEvaluation:
    """Run both models on the held-out prompts, unconstrained and schema-constrained (temperature 0), as
    runs of one eval, and return the evaluator's comparison of the fine-tuned against the base model for
    each decoding."""
    items = [coach_eval_item(ex) for ex in examples]
    ev = client.evals.create(name="demo: held-out coach prompts", metadata={"kind": "coachforge-demo"},
                             data_source_config={"type": "custom", "item_schema": DEMO_ITEM_SCHEMA,
                                                 "include_sample_schema": True},
                             testing_criteria=DEMO_CRITERIA)  # type: ignore[arg-type]
    runs: dict[str, list[Any]] = {}
    for decoding, fmt in DECODINGS.items():
        sampling: dict[str, Any] = {"temperature": 0, "max_completion_tokens": max_completion_tokens}
        if fmt is not None:
            sampling["response_format"] = fmt
        runs[decoding] = []
        for model in (base, tuned):
            source: dict[str, Any] = {
                "type": "completions", "model": model,
                "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
                "sampling_params": sampling,
                "source": {"type": "file_content", "content": [{"item": item} for item in items]}}
            runs[decoding].append(client.evals.runs.create(ev.id, name=f"{model} ({decoding})",
                                                           data_source=source))  # type: ignore[arg-type]
    done = {r.id: r for r in wait(client, ev.id, [r for pair in runs.values() for r in pair], progress=progress)}
    for run in done.values():
        if run.status != "completed":
            raise SystemExit(f"run {run.id} of {run.model} {run.status}: {run.error}")
    return DemoEvaluation(eval_id=ev.id, by_decoding={
        decoding: report(http, ev.id, [done[r.id] for r in pair]) for decoding, pair in runs.items()})


def _cell(entry: dict[str, Any]) -> str:
    if entry["pass_rate"] is None:
        return "-"
    low, high = entry["interval"]
    return f"{100 * entry['pass_rate']:.0f}% [{100 * low:.0f}-{100 * high:.0f}]"


def _difference(paired: dict[str, Any]) -> str:
    mark = "*" if paired["verdict"] in ("better", "worse") else ""
    return f"{100 * paired['difference']:+.0f}{mark}"


def format_results(evaluation: DemoEvaluation) -> str:
    """The demo's table, at most :data:`WIDTH` columns: per criterion the pass rate (Wilson 95% interval) of
    the base and the fine-tuned model, unconstrained and schema-constrained, and the fine-tuned model's
    difference in points (``*``: McNemar p < alpha on the paired items); then latency and throughput."""
    decodings = list(evaluation.by_decoding)
    first = evaluation.by_decoding[decodings[0]]
    base, tuned = (r.model for r in first.runs)
    columns = [(d, i) for i in (0, 1) for d in decodings]  # base free, base schema, tuned free, tuned schema
    heads = [f"{'base' if i == 0 else 'tuned'} {d}" for d, i in columns]
    label = 14
    lines = [f"base  = {base}", f"tuned = {tuned}", "",
             f"{'':<{label}}" + "".join(f"{h:>15}" for h in heads) + f"{'tuned-base':>16}",
             f"{'criterion':<{label}}" + " " * (15 * len(heads)) + f"{' / '.join(decodings):>16}"]
    lines.append("-" * len(lines[-2]))
    names = [c["testing_criteria"] for c in first.report["criteria"]]
    for index, name in enumerate(names):
        cells, diffs = [], []
        for d, i in columns:
            comparison = evaluation.by_decoding[d]
            criterion = comparison.report["criteria"][index]
            by_run = {r["run_id"]: r for r in criterion["runs"]}
            cells.append(_cell(by_run[comparison.runs[i].id]))
        for d in decodings:
            diffs.append(_difference(evaluation.by_decoding[d].report["criteria"][index]["paired"][0]))
        lines.append(f"{name:<{label}}" + "".join(f"{c:>15}" for c in cells) + f"{' / '.join(diffs):>16}")

    def perf(title: str, key: str, show: Any) -> str:
        values = []
        for d, i in columns:
            comparison = evaluation.by_decoding[d]
            run_id = comparison.runs[i].id
            values.append(show(next(p for p in comparison.report["runs"] if p["run_id"] == run_id).get(key)))
        return f"{title:<{label}}" + "".join(f"{v:>15}" for v in values)

    errored = []
    for d, i in columns:
        counts = evaluation.by_decoding[d].runs[i].result_counts
        errored.append(f"{counts.errored}/{counts.total}")
    lines += [f"{'errored':<{label}}" + "".join(f"{e:>15}" for e in errored) + "   (not graded)",
              perf("latency p50", "latency_p50_s", lambda v: "-" if v is None else f"{v:.2f}s"),
              perf("tokens/s p50", "output_tokens_per_s_p50", lambda v: "-" if v is None else f"{v:.1f}")]
    alpha = first.report["alpha"]
    paired = ", ".join(str(evaluation.by_decoding[d].report["criteria"][0]["paired"][0]["paired_items"])
                       for d in decodings)
    lines.append("Rates of the graded answers with Wilson 95% intervals.")
    lines.append(f"tuned-base: points; * = McNemar p < {alpha} on the paired prompts ({paired}).")
    return "\n".join(lines)


@dataclass
class Training:
    """What the fine-tuning job reported: its model and its last throughput."""

    model: str
    steps: int
    tokens_per_second: float | None


def follow_job(client: OpenAI, job_id: str) -> Training:
    """Show a progress bar (step, loss, tokens/s, ETA) until the job finishes (``coachforge jobs follow``'s)."""
    last: dict[str, Any] = {}
    job = client_commands.follow_job(client, job_id, desc="Fine-tuning", ncols=WIDTH, messages=False,
                                     on_metrics=last.update)
    if job.status != "succeeded" or not job.fine_tuned_model:
        raise RuntimeError(f"fine-tuning job {job_id} ended {job.status}: {job.error}")
    return Training(model=job.fine_tuned_model, steps=int(last.get("step") or 0),
                    tokens_per_second=last.get("tokens_per_second"))


def wait_for_model(client: OpenAI, model: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while model not in {m.id for m in client.models.list()}:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{model} was not registered within {timeout:.0f}s")
        time.sleep(1)


def _wrap(text: str, indent: str = "  ") -> str:
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent)


def _operations(answer: str) -> str:
    try:
        modification = parse_modification(answer)
    except ValueError:
        return _wrap("not a workout modification: " + answer[:200])
    ops = [" ".join(f"{k}={v}" for k, v in json.loads(op.model_dump_json()).items() if k not in ("reason",))
           for op in modification.operations]
    return "\n".join([_wrap(op) for op in ops] or ["  no change"]) + "\n" + _wrap(f'"{modification.message}"')


def example_text(example: SyntheticExample, answer: str) -> str:
    """A held-out prompt, the fine-tuned model's answer and the rule-based one, in :data:`WIDTH` columns."""
    prompt = example.chat["messages"][1]["content"]
    return "\n".join([f"Held-out prompt ({example.scenario} athlete):",
                      *(_wrap(line) for line in prompt.splitlines()),
                      "Fine-tuned model (schema-constrained):", _operations(answer),
                      "Rule-based answer:", _operations(example.answer)])


def next_steps(model: str, eval_id: str, base_url: str) -> str:
    """The commands a user runs next, once the stack is started again."""
    console = base_url.removesuffix("/v1") + "/console"
    return "\n".join([
        "Next (the fine-tuned model stays registered):",
        "  make run                                   # start the stack again",
        f"  coachforge chat {model}",
        f"  open {console:<38} # jobs, models, evals",
        f"  coachforge models compare {BASE_MODEL_ID} \\\n      {model} --eval {eval_id}",
    ])


def run_demo(*, train_examples: int, eval_examples: int, epochs: int, seed: int) -> int:
    platform, stack_settings = PlatformSettings(), StackSettings()
    started = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C does, so the stack below is always stopped.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    with Stack(platform, stack_settings) as stack:
        assert stack.prepared is not None
        stack_s = time.perf_counter() - started
        client = OpenAI(base_url=stack.base_url, api_key=stack.prepared.api_key, max_retries=2, timeout=600)
        train, held_out = demo_examples(train_examples, eval_examples, seed)
        path = platform.data_dir / "demo" / "coach-train.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_jsonl(train))
        print(f"Generated {len(train)} synthetic coach examples (seed {seed}) and {len(held_out)} held-out "
              f"prompts (seed {seed + HELD_OUT_SEED_OFFSET}).")
        with path.open("rb") as f:
            uploaded = client.files.create(file=f, purpose="fine-tune")
        t_train = time.perf_counter()
        hyperparameters: dict[str, Any] = {"n_epochs": epochs, "batch_size": BATCH_SIZE, "lora_r": LORA_R,
                                           "learning_rate_multiplier": LEARNING_RATE_MULTIPLIER}
        job = client.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL_ID, suffix="coach-demo",
                                             hyperparameters=hyperparameters)  # type: ignore[arg-type]
        hp = job.hyperparameters
        print(f"Created {job.id}: {epochs} epochs, batch {hp.batch_size}, learning rate "
              f"x{hp.learning_rate_multiplier}, LoRA r={LORA_R}.")
        training = follow_job(client, job.id)
        wait_for_model(client, training.model)
        train_s = time.perf_counter() - t_train
        done = client.fine_tuning.jobs.retrieve(job.id)
        print(f"Fine-tuned model {training.model}\n  {done.trained_tokens} tokens trained in {training.steps} "
              f"steps, {training.tokens_per_second or 0:.0f} tokens/s.")
        t_eval = time.perf_counter()
        with httpx.Client(base_url=stack.base_url + "/", timeout=600,
                          headers={"Authorization": f"Bearer {stack.prepared.api_key}"}) as http:
            evaluation = evaluate(client, http, BASE_MODEL_ID, training.model, held_out)
        eval_s = time.perf_counter() - t_eval
        print(f"\nHeld-out prompts: {len(held_out)} athletes the model was not trained on.\n")
        print(format_results(evaluation) + "\n")
        example = next((e for e in held_out if e.expected is not None and e.expected.operations), held_out[0])
        sample = client.chat.completions.create(  # type: ignore[call-overload]
            model=training.model, messages=example.chat["messages"][:-1], temperature=0,
            max_tokens=MAX_ANSWER_TOKENS, response_format=DECODINGS["schema"])
        print(example_text(example, sample.choices[0].message.content or "") + "\n")
        print(next_steps(training.model, evaluation.eval_id, stack.base_url) + "\n")
        print("Stopping the stack…")
    total = time.perf_counter() - started
    print(f"Demo finished in {total:.0f}s: stack start {stack_s:.0f}s, fine-tuning {train_s:.0f}s, "
          f"evaluation {eval_s:.0f}s, the rest {total - stack_s - train_s - eval_s:.0f}s.")
    return 0
