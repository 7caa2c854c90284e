"""The openai_compatible backend on the running stack, with the stack itself as the remote: tenant A's
remote is this platform's OpenAI-compatible API with tenant B's key. A's job (backend
openai_compatible) uploads its data and creates a job as B, which the stack's worker trains in its
training slot while A's job is followed in a remote slot; A's job mirrors B's events and progress,
downloads B's adapter through the model exports API, succeeds, and its own fine-tuned model is
registered (lineage naming the remote job and model) and answers a chat completion. Tenants without
a remote, and methods other than supervised, are refused at creation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from job_waits import finished, registered
from openai import OpenAI
from remote_tenants import client, tenants_with_remote, training_file

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

TENANT_A, TENANT_B = "remote-a", "remote-b"


@pytest.fixture(scope="module")
def keys(stack: Any) -> Iterator[dict[str, str]]:
    """API keys of two new tenants; A's remote (in the stack's remotes file) is the stack as B."""
    with tenants_with_remote(stack, TENANT_A, TENANT_B, stack.base_url) as keys:
        yield keys


def _training_file(sdk: OpenAI) -> str:
    return training_file(sdk, "My legs feel heavy after {n} days of intervals.",
                         "After {n} days of intervals: one rest day, then an easy hour.")


def _supervised() -> dict[str, Any]:
    return {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}}


def _refused(call: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as err:
        call()
    assert isinstance(err.value.body, dict)
    return err.value.body


def test_tenants_without_a_remote_and_other_methods_are_refused(stack: Any, keys: dict[str, str]) -> None:
    for key in (stack.api_key, keys[TENANT_B]):  # the default tenant and B have no remote
        sdk = client(stack, key)
        body = _refused(lambda c=sdk: c.fine_tuning.jobs.create(
            model=BASE_MODEL_ID, training_file="file-none", extra_body={"backend": "openai_compatible"}))
        assert (body["param"], body["code"]) == ("backend", "backend_not_configured")
    a = client(stack, keys[TENANT_A])
    body = _refused(lambda: a.fine_tuning.jobs.create(
        model=BASE_MODEL_ID, training_file="file-none", extra_body={"backend": "openai_compatible"},
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}))
    assert (body["param"], body["code"]) == ("method.type", "unsupported_method")
    assert keys[TENANT_B] not in json.dumps(body)


def test_a_job_trained_by_a_remote_is_mirrored_downloaded_registered_and_served(stack: Any,
                                                                                keys: dict[str, str]) -> None:
    a, b = client(stack, keys[TENANT_A]), client(stack, keys[TENANT_B])
    job = a.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=_training_file(a), suffix="remote", seed=11,
                                    method=_supervised(), extra_body={"backend": "openai_compatible"})
    assert (job.model_extra or {})["backend"] == "openai_compatible"
    job = finished(a, job.id)
    assert job.status == "succeeded", job.error
    remote_id = (job.model_extra or {})["remote_job_id"]
    assert remote_id and remote_id != job.id

    # The remote job is B's: its data uploaded as B, trained on the same base model with A's settings.
    remote = b.fine_tuning.jobs.retrieve(remote_id)
    assert (remote.status, remote.model, remote.suffix, remote.seed) == ("succeeded", BASE_MODEL_ID, "remote", 11)
    assert (remote.hyperparameters.n_epochs, remote.hyperparameters.batch_size) == (1, 5)
    assert remote.organization_id == TENANT_B and remote.fine_tuned_model
    assert remote.fine_tuned_model.startswith(f"ft:{BASE_MODEL_ID}:{TENANT_B}:remote:")
    assert f"{job.id}-train.jsonl" in [f.filename for f in b.files.list(purpose="fine-tune")]
    with pytest.raises(openai.NotFoundError):
        a.fine_tuning.jobs.retrieve(remote_id)  # B's job, not A's

    # A's events mirror the remote job: its creation, B's events, the status changes, its progress.
    events = list(reversed(list(a.fine_tuning.jobs.list_events(job.id, limit=1000))))
    messages = [e.message for e in events]
    assert any(m.startswith(f"Created the remote fine-tuning job {remote_id} on {stack.base_url}")
               for m in messages)
    assert f"Remote: Created fine-tuning job: {remote_id}" in messages
    assert "Remote: The job has successfully completed." in messages
    assert f"Remote job {remote_id} status: succeeded." in messages
    steps = [e.data["step"] for e in events if e.type == "metrics" and e.data]
    assert steps and steps == sorted(set(steps)) and steps[-1] == 2  # 10 examples, batch 5, one epoch: 2 steps
    assert any(m.startswith(f"Downloaded the adapter of {remote.fine_tuned_model}") for m in messages)
    assert messages[-1] == "The job has successfully completed."
    assert all(keys[TENANT_B] not in json.dumps(e.model_dump()) for e in events)

    # A's own model: registered from the downloaded adapter, its lineage naming the remote job and model.
    model = job.fine_tuned_model
    assert model and model.startswith(f"ft:{BASE_MODEL_ID}:{TENANT_A}:remote:") and model != remote.fine_tuned_model
    with httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=300,
                      headers={"Authorization": f"Bearer {keys[TENANT_A]}"}) as http:
        version = registered(http, model)
    assert version["lineage"]["backend"] == "openai_compatible"
    assert version["lineage"]["remote"] == {"job_id": remote_id, "model": remote.fine_tuned_model,
                                            "base_url": stack.base_url}
    assert version["lora_rank"] == 16

    answer = a.chat.completions.create(model=model, max_tokens=8,
                                       messages=[{"role": "user", "content": "My legs feel heavy. What now?"}])
    assert answer.choices[0].message.content
