"""Fine-tuning jobs on dataset versions, on the running stack: the job trains on the version's train
split and measures validation loss on its validation split, the version cannot be deleted under an
unfinished job, and the registered model's lineage names the version."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from openai import OpenAI
from sqlalchemy import select

from coachforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.db import Database
from coachforge_shared.events import EventPublisher
from coachforge_shared.grpc_server import InternalChannel
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.settings import PlatformSettings
from coachforge_trainer.models import Job
from coachforge_trainer.service import TrainerDeps
from coachforge_trainer.settings import TrainerSettings
from coachforge_trainer.worker import Worker

pytestmark = pytest.mark.stack

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def client(stack: Any) -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=300,
                      headers={"Authorization": f"Bearer {stack.api_key}"}) as c:
        yield c


def _version(client: OpenAI, http: httpx.Client, count: int = 20, validation_fraction: float = 0.25) -> dict[str, Any]:
    lines = [json.dumps({"messages": [
        {"role": "user", "content": f"My long run {i} was {i + 8} km at conversational pace. Next step?"},
        {"role": "assistant", "content": f"Add {i % 3 + 1} km next week and keep run {i} easy."}]})
        for i in range(count)]
    f = client.files.create(file=("versioned.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    r = http.post("/v1/datasets", json={"name": "versioned", "files": [f.id], "dedupe": False,
                                         "validation_fraction": validation_fraction, "seed": 1})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait(client: OpenAI, job_id: str, timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in FINAL:
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.5)
    return job


def test_unknown_dataset_version_is_a_field_error(client: OpenAI, stack: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file="dsv-doesnotexist")
    assert isinstance(err.value.body, dict)
    assert err.value.body["param"] == "training_file" and err.value.body["code"] == "invalid_file"
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as rpc_err:
            stub.CreateJob(trainer_pb2.CreateJobRequest(model=BASE_MODEL_ID, training_file="dsv-doesnotexist"),
                           metadata=(("authorization", f"Bearer {stack.api_key}"),), timeout=30)
        assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_or_splitless_validation_version_is_refused(client: OpenAI, http: httpx.Client) -> None:
    no_split = _version(client, http, count=10, validation_fraction=0.0)
    assert no_split["validation_examples"] == 0
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=no_split["id"],
                                       validation_file="dsv-doesnotexist")
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "validation_file"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=no_split["id"],
                                       validation_file=no_split["id"])
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "validation_file"
    # A version without a validation split trains without validation; a cancelled job frees it.
    job = client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=no_split["id"],
                                         hyperparameters={"n_epochs": 1})
    assert job.training_file == no_split["id"] and job.validation_file is None
    client.fine_tuning.jobs.cancel(job.id)
    assert _wait(client, job.id).status in ("cancelled", "failed", "succeeded")
    assert http.delete(f"/v1/datasets/{no_split['id']}").status_code == 200


def test_job_on_a_version_validates_on_its_split_and_lineage_names_it(client: OpenAI, http: httpx.Client) -> None:
    version = _version(client, http)
    assert version["validation_examples"] > 0
    job = client.fine_tuning.jobs.create(training_file=version["id"], model=BASE_MODEL_ID, suffix="dsv",
                                         hyperparameters={"n_epochs": 1, "batch_size": 4})
    assert job.training_file == version["id"]
    assert job.validation_file == version["id"]  # the version's own validation split
    assert (job.model_extra or {})["estimate"]["trained_tokens"] > 0

    refused = http.delete(f"/v1/datasets/{version['id']}")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "dataset_version_in_use" and job.id in error["message"]

    job = _wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert (job.model_extra or {})["valid_loss"] is not None
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    assert any(version["id"] in e.message and "validation split" in e.message for e in events)
    valid = [e.data["valid_loss"] for e in events if isinstance(e.data, dict) and e.data.get("valid_loss") is not None]
    assert valid and all(v > 0 for v in valid)

    ft = job.fine_tuned_model
    assert ft
    deadline = time.monotonic() + 60
    while (r := http.get(f"/v1/models/{ft}")).status_code != 200:
        assert time.monotonic() < deadline, "fine-tuned model never registered"
        time.sleep(0.5)
    lineage = r.json()["lineage"]
    assert lineage["dataset_version"] == version["id"] and lineage["training_file"] == version["id"]
    assert lineage["validation_file"] == version["id"] and lineage["valid_loss"] is not None

    # Finished: the version can go, and a job created on it afterwards is refused.
    assert http.delete(f"/v1/datasets/{version['id']}").status_code == 200
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(training_file=version["id"], model=BASE_MODEL_ID)
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "training_file"


def test_job_whose_version_is_gone_fails_clearly(stack: Any, model_cache_dir: Path, tmp_path: Path) -> None:
    """A version missing when the worker loads it (e.g. deleted past the check) fails the job."""
    db = Database(stack.database_url)
    publisher = EventPublisher(stack.kafka_bootstrap, "test-dsv-worker")
    channel = InternalChannel(stack.grpc_target, stack.internal_token)
    try:
        deps = TrainerDeps(db=db, settings=TrainerSettings(), publisher=publisher, dataset=channel,
                           registry=channel)
        worker = Worker(deps, PlatformSettings(data_dir=tmp_path, models_dir=model_cache_dir), "test-dsv-worker")
        job_id = new_id("ftjob")
        with db.session() as s:
            s.add(Job(id=job_id, tenant_id="default", model=BASE_MODEL_ID, status="running",
                      training_file="dsv-gone", validation_file="dsv-gone", n_epochs=1, batch_size=1,
                      learning_rate_multiplier=1.0, seed=1, worker_id="test-dsv-worker", attempts=1,
                      started_at=utcnow()))
        worker.run(job_id, "default")
        with db.session() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            assert job is not None
            assert job.status == "failed" and job.error_code == "invalid_training_file"
            assert "dsv-gone" in (job.error_message or "")
    finally:
        publisher.close()
        channel.close()
        db.dispose()
