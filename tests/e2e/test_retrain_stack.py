"""The feedback loop on the running stack, end to end: completions stored through an avatar with the
official ``openai`` SDK → rated gold and corrected → a retrain policy → ``POST …/retrain`` → a gold
dataset version → a short real fine-tune → both models evaluated on the same items → promoted or
rejected, with the numbers on the run, in the avatar's history and on the new model version."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.auth import add_api_key, create_tenant
from coachforge_shared.db import Database

pytestmark = pytest.mark.stack

QUESTIONS = ["I slept badly. Should I still do intervals today?", "My legs are sore after the race. Run today?",
             "I have a cold. Can I train?", "My heart rate is high this morning. Tempo run?",
             "I only slept four hours. Long ride today?", "My knee hurts a little. Hill repeats?",
             "I feel drained after work. Intervals tonight?", "I had a fever yesterday. Easy run?",
             "My HRV dropped a lot. Train hard?", "I am jet-lagged. Track session today?"]
"""Ten questions: a fine-tuning job needs ten usable examples."""
CORRECTION = "Rest today: take an easy day and sleep well."
ITEM_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}
ITEMS = [{"question": q} for q in ("I feel tired, what should I do today?", "Poor sleep last night. Train hard?",
                                   "Sore legs. What now?", "I am ill. Workout?")]


@pytest.fixture(scope="module")
def api_key(stack) -> str:  # type: ignore[no-untyped-def]
    """A tenant of its own: only this module's completions are gold."""
    tenant, key = f"loop-{secrets.token_hex(4)}", f"cf-loop-{secrets.token_hex(8)}"
    db = Database(stack.database_url)
    try:
        create_tenant(db, tenant)
        add_api_key(db, tenant, key)
    finally:
        db.dispose()
    return key


@pytest.fixture(scope="module")
def client(stack, api_key: str) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=stack.base_url, api_key=api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(stack, api_key: str) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=300,
                      headers={"Authorization": f"Bearer {api_key}"}) as c:
        yield c


def _stored(client: OpenAI, completion_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.chat.completions.retrieve(completion_id)
            return
        except openai.NotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _ended(http: httpx.Client, avatar: str, retrain_id: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = http.get(f"/v1/avatars/{avatar}/retrains/{retrain_id}")
        assert r.status_code == 200, r.text
        run: dict[str, Any] = r.json()
        if run["status"] in ("promoted", "rejected", "failed", "canceled"):
            return run
        time.sleep(2)
    raise AssertionError(f"retrain {retrain_id} did not end: {run}")


def test_store_rate_retrain_evaluate_decide(client: OpenAI, http: httpx.Client) -> None:
    avatar = "coach-loop"
    r = http.post("/v1/avatars", json={"name": avatar, "model": BASE_MODEL_ID})
    assert r.status_code == 200, r.text

    ids = []
    for question in QUESTIONS:
        answer = client.chat.completions.create(
            model=avatar, max_tokens=8, temperature=0, store=True, metadata={"source": "loop-test"},
            messages=[{"role": "system", "content": "You are a running coach."}, {"role": "user", "content": question}])
        ids.append(answer.id)
    for completion_id in ids:
        _stored(client, completion_id)
        r = http.post(f"/v1/chat/completions/{completion_id}/feedback",
                      json={"rating": 5, "gold": True, "correction": CORRECTION, "rater": "coach-maria"})
        assert r.status_code == 200, r.text

    ev = client.evals.create(
        name="loop-rest", data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA,
                                               "include_sample_schema": True},
        testing_criteria=[{"type": "string_check", "name": "says rest", "input": "{{sample.output_text}}",
                           "reference": "rest", "operation": "ilike"}])  # type: ignore[list-item]
    data_source = {"type": "completions",
                   "input_messages": {"type": "template", "template": [
                       {"role": "system", "content": "You are a running coach."},
                       {"role": "user", "content": "{{item.question}}"}]},
                   "sampling_params": {"temperature": 0, "max_completion_tokens": 16},
                   "source": {"type": "file_content", "content": [{"item": item} for item in ITEMS]}}
    r = http.put(f"/v1/avatars/{avatar}/retrain-policy", json={
        "trigger": {"min_new_gold": 1000},
        "dataset": {"validation_fraction": 0.0},
        "training": {"hyperparameters": {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 4}},
        "evaluation": {"eval_id": ev.id, "data_source": data_source, "margin": 0.0},
        "promotion": {"mode": "candidate", "traffic_share": 25}})
    assert r.status_code == 200, r.text
    assert r.json()["evaluation"]["testing_criteria"] is None

    r = http.post(f"/v1/avatars/{avatar}/retrain-policy", json={})
    assert r.status_code == 405
    r = http.put(f"/v1/avatars/{avatar}/retrain-policy", json={"evaluation": {"eval_id": "eval_nope",
                                                                               "data_source": data_source}})
    assert r.status_code == 404, r.text

    r = http.post(f"/v1/avatars/{avatar}/retrain", json={"reason": "ten corrected answers"})
    assert r.status_code == 200, r.text
    started = r.json()
    assert started["status"] == "queued" and started["trigger"] == "manual"
    r = http.post(f"/v1/avatars/{avatar}/retrain", json={})
    assert r.status_code == 409 and r.json()["error"]["code"] == "retrain_in_progress", r.text

    run = _ended(http, avatar, started["id"])
    assert run["status"] in ("promoted", "rejected"), run
    decision = run["decision"]
    assert decision["paired_items"] == len(ITEMS) and decision["testing_criteria"] == "says rest"
    assert run["baseline_model"] == BASE_MODEL_ID and run["model"].startswith(f"ft:{BASE_MODEL_ID}:")

    # The dataset version holds exactly the corrected gold answers, with their completion ids.
    r = http.get(f"/v1/datasets/{run['dataset_version']}")
    assert r.status_code == 200, r.text
    version = r.json()
    assert sorted(version["lineage"]["stored_completions"]["completion_ids"]) == sorted(ids)
    job = client.fine_tuning.jobs.retrieve(run["job_id"])
    assert job.status == "succeeded" and job.training_file == run["dataset_version"]

    # Both runs graded the same items; the decision is in the avatar's history with its numbers.
    for role in ("baseline", "candidate"):
        got = client.evals.runs.retrieve(run["eval_runs"][role], eval_id=ev.id)
        assert got.status == "completed" and got.result_counts.total == len(ITEMS)
    history = http.get(f"/v1/avatars/{avatar}/history").json()["data"]
    latest = history[0]
    got_avatar = http.get(f"/v1/avatars/{avatar}").json()
    if run["status"] == "promoted":
        assert latest["action"] == "candidate_set" and latest["detail"]["retrain_id"] == run["id"]
        assert (got_avatar["candidate_model"], got_avatar["candidate_share"]) == (run["model"], 25)
    else:
        assert latest["action"] == "retrain_rejected" and latest["detail"]["retrain_id"] == run["id"]
        assert "interval" in latest["detail"] and latest["reason"] == decision["reason"]
        assert got_avatar["candidate_model"] is None and got_avatar["active_model"] == BASE_MODEL_ID
    listed = http.get(f"/v1/avatars/{avatar}/retrains").json()["data"]
    assert [r["id"] for r in listed] == [run["id"]]
