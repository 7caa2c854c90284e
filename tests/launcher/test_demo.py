"""The demo: its held-out prompts are other athletes than its training data; its comparison is an eval of
the evaluator service (both models, unconstrained and schema-constrained, graded by the polarize_coach
grader); what it prints fits a 100-column terminal."""

from __future__ import annotations

import secrets
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from openai import OpenAI

from coachforge_launcher.compare import Comparison
from coachforge_launcher.demo import (
    DECODINGS,
    DEMO_CRITERIA,
    WIDTH,
    DemoEvaluation,
    demo_examples,
    evaluate,
    example_text,
    format_results,
    next_steps,
)
from coachforge_launcher.models import BASE_MODEL_ID
from polarize.schema import SCHEMA_NAME

TUNED = "ft:SmolLM2-135M-Instruct:default:coach-demo:ftjob-0123456789abcdef0123"


def _athlete(example: Any) -> tuple[Any, ...]:
    return example.today, example.state, example.upcoming


def test_held_out_prompts_are_other_athletes_than_the_training_data() -> None:
    train, held_out = demo_examples(80, 24, 7)
    assert len(train) == 80 and len(held_out) == 24
    assert all(e.kind == "modification" and e.expected is not None for e in held_out)
    trained_prompts = {e.chat["messages"][1]["content"] for e in train}
    assert not trained_prompts & {e.chat["messages"][1]["content"] for e in held_out}
    assert not {_athlete(e) for e in train} & {_athlete(e) for e in held_out}
    # every answer the demo grades against is there to be learnt: each held-out kind of answer is trained on
    trained_ops = {tuple(op.op for op in e.expected.operations) for e in train if e.expected is not None}
    assert {tuple(op.op for op in e.expected.operations) for e in held_out if e.expected is not None} <= trained_ops


def test_held_out_prompts_use_the_compact_context() -> None:
    _, held_out = demo_examples(0, 6, 7)
    for e in held_out:
        lines = e.chat["messages"][1]["content"].splitlines()
        assert lines[0].startswith("Today ") and lines[3].startswith("Readiness: ")
        assert "Last 14 days:" not in lines


def _comparison(decoding: str, rates: dict[str, tuple[float, float]]) -> Comparison:
    counts = SimpleNamespace(total=24, errored=1)
    runs = [SimpleNamespace(id=f"evalrun_{decoding}_{i}", model=model, result_counts=counts)
            for i, model in enumerate((BASE_MODEL_ID, TUNED))]
    criteria = []
    for name, (base, tuned) in rates.items():
        criteria.append({"testing_criteria": name, "runs": [
            {"run_id": runs[0].id, "pass_rate": base, "interval": [max(0.0, base - 0.1), min(1.0, base + 0.1)]},
            {"run_id": runs[1].id, "pass_rate": tuned, "interval": [max(0.0, tuned - 0.1), min(1.0, tuned + 0.1)]}],
            "paired": [{"run_id": runs[1].id, "paired_items": 24, "difference": tuned - base,
                        "verdict": "better" if tuned - base > 0.3 else "no_difference"}]})
    perf = [{"run_id": r.id, "latency_p50_s": 1.23, "output_tokens_per_s_p50": 41.5} for r in runs]
    return Comparison(report={"criteria": criteria, "runs": perf, "alpha": 0.05}, runs=runs)


def test_results_table_shows_both_decodings_within_100_columns() -> None:
    evaluation = DemoEvaluation(eval_id="eval_1", by_decoding={
        "free": _comparison("free", {"valid JSON": (0.0, 0.96), "passes safety": (0.0, 0.92),
                                     "matches rules": (0.0, 0.79)}),
        "schema": _comparison("schema", {"valid JSON": (1.0, 1.0), "passes safety": (0.42, 0.96),
                                         "matches rules": (0.08, 0.83)})})
    table = format_results(evaluation)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, table
    assert f"tuned = {TUNED}" in lines
    head = next(line for line in lines if "base free" in line)
    assert head.split() == ["base", "free", "base", "schema", "tuned", "free", "tuned", "schema", "tuned-base"]
    row = next(line for line in lines if line.startswith("matches rules"))
    assert row.split()[2:] == ["0%", "[0-10]", "8%", "[0-18]", "79%", "[69-89]", "83%", "[73-93]", "+79*", "/", "+75*"]
    assert next(line for line in lines if line.startswith("valid JSON")).endswith("+96* / +0")
    assert next(line for line in lines if line.startswith("errored")).split()[1:5] == ["1/24"] * 4


def test_example_and_next_steps_fit_100_columns() -> None:
    _, held_out = demo_examples(0, 6, 7)
    example = next(e for e in held_out if e.expected is not None and e.expected.operations)
    text = example_text(example, example.answer)
    assert max(len(line) for line in text.splitlines()) <= WIDTH, text
    prompt = example.chat["messages"][1]["content"]
    assert " ".join(text.split()).count(" ".join(prompt.split())) == 1  # wrapped, not cut
    assert text.count(f"op={example.expected.operations[0].op}") == 2  # the model's answer and the rules'
    assert "not a workout modification" in example_text(example, "I think you should rest.")
    steps = next_steps(TUNED, "eval_123", "http://127.0.0.1:8000/v1")
    assert max(len(line) for line in steps.splitlines()) <= WIDTH
    assert f"coachforge chat {TUNED}" in steps and "http://127.0.0.1:8000/console" in steps
    command = " ".join(steps.replace("\\\n", " ").split())  # as the shell joins the continued line
    assert f"coachforge models compare {BASE_MODEL_ID} {TUNED} --eval eval_123" in command


def test_schema_decoding_is_the_coach_response_format() -> None:
    assert DECODINGS["free"] is None
    schema = DECODINGS["schema"]
    assert schema is not None and schema["type"] == "json_schema" and schema["json_schema"]["name"] == SCHEMA_NAME


@pytest.mark.stack
def test_the_demo_compares_two_models_through_the_evaluator(stack) -> None:  # type: ignore[no-untyped-def]
    client = OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=600)
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.base_url + "/", headers=headers, timeout=600) as http:
        avatar = f"demo-{secrets.token_hex(4)}"
        assert http.post("avatars", json={"name": avatar, "model": BASE_MODEL_ID}).status_code == 200
        _, held_out = demo_examples(0, 2, 7)
        evaluation = evaluate(client, http, BASE_MODEL_ID, avatar, held_out, max_completion_tokens=48,
                              progress=False)
    assert list(evaluation.by_decoding) == list(DECODINGS)
    for decoding, comparison in evaluation.by_decoding.items():
        assert [r.model for r in comparison.runs] == [BASE_MODEL_ID, avatar]
        assert all(r.status == "completed" and r.result_counts.total == 2 for r in comparison.runs)
        assert [c["testing_criteria"] for c in comparison.report["criteria"]] == [c["name"] for c in DEMO_CRITERIA]
        run = client.evals.runs.retrieve(comparison.runs[1].id, eval_id=evaluation.eval_id)
        fmt = run.data_source.model_dump(exclude_none=True)["sampling_params"].get("response_format")
        if decoding == "free":
            assert fmt is None
        else:
            assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == SCHEMA_NAME
    items = list(client.evals.runs.output_items.list(comparison.runs[0].id, eval_id=evaluation.eval_id))
    assert sorted(i.datasource_item_id for i in items) == [0, 1]
    assert items[0].sample.input[0].role == "system"  # the coach's own prompt, from the item's messages
    table = format_results(evaluation)
    assert "matches rules" in table and f"tuned = {avatar}" in table
    assert max(len(line) for line in table.splitlines()) <= WIDTH
