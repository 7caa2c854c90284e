"""Dry runs, eligibility and presets of fine-tuning jobs on the running stack, through the official
openai SDK (the extra fields travel in ``extra_body``) and over gRPC."""

from __future__ import annotations

import json
from typing import Any

import grpc
import openai
import pytest
from openai import OpenAI

from coachforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def client(stack: Any) -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


def _lines(count: int, offset: int = 0) -> list[str]:
    return [json.dumps({"messages": [
        {"role": "user", "content": f"I swam {i + 1} km of drills this morning. Recovery tips?"},
        {"role": "assistant", "content": f"After {i + 1} km, eat well and keep tomorrow's run easy."}]})
        for i in range(offset, offset + count)]


def _upload(client: OpenAI, lines: list[str], name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, ("\n".join(lines) + "\n").encode()), purpose="fine-tune").id


def _job_ids(client: OpenAI) -> list[str]:
    return [j.id for j in client.fine_tuning.jobs.list(limit=100)]


def test_dry_run_answers_the_estimate_and_creates_no_job(client: OpenAI, stack: Any) -> None:
    train = _upload(client, _lines(60) + _lines(3))  # 3 duplicates: 60 usable
    before = _job_ids(client)
    answer = client.post("/fine_tuning/jobs", cast_to=object, body={
        "model": BASE_MODEL_ID, "training_file": train, "hyperparameters": {"batch_size": 8}, "dry_run": True})
    assert isinstance(answer, dict)
    assert answer["object"] == "fine_tuning.job.estimate" and "id" not in answer
    assert (answer["model"], answer["training_file"], answer["validation_file"]) == (BASE_MODEL_ID, train, None)
    assert answer["hyperparameters"]["n_epochs"] == 3 and answer["hyperparameters"]["batch_size"] == 8
    est = answer["estimate"]
    assert est["epochs"] == 3 and est["steps"] == 8 * 3  # ceil(60 / 8) x 3
    assert est["tokens_per_epoch"] > 0 and est["total_tokens"] == est["tokens_per_epoch"] * 3
    assert est["device"] == "cpu" and est["tokens_per_second"] == 150
    assert est["seconds"] == pytest.approx(est["total_tokens"] / 150)
    assert est["cost_usd"] == pytest.approx(est["total_tokens"] / 1e6 * est["price_per_million_tokens"], abs=1e-6)
    eligibility = answer["eligibility"]
    assert (eligibility["examples"], eligibility["usable"], eligibility["unusable"]) == (63, 60, {"duplicate": 3})
    assert eligibility["warnings"] == [] and len(eligibility["advice"]) == 1
    assert _job_ids(client) == before

    # The same body without dry_run creates the job with the same estimate stored on it.
    job = client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=train, hyperparameters={"batch_size": 8})
    try:
        extra = job.model_extra or {}
        assert {k: extra["estimate"][k] for k in est} == est and extra["eligibility"] == eligibility
        assert extra["estimate"]["trained_tokens"] == est["total_tokens"]
        assert _job_ids(client) == [job.id, *before]
    finally:
        client.fine_tuning.jobs.cancel(job.id)

    # A dry run validates what a real create would: an unknown model is still a 400 on "model".
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=train, extra_body={"dry_run": True})
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "model"


def test_too_few_usable_examples_are_refused_with_the_reasons(client: OpenAI) -> None:
    lines = _lines(5) + _lines(4) + [json.dumps({"messages": [
        {"role": "user", "content": "Rest day?"}, {"role": "assistant", "content": "ok"}]})]
    train = _upload(client, lines)
    before = _job_ids(client)
    for extra_body in ({}, {"dry_run": True}):
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=train, extra_body=extra_body)
        body = err.value.body
        assert isinstance(body, dict) and body["param"] == "training_file"
        assert body["code"] == "invalid_training_file"
        assert "5 usable examples; at least 10" in body["message"]
        assert "4 duplicate" in body["message"] and "1 too_short" in body["message"]
    assert _job_ids(client) == before


def test_few_usable_examples_create_the_job_with_a_warning(client: OpenAI) -> None:
    train = _upload(client, _lines(20))
    # The SDK's own create, with the flag in extra_body: the answer is the estimate, not a job.
    estimated = client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=train,
                                               extra_body={"dry_run": True})
    assert estimated.object == "fine_tuning.job.estimate"  # type: ignore[comparison-overlap]
    dry = estimated.model_extra or {}
    assert dry["eligibility"]["usable"] == 20
    assert "Only 20 usable training examples" in dry["eligibility"]["warnings"][0]
    job = client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=train)
    try:
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        warned = [e for e in events if e.level == "warn"]
        assert [e.message for e in warned] == dry["eligibility"]["warnings"]
        assert (job.model_extra or {})["eligibility"]["warnings"] == dry["eligibility"]["warnings"]
    finally:
        client.fine_tuning.jobs.cancel(job.id)


def test_a_preset_fills_hyperparameters_and_explicit_values_win(client: OpenAI, stack: Any) -> None:
    train = _upload(client, _lines(24))
    job = client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=train,
                                         hyperparameters={"learning_rate_multiplier": 0.5},
                                         extra_body={"preset": "quick"})
    try:
        hp = job.hyperparameters
        assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (1, 4, 0.5)  # 0.5 is explicit
        assert (hp.model_extra or {})["lora_r"] == 16 and (job.model_extra or {})["preset"] == "quick"
        assert client.fine_tuning.jobs.retrieve(job.id).model_extra["preset"] == "quick"  # type: ignore[index]
    finally:
        client.fine_tuning.jobs.cancel(job.id)
    dry = client.post("/fine_tuning/jobs", cast_to=object, body={
        "model": BASE_MODEL_ID, "training_file": train, "preset": "thorough", "dry_run": True,
        "hyperparameters": {"n_epochs": 2}})
    assert isinstance(dry, dict)
    assert dry["preset"] == "thorough" and dry["hyperparameters"]["preset"] == "thorough"
    assert dry["hyperparameters"]["n_epochs"] == 2 and dry["estimate"]["epochs"] == 2  # explicit wins
    assert dry["hyperparameters"]["lora_r"] == 16  # thorough's rank 32, capped at the engines' max
    assert any("lora_r 32" in w for w in dry["eligibility"]["warnings"])
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=train, extra_body={"preset": "ludicrous"})
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "preset"

    # gRPC: EstimateJob answers the same estimate; CreateJob with dry_run creates nothing either.
    before = _job_ids(client)
    metadata = (("authorization", f"Bearer {stack.api_key}"),)
    request = trainer_pb2.CreateJobRequest(model=BASE_MODEL_ID, training_file=train, preset="quick")
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        estimate = stub.EstimateJob(request, metadata=metadata, timeout=120)
        request.dry_run = True
        dry_job = stub.CreateJob(request, metadata=metadata, timeout=120)
    assert estimate.preset == "quick" and estimate.hyperparameters.n_epochs == 1
    assert estimate.estimate.steps == 6 and estimate.eligibility.usable == 24  # ceil(24 / 4) x 1
    assert dry_job.id == "" and dry_job.estimate == estimate.estimate
    assert _job_ids(client) == before
