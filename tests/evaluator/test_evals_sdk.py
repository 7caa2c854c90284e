"""The evaluator through the official ``openai`` SDK against the running stack: an eval with
testing criteria, a ``completions`` run sampled from the served model over gRPC, a ``jsonl`` run
of hand-checked answers, output items, a comparison, clear errors for bad input, and gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from openai import OpenAI

from coachforge.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

ITEM_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "expected": {"type": "string"}},
               "required": ["question", "expected"]}
CRITERIA = [
    {"type": "string_check", "name": "mentions the answer", "input": "{{sample.output_text}}",
     "reference": "{{item.expected}}", "operation": "ilike"},
    {"type": "json_check", "name": "is json", "input": "{{sample.output_text}}"},
]
ITEMS = [{"question": "What is 2 + 2? Answer with a number only.", "expected": "4"},
         {"question": "What colour is the sky on a clear day? One word.", "expected": "blue"},
         {"question": "Name the capital of France. One word.", "expected": "Paris"}]
# Hand-checked answers for a jsonl run: which criteria each one passes is known.
GRADED = [
    ({"question": "q1", "expected": "rest"}, '{"action": "Rest today"}', (True, True)),    # both pass
    ({"question": "q2", "expected": "rest"}, '{"action": "ride"}', (False, True)),         # valid json, wrong
    ({"question": "q3", "expected": "easy"}, "take it EASY today", (True, False)),         # right, not json
    ({"question": "q4", "expected": "easy"}, "{broken", (False, False)),                  # neither
]


@pytest.fixture(scope="module")
def client(stack) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(stack) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=120,
                        headers={"Authorization": f"Bearer {stack.api_key}"})


@pytest.fixture(scope="module")
def eval_id(client: OpenAI) -> str:
    created = client.evals.create(
        name="sdk-e2e", metadata={"team": "coach"},
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=CRITERIA)  # type: ignore[arg-type]
    return created.id


def _finished(client: OpenAI, eval_id: str, run_id: str, timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish: {run.status}")


def test_eval_objects_round_trip(client: OpenAI, eval_id: str) -> None:
    got = client.evals.retrieve(eval_id)
    assert got.name == "sdk-e2e" and got.metadata == {"team": "coach"}
    schema = got.data_source_config.schema_
    assert schema["properties"]["item"] == ITEM_SCHEMA and "sample" in schema["properties"]
    assert [c.name for c in got.testing_criteria] == ["mentions the answer", "is json"]  # type: ignore[union-attr]
    assert eval_id in [e.id for e in client.evals.list(limit=100)]
    assert client.evals.update(eval_id, name="sdk-e2e-renamed").name == "sdk-e2e-renamed"


def test_completions_run_samples_the_served_model(client: OpenAI, eval_id: str, stack) -> None:  # type: ignore[no-untyped-def]
    run = client.evals.runs.create(eval_id, name="base", data_source={
        "type": "completions", "model": BASE_MODEL_ID,
        "input_messages": {"type": "template", "template": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"temperature": 0, "seed": 1, "max_completion_tokens": 12},
        "source": {"type": "file_content", "content": [{"item": item} for item in ITEMS]}})
    assert run.status in ("queued", "in_progress") and run.result_counts.total == 3
    done = _finished(client, eval_id, run.id)
    assert done.status == "completed", done.error
    counts = done.result_counts
    assert counts.total == 3 and counts.passed + counts.failed + counts.errored == 3 and counts.errored == 0
    assert done.per_model_usage[0].invocation_count == 3 and done.per_model_usage[0].completion_tokens > 0
    by_name = {r.testing_criteria: r for r in done.per_testing_criteria_results}
    assert by_name["mentions the answer"].passed + by_name["mentions the answer"].failed == 3
    items = list(client.evals.runs.output_items.list(run.id, eval_id=eval_id))
    assert sorted(i.datasource_item_id for i in items) == [0, 1, 2]
    for it in items:
        answer = it.sample.output[0].content or ""
        assert it.sample.model == BASE_MODEL_ID and it.sample.usage.completion_tokens > 0
        assert it.sample.input[-1].content == ITEMS[it.datasource_item_id]["question"]  # the template, rendered
        mentions = next(r for r in it.results if r.name == "mentions the answer")
        expected = ITEMS[it.datasource_item_id]["expected"].lower() in answer.lower()
        assert mentions.passed is expected  # the grade agrees with a check done here
        assert it.status == ("pass" if all(r.passed for r in it.results) else "fail")


def _jsonl_run(client: OpenAI, eval_id: str, name: str, rows: list[tuple[dict[str, str], str, Any]]) -> Any:
    run = client.evals.runs.create(eval_id, name=name, data_source={
        "type": "jsonl", "source": {"type": "file_content", "content": [
            {"item": item, "sample": {"output_text": answer, "model": "hand-written"}} for item, answer, _ in rows]}})
    return _finished(client, eval_id, run.id)


def test_hand_checked_answers_are_graded_exactly(client: OpenAI, eval_id: str) -> None:
    done = _jsonl_run(client, eval_id, "hand-checked", GRADED)
    assert done.status == "completed"
    assert (done.result_counts.total, done.result_counts.passed, done.result_counts.failed,
            done.result_counts.errored) == (4, 1, 3, 0)
    by_name = {r.testing_criteria: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert by_name == {"mentions the answer": (2, 2), "is json": (2, 2)}
    for it in client.evals.runs.output_items.list(done.id, eval_id=eval_id):
        expected = GRADED[it.datasource_item_id][2]
        assert tuple(r.passed for r in it.results) == expected
    passed = list(client.evals.runs.output_items.list(done.id, eval_id=eval_id, status="pass"))
    assert [i.datasource_item_id for i in passed] == [0]


def test_comparison_pairs_items_and_tests_the_difference(http: httpx.Client, client: OpenAI, eval_id: str) -> None:
    worse = [(item, "no", (False, False)) for item, _, _ in GRADED]
    better = [(item, f'{{"action": "{item["expected"]}"}}', (True, True)) for item, _, _ in GRADED]
    a = _jsonl_run(client, eval_id, "worse", worse)
    b = _jsonl_run(client, eval_id, "better", better)
    report = http.get(f"/v1/evals/{eval_id}/compare", params={"runs": f"{a.id},{b.id}"}).json()
    assert report["baseline_run_id"] == a.id
    mentions = next(c for c in report["criteria"] if c["testing_criteria"] == "mentions the answer")
    rates = {r["run_id"]: r["pass_rate"] for r in mentions["runs"]}
    assert rates == {a.id: 0.0, b.id: 1.0}
    low, high = next(r["interval"] for r in mentions["runs"] if r["run_id"] == b.id)
    assert low == pytest.approx(0.5101, abs=1e-4) and high == pytest.approx(1.0)  # Wilson 95% for 4/4
    paired = mentions["paired"][0]
    assert paired["paired_items"] == 4 and paired["run_only_passed"] == 4 and paired["baseline_only_passed"] == 0
    assert paired["p_value"] == pytest.approx(0.125)  # exact McNemar, 4 discordant pairs all one way: 2 * 0.5**4
    assert paired["verdict"] == "no_difference"  # four items cannot prove it at 5%
    r = http.get(f"/v1/evals/{eval_id}/compare", params={"runs": a.id})
    assert r.status_code == 400 and r.json()["error"]["param"] == "runs"


def test_bad_input_names_the_field(client: OpenAI, eval_id: str) -> None:
    runs_before = [r.id for r in client.evals.runs.list(eval_id, limit=100)]
    with pytest.raises(openai.BadRequestError) as err:
        client.evals.create(data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
                            testing_criteria=[{"type": "string_check", "name": "x", "input": "a", "reference": "b",
                                               "operation": "contains"}])  # type: ignore[list-item]
    assert err.value.body["param"].startswith("testing_criteria[0]")  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.evals.runs.create(eval_id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": [
            {"item": {"question": "q", "expected": "e"}, "sample": {"output_text": "a"}},
            {"item": {"question": 7, "expected": "e"}, "sample": {"output_text": "a"}}]}})
    assert err.value.body["param"] == "data_source.source.content[1].item.question"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.evals.runs.create(eval_id, data_source={
            "type": "completions", "model": "ft:no-such-model", "source": {"type": "file_content", "content": [
                {"item": {"question": "q", "expected": "e"}}]},
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}})
    assert err.value.body["param"] == "data_source.model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve("eval-missing")
    assert [r.id for r in client.evals.runs.list(eval_id, limit=100)] == runs_before  # nothing half-made


def test_grpc_answers_with_the_rest_objects(stack, eval_id: str, client: OpenAI) -> None:  # type: ignore[no-untyped-def]
    run = client.evals.runs.create(eval_id, name="over-grpc-check", data_source={
        "type": "jsonl", "source": {"type": "file_content", "content": [
            {"item": GRADED[0][0], "sample": {"output_text": GRADED[0][1]}}]}})
    _finished(client, eval_id, run.id)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(channel)
        metadata = (("authorization", f"Bearer {stack.api_key}"),)
        got = json.loads(stub.GetRun(evaluator_pb2.GetRunRequest(eval_id=eval_id, run_id=run.id),
                                     metadata=metadata).json)
        assert got["id"] == run.id and got["result_counts"]["passed"] == 1
        with pytest.raises(grpc.RpcError) as err:
            stub.GetRun(evaluator_pb2.GetRunRequest(eval_id=eval_id, run_id="evalrun-missing"), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_compares_two_models_on_the_same_items(stack, client: OpenAI, eval_id: str,  # type: ignore[no-untyped-def]
                                                    http: httpx.Client) -> None:
    avatar = f"avatar-{int(time.time() * 1000) % 10**8}"
    assert http.post("/v1/avatars", json={"name": avatar, "model": BASE_MODEL_ID}).status_code == 200
    reference = next(r for r in client.evals.runs.list(eval_id, order="desc", limit=100)
                     if r.status == "completed" and r.data_source.type == "completions")
    done = subprocess.run([str(Path(sys.executable).parent / "coachforge"), "models", "compare", BASE_MODEL_ID,
                           avatar, "--eval", eval_id, "--like", reference.id, "--quiet", "--base-url", stack.base_url,
                           "--api-key", stack.api_key], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert f"A = {BASE_MODEL_ID}" in table and f"B = {avatar}" in table
    # The avatar serves the same weights with temperature 0 and a seed: the same answers, no difference.
    assert "mentions the answer" in table and "no difference (3 paired items)" in table
    price_row = next(line for line in table.splitlines() if line.startswith("$ per 1M tokens")).split()[-2:]
    assert all(float(v) > 0 for v in price_row)  # the price table's base price, blended over the runs' tokens
    assert next(line for line in table.splitlines() if line.startswith("adapter size")).split()[-2:] == [
        "base", "base"]
    runs = [r for r in client.evals.runs.list(eval_id, order="desc", limit=100)
            if (r.metadata or {}).get("compare_like") == reference.id]
    assert sorted(r.model for r in runs) == sorted([BASE_MODEL_ID, avatar])
    assert all(r.result_counts.total == 3 and r.status == "completed" for r in runs)


def test_a_run_reads_its_items_from_an_uploaded_evals_file(client: OpenAI) -> None:
    ev = client.evals.create(
        name="sdk-file-source",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=CRITERIA)  # type: ignore[arg-type]
    rows = [{"item": item, "sample": {"output_text": answer, "model": "hand-written"}} for item, answer, _ in GRADED]
    content = b"\n".join(json.dumps(r).encode() for r in rows) + b"\n"
    f = client.files.create(file=("items.jsonl", content), purpose="evals")
    assert str(f.purpose) == "evals" and f.bytes == len(content)
    assert f.id in {x.id for x in client.files.list(purpose="evals")}
    assert f.id not in {x.id for x in client.files.list(purpose="fine-tune")}
    assert client.files.content(f.id).content == content

    run = client.evals.runs.create(ev.id, name="from-file", data_source={
        "type": "jsonl", "source": {"type": "file_id", "id": f.id}})
    assert run.data_source.source.type == "file_id" and run.data_source.source.id == f.id  # type: ignore[union-attr]
    assert run.result_counts.total == 4
    done = _finished(client, ev.id, run.id)
    assert done.status == "completed", done.error
    assert (done.result_counts.total, done.result_counts.passed, done.result_counts.failed,
            done.result_counts.errored) == (4, 1, 3, 0)  # the same answers as the inline hand-checked run
    for it in client.evals.runs.output_items.list(done.id, eval_id=ev.id):
        item, _, expected = GRADED[it.datasource_item_id]  # items keep the file's order
        assert it.datasource_item == item and tuple(r.passed for r in it.results) == expected

    # A bad item is named by its line in the file; nothing is created.
    bad_rows = [*rows[:2], {"item": {"question": 7, "expected": "e"}, "sample": {"output_text": "a"}}]
    bad = client.files.create(file=("bad-items.jsonl", b"\n".join(json.dumps(r).encode() for r in bad_rows)),
                              purpose="evals")  # any item object is a valid line of an evals file
    with pytest.raises(openai.BadRequestError) as err:
        client.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": bad.id}})
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "data_source.source.id"
    assert "line 3: item.question: " in body["message"]
    assert [r.id for r in client.evals.runs.list(ev.id, limit=100)] == [run.id]

    # Files of other purposes, or of no one, are not a run's source; an evals file is not training data.
    training = client.files.create(file=("train.jsonl", json.dumps({"messages": [
        {"role": "user", "content": "Rest today?"}, {"role": "assistant", "content": "Yes, rest."}]}).encode()),
        purpose="fine-tune")
    for file_id in (training.id, "file-missing"):
        with pytest.raises(openai.BadRequestError) as err:
            client.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_id",
                                                                                     "id": file_id}})
        assert err.value.body["param"] == "data_source.source.id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(training_file=f.id, model=BASE_MODEL_ID)
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "training_file" and "'evals'" in body["message"]

    # An evals upload is validated line by line, like a training upload.
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("invalid.jsonl", b'{"item": {}}\n\n{"question": "q"}\n'), purpose="evals")
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "file" and body["code"] == "invalid_file_format"
    assert "line 2: line: empty line" in body["message"] and "line 3: item: missing" in body["message"]
    for file_id in (f.id, bad.id, training.id):
        assert client.files.delete(file_id).deleted


def test_model_judges_served_by_the_platform_always_give_a_parsable_verdict(client: OpenAI) -> None:
    """score_model and label_model with the stack's own model as the judge: its answer is constrained
    by a JSON schema, so every verdict parses (whether this small judge is right is not asked here;
    its grading logic is checked against hand-written verdicts in test_graders.py)."""
    judge_input = [{"role": "system", "content": "You grade answers. Reply with JSON only."},
                   {"role": "user", "content": "Question: {{item.question}}\nAnswer: {{sample.output_text}}"}]
    ev = client.evals.create(
        name="judges", data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=[
            {"type": "score_model", "name": "score", "model": BASE_MODEL_ID, "input": judge_input, "range": [0, 10],
             "pass_threshold": 5, "sampling_params": {"temperature": 0, "max_completions_tokens": 256}},
            {"type": "label_model", "name": "label", "model": BASE_MODEL_ID, "input": judge_input,
             "labels": ["correct", "wrong"], "passing_labels": ["correct"],
             "sampling_params": {"temperature": 0, "max_completions_tokens": 256}}])  # type: ignore[list-item]
    rows = [(ITEMS[0], "4"), (ITEMS[2], "Berlin")]
    run = client.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": [
        {"item": item, "sample": {"output_text": answer}} for item, answer in rows]}})
    done = _finished(client, ev.id, run.id)
    assert done.status == "completed" and done.result_counts.total == 2
    for it in client.evals.runs.output_items.list(run.id, eval_id=ev.id):
        by_name = {r.name: r for r in it.results}
        assert set(by_name) == {"score", "label"}
        assert 0 <= by_name["score"].score <= 10 and by_name["score"].passed == (by_name["score"].score >= 5)
        assert by_name["label"].score in (0.0, 1.0)
        assert all(getattr(r, "error", None) is None for r in it.results), it.results
