"""Fine-tuning jobs on the running stack, with real training: checkpoints with validation loss,
cancel, and a worker killed with SIGKILL mid-training whose job resumes and finishes once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from sqlalchemy import create_engine, text

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

FINAL = ("succeeded", "failed", "cancelled")


def _jsonl(count: int, offset: int = 0) -> bytes:
    lines = []
    for i in range(offset, offset + count):
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": f"I ran {i + 3} km today at an easy pace. Was that enough?"},
            {"role": "assistant", "content": f"{i + 3} km easy is a solid aerobic session. Rest well tonight."}]}))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def client(stack: Any) -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


def _create(client: OpenAI, **hyperparameters: Any) -> Any:
    train = client.files.create(file=("train.jsonl", _jsonl(24)), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", _jsonl(4, offset=100)), purpose="fine-tune")
    return client.fine_tuning.jobs.create(training_file=train.id, validation_file=valid.id, model=BASE_MODEL_ID,
                                          hyperparameters={"n_epochs": 3, "batch_size": 8, **hyperparameters})


def _wait(client: OpenAI, job_id: str, until: Any, timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if until(job):
            return job
        assert job.status not in FINAL, f"job ended {job.status}: {job.error}"
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.5)


def _checkpoints(client: OpenAI, job_id: str) -> list[Any]:
    return list(client.fine_tuning.jobs.checkpoints.list(job_id, limit=100))


def _worker_pid(database_url: str, job_id: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            worker = conn.execute(text("SELECT worker_id FROM fine_tuning_jobs WHERE id = :id"),
                                  {"id": job_id}).scalar()
    finally:
        engine.dispose()
    assert worker, "running job without a worker"
    return int(str(worker).rsplit("-", 1)[1])  # worker ids are <host>-<pid>


def test_job_reports_estimates_and_rejects_bad_method_settings(client: OpenAI) -> None:
    job = _create(client, lora_r=8)
    try:
        extra = job.model_extra or {}
        assert extra["estimate"]["trained_tokens"] > 0 and extra["estimate"]["cost_usd"] > 0
        assert job.hyperparameters.model_extra["lora_r"] == 8  # type: ignore[index]
        assert job.estimated_finish is not None
    finally:
        client.fine_tuning.jobs.cancel(job.id)
    train = client.files.create(file=("t.jsonl", _jsonl(4)), purpose="fine-tune")
    for hp, param in (({"lora_r": 64}, "hyperparameters.lora_r"),
                      ({"early_stopping_patience": 2}, "hyperparameters.early_stopping_patience"),
                      ({"lora_dropout": 1.5}, "hyperparameters.lora_dropout"),
                      ({"max_length": 16}, "training_file")):  # every example is longer than 16 tokens
        response = httpx.post(f"{client.base_url}fine_tuning/jobs",
                              headers={"Authorization": f"Bearer {client.api_key}"},
                              json={"model": BASE_MODEL_ID, "training_file": train.id, "hyperparameters": hp})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_checkpoints_with_validation_loss_then_cancel_keeps_them(client: OpenAI, stack: Any) -> None:
    job = _create(client)
    _wait(client, job.id, lambda j: bool(_checkpoints(client, j.id)))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status in ("running", "cancelled")
    job = _wait(client, job.id, lambda j: j.status in FINAL)
    assert job.status == "cancelled"

    checkpoints = _checkpoints(client, job.id)
    assert checkpoints and checkpoints[-1].step_number == 3  # 24 examples / batch 8 = 3 steps per epoch
    [run_dir] = Path(stack.data_dir, "artifacts").glob(f"*/{job.id}")  # the server's folder is not shown
    for checkpoint in checkpoints:
        assert checkpoint.metrics.valid_loss is not None and checkpoint.metrics.valid_loss > 0
        assert "adapter_path" not in (checkpoint.model_extra or {})
        path = run_dir / "checkpoints" / f"checkpoint-{checkpoint.step_number}"
        assert (path / "adapter_model.safetensors").is_file()  # kept, and usable as an adapter
    assert not (run_dir / "adapter").exists()
    assert not list(run_dir.glob(".adapter-tmp-*"))

    metrics = httpx.get(stack.worker_metrics_url).text
    assert "coachforge_training_checkpoints_total" in metrics
    services = httpx.get(stack.metrics_url).text
    assert 'coachforge_training_jobs{status="cancelled"}' in services


def test_worker_killed_mid_training_is_replaced_and_the_job_resumes(client: OpenAI, stack: Any) -> None:
    job = _create(client)
    _wait(client, job.id, lambda j: bool(_checkpoints(client, j.id)))
    first = _checkpoints(client, job.id)[-1].step_number
    os.kill(_worker_pid(stack.database_url, job.id), signal.SIGKILL)

    job = _wait(client, job.id, lambda j: j.status in FINAL)
    assert job.status == "succeeded", job.error
    assert (job.model_extra or {})["attempts"] == 2
    assert (job.model_extra or {})["valid_loss"] is not None

    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert any("stopped renewing its lease" in m for m in messages)
    resumed = [m for m in messages if m.startswith("Resuming from the checkpoint at step")]
    assert resumed and int(resumed[0].split("step ")[1].split(" ")[0]) >= first
    assert sum("successfully completed" in m for m in messages) == 1

    assert len(job.result_files) == 1  # the metrics CSV, one row per step across both attempts
    assert client.files.retrieve(job.result_files[0]).purpose == "fine-tune-results"
    rows = client.files.content(job.result_files[0]).text.splitlines()
    assert rows[0] == "step,epoch,train_loss,valid_loss,learning_rate,tokens_per_second"
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 10))

    steps = [c.step_number for c in _checkpoints(client, job.id)]
    assert steps == sorted(set(steps), reverse=True) and steps[0] == 9  # each step saved once, to the end
    deadline = time.monotonic() + 60
    while job.fine_tuned_model not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "fine-tuned model never registered"
        time.sleep(0.5)
    answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8,
                                            messages=[{"role": "user", "content": "I ran 5 km today."}])
    assert answer.choices[0].message.content
