"""DPO through the public API on the running stack: preference pairs (OpenAI's format) are uploaded,
a ``dpo`` job trains a LoRA adapter on them with TRL's DPOTrainer, the fine-tuned model is
registered and answers chat completions; data of the wrong kind for the method is a 400 naming
``training_file``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from job_waits import finished, registered
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack



@pytest.fixture(scope="module")
def client(stack: Any) -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


def _pairs(count: int) -> list[dict[str, Any]]:
    return [{"input": {"messages": [
                {"role": "system", "content": "You are an endurance coach. Answer in one sentence."},
                {"role": "user", "content": f"My legs are sore after {i + 5} km of intervals. Run hard tomorrow?"}]},
             "preferred_output": [{"role": "assistant", "content": f"No: after {i + 5} km of intervals on sore legs, "
                                                                   "keep tomorrow easy or rest."}],
             "non_preferred_output": [{"role": "assistant", "content": "Yes, push through the pain."}]}
            for i in range(count)]


def _upload(client: OpenAI, objs: list[dict[str, Any]], name: str) -> Any:
    body = "".join(json.dumps(o) + "\n" for o in objs).encode()
    return client.files.create(file=(name, body), purpose="fine-tune")


def _chat_file(client: OpenAI) -> str:
    return _upload(client, [{"messages": [
        {"role": "user", "content": f"I did {i + 4} hill repeats today. How should I recover?"},
        {"role": "assistant", "content": f"After {i + 4} hill repeats: easy spin tomorrow."}]} for i in range(12)],
        "chat.jsonl").id


def _dpo(**hyperparameters: Any) -> Any:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def test_a_dpo_job_trains_on_preference_pairs_and_its_model_answers(client: OpenAI, stack: Any) -> None:
    uploaded = _upload(client, _pairs(12), "prefs.jsonl")
    assert (uploaded.model_extra or {})["validation"]["format"] == "preference"

    job = client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=uploaded.id, suffix="prefs",
                                         method=_dpo(n_epochs=1, batch_size=4, beta=0.2))
    assert job.method is not None and job.method.type == "dpo"
    assert (job.hyperparameters.model_extra or {})["beta"] == 0.2

    job = finished(client, job.id, timeout=1200)
    assert job.status == "succeeded", job.error
    model = job.fine_tuned_model
    assert model and model.startswith(f"ft:{BASE_MODEL_ID}:")
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert any(m.startswith("Method: DPO on preference pairs, beta 0.2") for m in events)
    steps = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"]
    assert {(e.data or {}).get("step") for e in steps} >= {3}  # 12 pairs / batch 4, one epoch

    with httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=60,
                      headers={"Authorization": f"Bearer {stack.api_key}"}) as http:
        version = registered(http, model)
    assert version["lineage"]["method"] == "dpo"

    answer = client.chat.completions.create(model=model, max_tokens=16, messages=[
        {"role": "user", "content": "My legs are sore after 8 km of intervals. Run hard tomorrow?"}])
    assert answer.choices[0].message.content


def test_the_method_and_the_data_must_match(client: OpenAI) -> None:
    prefs = _upload(client, _pairs(12), "prefs.jsonl").id
    chat = _chat_file(client)
    for method, training_file, wanted in ((_dpo(), chat, "preference pairs"),
                                          ({"type": "supervised"}, prefs, "chat conversations")):
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=training_file, method=method)
        body = err.value.body
        assert isinstance(body, dict)
        assert (body["param"], body["code"]) == ("training_file", "invalid_training_file_format")
        assert training_file in body["message"] and wanted in body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # a dpo job's validation file holds pairs too
        client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=prefs, validation_file=chat, method=_dpo())
    assert isinstance(err.value.body, dict)
    assert (err.value.body["param"], err.value.body["code"]) == ("validation_file", "invalid_validation_file_format")
