"""The demo's comparison is an eval of the evaluator service: held-out synthetic coach prompts,
each model's answers graded by the polarize_coach grader, and the evaluator's comparison table."""

from __future__ import annotations

import secrets

import httpx
import pytest
from openai import OpenAI

from coachforge_launcher.compare import format_table
from coachforge_launcher.demo import DEMO_CRITERIA, evaluate
from coachforge_launcher.models import BASE_MODEL_ID
from polarize.synthetic import generate_examples

pytestmark = pytest.mark.stack


def test_the_demo_compares_two_models_through_the_evaluator(stack) -> None:  # type: ignore[no-untyped-def]
    client = OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=600)
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.base_url + "/", headers=headers, timeout=600) as http:
        avatar = f"demo-{secrets.token_hex(4)}"
        assert http.post("avatars", json={"name": avatar, "model": BASE_MODEL_ID}).status_code == 200
        held_out = generate_examples(2, 10_007, free_text_share=0.0)
        comparison = evaluate(client, http, [BASE_MODEL_ID, avatar], held_out, max_completion_tokens=48,
                              progress=False)
    assert [r.model for r in comparison.runs] == [BASE_MODEL_ID, avatar]
    assert all(r.status == "completed" and r.result_counts.total == 2 for r in comparison.runs)
    names = [c["testing_criteria"] for c in comparison.report["criteria"]]
    assert names == [c["name"] for c in DEMO_CRITERIA]
    for criterion in comparison.report["criteria"]:
        assert criterion["paired"][0]["paired_items"] <= 2
    items = list(client.evals.runs.output_items.list(comparison.runs[0].id, eval_id=comparison.runs[0].eval_id))
    assert sorted(i.datasource_item_id for i in items) == [0, 1]
    assert items[0].sample.input[0].role == "system"  # the coach's own prompt, from the item's messages
    table = format_table(comparison)
    assert "matches rules" in table and f"B = {avatar}" in table
