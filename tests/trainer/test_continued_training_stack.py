"""Continued training through the public API on the running stack: a fine-tuned model is named as
the ``model`` of a new job (OpenAI's ``method`` shape), which inherits the parent's LoRA shape,
refuses another one, trains from the parent's adapter, and registers a version whose lineage names
the parent; the new model answers chat completions."""

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


def _training_file(client: OpenAI) -> str:
    lines = [json.dumps({"messages": [
        {"role": "user", "content": f"I did {i + 4} hill repeats today. How should I recover?"},
        {"role": "assistant", "content": f"After {i + 4} hill repeats: easy spin tomorrow and 8 hours of sleep."}]})
        for i in range(10)]
    return client.files.create(file=("hills.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune").id


def _supervised(**hyperparameters: Any) -> Any:
    return {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5,
                                                                      **hyperparameters}}}


def _finished(client: OpenAI, job_id: str) -> Any:
    job = finished(client, job_id)
    assert job.status == "succeeded", job.error
    return job


def test_a_fine_tuned_model_trains_on_and_its_lineage_names_the_parent(client: OpenAI, stack: Any) -> None:
    training_file = _training_file(client)
    first = client.fine_tuning.jobs.create(
        model=BASE_MODEL_ID, training_file=training_file, suffix="hills",
        method=_supervised(lora_r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    parent = _finished(client, first.id).fine_tuned_model
    assert parent

    with httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=300,
                      headers={"Authorization": f"Bearer {stack.api_key}"}) as http:
        assert registered(http, parent)["parent_model"] is None

        with pytest.raises(openai.BadRequestError) as err:  # another rank than the parent's
            client.fine_tuning.jobs.create(model=parent, training_file=training_file, method=_supervised(lora_r=16))
        assert isinstance(err.value.body, dict)
        assert err.value.body["param"] == "method.supervised.hyperparameters.lora_r"
        assert err.value.body["code"] == "incompatible_parent_model"

        job = client.fine_tuning.jobs.create(model=parent, training_file=training_file, suffix="hills",
                                             method=_supervised())
        extra = job.model_extra or {}
        assert (job.model, extra["parent_model"], extra["base_model"], extra["backend"]) == (
            parent, parent, BASE_MODEL_ID, "trl")
        assert job.method is not None and job.method.type == "supervised"
        inherited = job.hyperparameters.model_extra or {}
        assert (inherited["lora_r"], inherited["lora_alpha"], inherited["target_modules"]) == (
            8, 16, ["q_proj", "v_proj"])

        job = _finished(client, job.id)
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
        assert any(m.startswith(f"Continuing the training of {parent}") for m in events)
        child = job.fine_tuned_model
        assert child and child != parent and child.startswith(f"ft:{BASE_MODEL_ID}:")
        version = registered(http, child)
        assert version["parent_model"] == parent and version["lineage"]["parent_model"] == parent
        assert version["lineage"]["method"] == "supervised" and version["lora_rank"] == 8
        assert version["version"] == 2  # the same line (tenant, base, suffix) as its parent

    answer = client.chat.completions.create(model=child, max_tokens=8,
                                            messages=[{"role": "user", "content": "I did 6 hill repeats today."}])
    assert answer.choices[0].message.content
