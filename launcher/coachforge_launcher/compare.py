"""``coachforge models compare A B --eval ID``: run two models on the same items of an eval and
print the evaluator's comparison as a table a person reads at a glance.

The items, the input messages and the sampling parameters are those of a reference run of the
eval (``--like RUN``, default its newest completed ``completions`` run); the evaluator samples
both models (or reuses a completed run of a model on the same reference with ``--reuse``),
grades them with the eval's testing criteria and compares them: per criterion each model's pass
rate with its Wilson 95% interval, the paired difference on the same items with an exact McNemar
p-value, and the verdict at 5 %; then latency and throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from openai import OpenAI
from tqdm import tqdm

FINAL = ("completed", "failed", "canceled")


@dataclass
class Comparison:
    """The evaluator's comparison report and the two runs it compares (baseline first)."""

    report: dict[str, Any]
    runs: list[Any]


def reference_run(client: OpenAI, eval_id: str, like: str | None) -> Any:
    """The run whose items and data source the new runs copy."""
    if like:
        return client.evals.runs.retrieve(like, eval_id=eval_id)
    for run in client.evals.runs.list(eval_id, order="desc", limit=100):
        if run.status == "completed" and run.data_source.type == "completions":
            return run
    raise SystemExit(f"eval {eval_id} has no completed completions run to take items from; pass --like RUN")


def run_items(client: OpenAI, eval_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every item of a run (from its output items), in the original order."""
    items = {it.datasource_item_id: it.datasource_item
             for it in client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100)}
    return [items[i] for i in sorted(items)]


def start_run(client: OpenAI, eval_id: str, reference: Any, model: str, items: list[dict[str, Any]]) -> Any:
    ds = reference.data_source.model_dump(exclude_none=True)
    ds.update(model=model, source={"type": "file_content", "content": [{"item": item} for item in items]})
    return client.evals.runs.create(eval_id, name=f"compare {model}", data_source=ds,  # type: ignore[arg-type]
                                    metadata={"compare_like": reference.id})


def wait(client: OpenAI, eval_id: str, runs: list[Any], *, progress: bool = True, timeout: float = 3600) -> list[Any]:
    """Poll the runs until each is final, showing items graded."""
    total = sum(r.result_counts.total for r in runs)
    deadline = time.monotonic() + timeout
    with tqdm(total=total, desc="Sampling and grading", unit="item", disable=not progress) as bar:
        while True:
            runs = [client.evals.runs.retrieve(r.id, eval_id=eval_id) for r in runs]
            done = sum(r.result_counts.passed + r.result_counts.failed + r.result_counts.errored for r in runs)
            bar.update(done - bar.n)
            if all(r.status in FINAL for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs not finished after {timeout:.0f}s: {[r.status for r in runs]}")
            time.sleep(1)


def compare(client: OpenAI, http: httpx.Client, eval_id: str, model_a: str, model_b: str, *,
            like: str | None = None, reuse: bool = False, progress: bool = True) -> Comparison:
    reference = reference_run(client, eval_id, like)
    items = run_items(client, eval_id, reference.id)
    runs = []
    for model in (model_a, model_b):
        found = None
        if reuse:
            found = next((r for r in client.evals.runs.list(eval_id, order="desc", limit=100)
                          if r.model == model and r.status == "completed"
                          and (r.metadata or {}).get("compare_like") == reference.id), None)
        runs.append(found or start_run(client, eval_id, reference, model, items))
    return finish(client, http, eval_id, runs, progress=progress)


def finish(client: OpenAI, http: httpx.Client, eval_id: str, runs: list[Any], *,
           progress: bool = True) -> Comparison:
    """Wait for ``runs`` (the baseline first) and fetch the evaluator's comparison of them."""
    runs = wait(client, eval_id, runs, progress=progress)
    for run in runs:
        if run.status != "completed":
            raise SystemExit(f"run {run.id} of {run.model} {run.status}: {run.error}")
    return report(http, eval_id, runs)


def report(http: httpx.Client, eval_id: str, runs: list[Any]) -> Comparison:
    """The evaluator's comparison of completed ``runs`` (the baseline first)."""
    r = http.get(f"evals/{eval_id}/compare", params={"runs": ",".join(r.id for r in runs)})
    r.raise_for_status()
    return Comparison(report=r.json(), runs=runs)


def _rate(entry: dict[str, Any]) -> str:
    if entry["pass_rate"] is None:
        return "-"
    low, high = entry["interval"]
    return f"{100 * entry['pass_rate']:.0f}% [{100 * low:.0f}-{100 * high:.0f}]"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def format_table(comparison: Comparison) -> str:
    """Per criterion: both pass rates (95% interval), the paired difference, McNemar's p and the
    verdict (B against A); then per model latency, time to first token, throughput, the run's
    blended price per 1M tokens and the adapter's size."""
    report, (run_a, run_b) = comparison.report, comparison.runs
    a, b = run_a.model, run_b.model
    width = max(12, *(len(c["testing_criteria"]) for c in report["criteria"]))
    head = f"{'criterion':<{width}}  {'A':>18}  {'B':>18}  {'B-A':>7}  {'p':>7}  verdict"
    lines = [f"A = {a}  ({run_a.id})", f"B = {b}  ({run_b.id})", "", head, "-" * len(head)]
    for criterion in report["criteria"]:
        by_run = {r["run_id"]: r for r in criterion["runs"]}
        paired = criterion["paired"][0]
        marker = {"better": "B better", "worse": "B worse", "no_difference": "no difference"}[paired["verdict"]]
        lines.append(f"{criterion['testing_criteria']:<{width}}  {_rate(by_run[run_a.id]):>18}  "
                     f"{_rate(by_run[run_b.id]):>18}  {100 * paired['difference']:>+6.0f}%  "
                     f"{_p(paired['p_value']):>7}  {marker} ({paired['paired_items']} paired items)")
    perf = [next(p for p in report["runs"] if p["run_id"] == r.id) for r in (run_a, run_b)]

    def row(label: str, key: str, show: Callable[[Any], str]) -> str:
        return f"{label:<{width}}  " + "  ".join(f"{show(p.get(key)):>18}" for p in perf)

    lines += ["", f"{'':<{width}}  {'A':>18}  {'B':>18}",
              row("latency p50", "latency_p50_s", _seconds), row("latency p95", "latency_p95_s", _seconds),
              row("first token p50", "ttft_p50_s", _seconds),
              row("tokens/s p50", "output_tokens_per_s_p50", lambda v: "-" if v is None else f"{v:.1f}"),
              row("$ per 1M tokens", "cost_per_million_tokens", lambda v: "-" if v is None else f"{v:.3f}"),
              row("adapter size", "adapter_bytes", lambda v: "base" if v is None else f"{v / 2**20:.1f} MiB")]
    lines.append(f"\nverdicts at p < {report['alpha']}; intervals are Wilson 95%.")
    return "\n".join(lines)
