"""The walking skeleton, driven by the official ``openai`` SDK against the running stack:
upload → fine-tune (real LoRA SFT) → registry → chat with the adapter on vLLM."""

from __future__ import annotations

import math
import time

import httpx
import openai
import pytest
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID
from polarize.synthetic import generate_examples, to_jsonl

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def client(stack) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


def test_malformed_file_is_refused_naming_the_lines(client: OpenAI) -> None:
    good = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    content = b"\n".join([good, b"{not json", b'{"messages": [{"role": "bot", "content": "x"}]}', good]) + b"\n"
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", content), purpose="fine-tune")
    body = err.value.body
    assert isinstance(body, dict)
    assert body["param"] == "file"
    assert "line 2: line: invalid JSON" in body["message"]
    assert "line 3: messages[0].role: unknown role 'bot'" in body["message"]
    assert all(f.filename != "bad.jsonl" for f in client.files.list())


def test_upload_finetune_register_and_chat(client: OpenAI, stack) -> None:  # type: ignore[no-untyped-def]
    # Ten examples (the fewest a job accepts) in the compact context: the path is the point, not the model.
    examples = generate_examples(10, seed=3, budget=0)
    uploaded = client.files.create(file=("coach.jsonl", to_jsonl(examples).encode()), purpose="fine-tune")
    assert uploaded.status == "processed" and uploaded.bytes > 0
    assert client.files.retrieve(uploaded.id).filename == "coach.jsonl"

    job = client.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL_ID,
                                         hyperparameters={"n_epochs": 1}, suffix="skeleton")
    assert job.status == "queued"
    assert job.hyperparameters.n_epochs == 1

    seen = [job.status]
    deadline = time.monotonic() + 900
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job stuck in {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != seen[-1]:
            seen.append(job.status)
    assert job.status == "succeeded", job.error
    assert seen == ["queued", "running", "succeeded"]
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"ft:{BASE_MODEL_ID}:default:skeleton:")

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    losses = [e.data["train_loss"] for e in events if e.type == "metrics" and isinstance(e.data, dict)]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any("successfully completed" in e.message for e in events)

    ft = job.fine_tuned_model
    deadline = time.monotonic() + 60
    while ft not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "fine-tuned model never registered"
        time.sleep(0.5)
    ids = {m.id: m for m in client.models.list()}
    assert ids[BASE_MODEL_ID].owned_by == "coachforge"
    assert ids[ft].owned_by == "default"

    question = examples[0].chat["messages"][:-1]
    for model in (ft, BASE_MODEL_ID):
        answer = client.chat.completions.create(model=model, messages=question, max_tokens=48, temperature=0)
        assert answer.model == model
        assert answer.choices[0].message.content
        assert answer.usage is not None
        assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0

    metrics = httpx.get(stack.metrics_url).text
    assert (f'coachforge_inference_tokens_total{{kind="completion",model="{ft}",purpose="app",tenant="default"}}'
            in metrics)


def test_unknown_model_and_bad_hyperparameters_are_field_errors(client: OpenAI) -> None:
    uploaded = client.files.create(file=("one.jsonl", to_jsonl(generate_examples(4, seed=1)).encode()),
                                   purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(training_file=uploaded.id, model="no-such-model")
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL_ID,
                                       hyperparameters={"n_epochs": 0})
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "hyperparameters.n_epochs"
    assert "greater than or equal to 1" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(training_file="file-missing", model=BASE_MODEL_ID)
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ft:nope", messages=[{"role": "user", "content": "hi"}])


def test_ready_checks_every_component_including_the_workers(stack) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(stack.base_url.removesuffix("/v1") + "/ready", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == dict.fromkeys(
        ("database", "broker", "engine", "grpc", "consumers", "workers", "eval_runner", "webhook_sender"),
        True)


def test_bad_key_is_refused(stack) -> None:  # type: ignore[no-untyped-def]
    bad = OpenAI(base_url=stack.base_url, api_key="cf-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "invalid_api_key"


def test_tenants_are_isolated_over_rest_and_grpc(client: OpenAI, stack) -> None:  # type: ignore[no-untyped-def]
    import secrets

    import grpc

    from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
    from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
    from coachforge_shared.auth import add_api_key, create_tenant
    from coachforge_shared.db import Database

    other_key = "cf-globex-" + secrets.token_hex(8)
    db = Database(stack.database_url)
    create_tenant(db, "globex")
    add_api_key(db, "globex", other_key)
    db.dispose()
    mine = client.files.create(file=("mine.jsonl", to_jsonl(generate_examples(4, seed=2)).encode()),
                               purpose="fine-tune")
    other = OpenAI(base_url=stack.base_url, api_key=other_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(mine.id)
    assert mine.id not in {f.id for f in other.files.list()}
    assert all(not m.id.startswith("ft:") for m in other.models.list())
    assert list(other.fine_tuning.jobs.list()) == []

    with grpc.insecure_channel(stack.grpc_target) as channel:
        files = dataset_pb2_grpc.DatasetServiceStub(channel)
        request = dataset_pb2.GetFileRequest(file_id=mine.id)
        assert files.GetFile(request, metadata=(("authorization", f"Bearer {stack.api_key}"),)).id == mine.id
        with pytest.raises(grpc.RpcError) as err:
            files.GetFile(request, metadata=(("authorization", f"Bearer {other_key}"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            files.GetFile(request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        chat = inference_pb2_grpc.InferenceServiceStub(channel)
        answer = chat.CreateChatCompletion(inference_pb2.ChatCompletionRequest(
            model=BASE_MODEL_ID, messages=[inference_pb2.ChatMessage(role="user", content="Say hi.")],
            max_tokens=8, temperature=0), metadata=(("authorization", f"Bearer {stack.api_key}"),))
        assert answer.content and answer.model == BASE_MODEL_ID
        assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


def test_coach_schema_is_published(stack) -> None:  # type: ignore[no-untyped-def]
    from polarize.rules import recommend
    from polarize.synthetic import generate_examples as gen

    headers = {"Authorization": f"Bearer {stack.api_key}"}
    root = stack.base_url.removesuffix("/v1")
    doc = httpx.get(f"{root}/v1/coach/schema", headers=headers).json()
    assert doc["version"] == "1" and doc["schema"]["type"] == "object"
    ex = gen(4, seed=5)[0]
    good = recommend(ex.state, ex.upcoming, ex.today).to_json()
    assert httpx.post(f"{root}/v1/coach/validate", headers=headers, json={"modification": good}).json()["valid"]
    bad = httpx.post(f"{root}/v1/coach/validate", headers=headers, json={"modification": '{"operations": 1}'}).json()
    assert bad["valid"] is False and bad["error"]


def test_dataset_versions_over_rest_and_grpc(client: OpenAI, stack) -> None:  # type: ignore[no-untyped-def]
    import json

    import grpc

    from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc

    lines = [json.dumps({"conversations": [{"from": "human", "value": f"Can I swap run {i} for a swim?"},
                                           {"from": "gpt", "value": f"Yes, swap run {i} for an easy swim."}]})
             for i in range(12)]
    uploaded = client.files.create(file=("share.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    root = stack.base_url.removesuffix("/v1")
    r = httpx.post(f"{root}/v1/datasets", headers=headers,
                   json={"name": "swaps", "files": [uploaded.id], "validation_fraction": 0.25, "seed": 1})
    assert r.status_code == 200, r.text
    version = r.json()
    assert version["train_examples"] + version["validation_examples"] == 12
    assert version["lineage"]["sources"][0]["id"] == uploaded.id
    bad = httpx.post(f"{root}/v1/datasets", headers=headers, json={"name": "x", "files": [uploaded.id],
                                                                   "validation_fraction": 0.9})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "validation_fraction"
    exported = httpx.get(f"{root}/v1/datasets/{version['id']}/export", headers=headers,
                         params={"format": "chatml", "split": "train"}).text.splitlines()
    assert len(exported) == version["train_examples"]
    assert json.loads(exported[0])["text"].startswith("<|im_start|>user\n")
    stats = httpx.get(f"{root}/v1/datasets/{version['id']}/stats", headers=headers).json()
    assert stats["format_mix"] == {"sharegpt": 12}

    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        md = (("authorization", f"Bearer {stack.api_key}"),)
        listed = stub.ListDatasetVersions(dataset_pb2.ListDatasetVersionsRequest(name="swaps"), metadata=md)
        assert [v.id for v in listed.versions] == [version["id"]]
        chunks = stub.ExportDatasetVersion(dataset_pb2.ExportDatasetVersionRequest(
            dataset_version_id=version["id"], format="openai", split="validation"), metadata=md)
        assert len(b"".join(c.data for c in chunks).splitlines()) == version["validation_examples"]


def test_avatar_alias_answers_chat_and_is_managed_over_grpc(client: OpenAI, stack) -> None:  # type: ignore[no-untyped-def]
    import grpc

    from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc

    headers = {"Authorization": f"Bearer {stack.api_key}"}
    root = stack.base_url.removesuffix("/v1")
    r = httpx.post(f"{root}/v1/avatars", headers=headers,
                   json={"name": "coach-e2e", "model": BASE_MODEL_ID, "reason": "first"})
    assert r.status_code == 200, r.text
    answer = client.chat.completions.create(model="coach-e2e", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=8, temperature=0)
    assert answer.model == BASE_MODEL_ID and answer.choices[0].message.content
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        md = (("authorization", f"Bearer {stack.api_key}"),)
        assert "coach-e2e" in [a.name for a in stub.ListAvatars(registry_pb2.ListAvatarsRequest(), metadata=md).avatars]
        with pytest.raises(grpc.RpcError) as err:
            stub.ActivateModel(registry_pb2.ActivateModelRequest(avatar="coach-e2e", model="ft:none"), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    history = httpx.get(f"{root}/v1/avatars/coach-e2e/history", headers=headers).json()["data"]
    assert history[0]["action"] == "created" and history[0]["actor"].startswith("api-key:")


def test_unservable_adapter_falls_back_to_base_only_where_the_avatar_allows(client: OpenAI, stack) -> None:  # type: ignore[no-untyped-def]
    import secrets

    from coachforge.trainer.v1 import trainer_pb2
    from coachforge_shared.events import EventPublisher

    tag = secrets.token_hex(4)
    broken = f"ft:{BASE_MODEL_ID}:default:broken:{tag}"
    publisher = EventPublisher(stack.kafka_bootstrap, "e2e-test")
    publisher.publish("job.succeeded", trainer_pb2.JobSucceeded(
        job_id=f"ftjob-broken-{tag}", base_model=BASE_MODEL_ID, fine_tuned_model=broken,
        adapter_uri=str(stack.data_dir / "artifacts" / "default" / "no-such-adapter"), lora_rank=16), "default")
    publisher.close()
    deadline = time.monotonic() + 60
    while broken not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "the registry never registered the model"
        time.sleep(0.5)
    question = [{"role": "user", "content": "Hi"}]

    with pytest.raises(openai.APIStatusError) as err:  # an explicit model id never falls back
        client.chat.completions.create(model=broken, messages=question, max_tokens=4)
    assert err.value.status_code == 503

    headers = {"Authorization": f"Bearer {stack.api_key}"}
    root = stack.base_url.removesuffix("/v1")
    r = httpx.post(f"{root}/v1/avatars", headers=headers,
                   json={"name": f"broken-{tag}", "model": broken, "fallback": "base"})
    assert r.status_code == 200, r.text
    raw = client.chat.completions.with_raw_response.create(model=f"broken-{tag}", messages=question,
                                                           max_tokens=4, temperature=0)
    assert raw.headers["x-coachforge-fallback"] == f"base; from={broken}"
    answer = raw.parse()
    assert answer.model == BASE_MODEL_ID and answer.choices[0].message.content
    metrics = httpx.get(stack.metrics_url).text
    assert f'coachforge_inference_fallbacks_total{{model="{broken}",tenant="default"}} 1.0' in metrics
