"""Where a blind A/B comparison's prompts come from, on a real (SQLite) database: inline ``prompts``,
an uploaded ``file`` (``{"messages"}`` lines or evals items, read through the evaluator's file
reading, bad lines named by number) or the tenant's ``stored_completions`` (their request messages
without the stored answer). Exactly one source; the limit of 500 prompts holds for each. The
dataset and inference clients are scripted stand-ins, then the real inference client reads stored
completions over gRPC from a stand-in InferenceService."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from coachforge.dataset.v1 import dataset_pb2
from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_evaluator import comparisons
from coachforge_evaluator.clients import InferenceClient, Sampled
from coachforge_evaluator.runner import RunExecutor
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_evaluator.settings import EvaluatorSettings
from coachforge_shared.auth import Authenticator, create_tenant, current_principal
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, NotFound, Unavailable
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, ServiceRegistration

TENANT = "acme"
MODELS = ["base-model-x", "ft:coach-anna-y"]
MAX = comparisons.MAX_PROMPTS


def jsonl(*rows: object) -> bytes:
    """One line per row; ``""`` is a blank line (a lenient upload's dropped line)."""
    return b"\n".join(b"" if r == "" else (r if isinstance(r, bytes) else json.dumps(r).encode()) for r in rows) + b"\n"


def example(completion_id: str, question: str, answer: str = "Stored answer.",
            before: list[dict[str, Any]] | None = None) -> inference_pb2.StoredCompletionExample:
    messages = [*(before or []), {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return inference_pb2.StoredCompletionExample(id=completion_id, messages_json=json.dumps(messages))


class Files:
    """Stands in for the dataset client: files by (tenant, id), content in small chunks."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], tuple[dataset_pb2.File, bytes]] = {}
        self.bytes_read = 0

    def add(self, file_id: str, content: bytes, purpose: str = "fine-tune", tenant: str = TENANT,
            example_count: int | None = None) -> str:
        count = sum(1 for x in content.splitlines() if x.strip()) if example_count is None else example_count
        self.files[(tenant, file_id)] = (dataset_pb2.File(id=file_id, purpose=purpose, example_count=count), content)
        return file_id

    def file(self, tenant_id: str, file_id: str) -> dataset_pb2.File:
        if (tenant_id, file_id) not in self.files:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return self.files[(tenant_id, file_id)][0]

    def content(self, tenant_id: str, file_id: str) -> Iterator[bytes]:
        data = self.files[(tenant_id, file_id)][1]
        for i in range(0, len(data), 64):
            self.bytes_read += len(data[i:i + 64])
            yield data[i:i + 64]


class Inference:
    """Stands in for the inference client: answers that never name the model, and stored completions."""

    def __init__(self) -> None:
        self.stored: list[inference_pb2.StoredCompletionExample] = []
        self.requests: list[inference_pb2.ListStoredCompletionsRequest] = []
        self.asked: list[list[dict[str, str]]] = []
        self.fail: Exception | None = None

    def sample(self, tenant_id: str, model: str, messages: list[dict[str, str]], params: dict[str, Any],
               user: str = "") -> Sampled:
        self.asked.append(messages)
        style = "short" if model == MODELS[0] else "long"
        return Sampled(text=f"{style} answer to {messages[-1]['content']}", finish_reason="stop", prompt_tokens=3,
                       completion_tokens=3, latency_s=0.01, ttft_s=0.005, model=model)

    def stored_completions(self, tenant_id: str, request: inference_pb2.ListStoredCompletionsRequest
                           ) -> Iterator[inference_pb2.StoredCompletionExample]:
        self.requests.append(request)
        if self.fail is not None:
            raise self.fail
        yield from self.stored[:request.limit or 10_000]


@pytest.fixture
def files() -> Files:
    return Files()


@pytest.fixture
def inference() -> Inference:
    return Inference()


@pytest.fixture
def deps(db: Database, files: Files, inference: Inference) -> EvaluatorDeps:
    create_tenant(db, TENANT)
    create_tenant(db, "globex")
    return EvaluatorDeps(db=db, settings=EvaluatorSettings(run_concurrency=2, sweep_interval_s=0.2, lease_seconds=2),
                         inference=inference, dataset=files)  # type: ignore[arg-type]


def _refused(deps: EvaluatorDeps, **source: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        comparisons.create(deps, TENANT, {"models": MODELS, **source})
    return err.value


def _ready(deps: EvaluatorDeps, cmp_id: str) -> None:
    executor = RunExecutor(deps, "w1")
    executor.sweep()
    deadline = time.monotonic() + 30
    while comparisons.get(deps, TENANT, cmp_id)["status"] == "generating":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    executor.stop()
    assert comparisons.get(deps, TENANT, cmp_id)["status"] == "ready"


def _served_prompts(deps: EvaluatorDeps, cmp_id: str) -> list[list[dict[str, str]]]:
    prompts = []
    while (pair := comparisons.next_pair(deps, TENANT, cmp_id, "ann")) is not None:
        assert set(pair) == {"object", "pair_id", "comparison_id", "prompt", "left", "right", "remaining"}
        prompts.append(pair["prompt"])
        comparisons.vote(deps, TENANT, cmp_id, {"pair_id": pair["pair_id"], "voter": "ann", "winner": "tie"})
    return prompts


def test_prompts_from_a_file_of_messages_or_evals_items(deps: EvaluatorDeps, files: Files,
                                                        inference: Inference) -> None:
    system = {"role": "system", "content": "You are a coach."}
    file_id = files.add("file-prompts", jsonl(
        {"messages": [system, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "train answer"}]},
        "",  # dropped by a lenient upload: skipped, the numbering goes on
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "text", "text": "2"}]}]},
        {"item": {"messages": [{"role": "user", "content": "q3"}], "expected": "rest"}}))
    created = comparisons.create(deps, TENANT, {"models": MODELS, "file": file_id})
    assert created["source"] == {"type": "file", "file_id": file_id}
    assert (created["prompt_count"], created["pair_count"], created["status"]) == (3, 3, "generating")
    _ready(deps, created["id"])
    # A training example's final answer is not part of the prompt; the models answered the rest.
    assert sorted(m[-1]["content"] for m in inference.asked) == ["q1", "q1", "q2", "q2", "q3", "q3"]
    assert [system, {"role": "user", "content": "q1"}] in inference.asked
    served = _served_prompts(deps, created["id"])
    assert sorted(json.dumps(p) for p in served) == sorted(json.dumps(p) for p in (
        [system, {"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}],
        [{"role": "user", "content": "q3"}]))
    evals_file = files.add("file-evals", jsonl({"item": {"messages": [{"role": "user", "content": "e"}]}}),
                           purpose="evals")
    assert comparisons.create(deps, TENANT, {"models": MODELS, "file": evals_file})["prompt_count"] == 1


def test_bad_lines_of_a_file_are_named_by_number(deps: EvaluatorDeps, files: Files) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}]}
    for content, where in [
        (jsonl(good, b"{not json"), "line 2: invalid JSON"),
        (jsonl(good, "", {"prompt": "hi"}), 'line 3: expected {"messages": [...]} or {"item": {"messages": [...]}}'),
        (jsonl(good, {"messages": [{"role": "bot", "content": "x"}]}), "line 2: messages[0].role: "),
        (jsonl({"item": {"messages": [{"role": "user"}]}}), "line 1: item.messages[0].content: "),
        (jsonl(good, {"messages": "hi"}), "line 2: messages: not a list of messages"),
        (jsonl(good, {"messages": [{"role": "assistant", "content": "only an answer"}]}),
         "line 2: messages: no message to ask"),
        (jsonl({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
         "line 1: messages[0].content: only text content"),
    ]:
        file_id = files.add(f"file-{len(files.files)}", content)
        err = _refused(deps, file=file_id)
        assert (err.param, err.code) == ("file", "invalid_file"), err.message
        assert err.message.startswith(f"File {file_id}, {where}"), err.message
    assert comparisons.list_(deps, TENANT)["data"] == []  # nothing half-made


def test_a_file_must_exist_have_prompts_and_not_too_many(deps: EvaluatorDeps, files: Files) -> None:
    row = {"messages": [{"role": "user", "content": "hi"}]}
    for file_id in ("file-missing", files.add("file-globex", jsonl(row), tenant="globex")):
        err = _refused(deps, file=file_id)
        assert (err.param, err.code, err.message) == ("file", "file_not_found", f"File {file_id} not found.")
    results = files.add("file-results", jsonl(row), purpose="fine-tune-results")
    err = _refused(deps, file=results)
    assert err.param == "file" and "purpose 'fine-tune-results'" in err.message
    assert "'evals' or 'fine-tune'" in err.message
    empty = files.add("file-empty", b"\n\n")
    err = _refused(deps, file=empty)
    assert (err.param, err.message) == ("file", f"File {empty} has no prompts.")
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(MAX + 1)]
    big = files.add("file-big", jsonl(*rows))
    files.bytes_read = 0
    err = _refused(deps, file=big)
    assert err.param == "file" and f"at most {MAX} prompts" in err.message and f"has {MAX + 1}" in err.message
    assert files.bytes_read == 0  # refused on the file's count alone
    uncounted = files.add("file-uncounted", jsonl(*rows), example_count=0)
    err = _refused(deps, file=uncounted)
    assert err.param == "file" and f"at most {MAX} prompts" in err.message and "has more" in err.message
    exactly = files.add("file-max", jsonl(*rows[:MAX]))
    assert comparisons.create(deps, TENANT, {"models": MODELS, "file": exactly})["prompt_count"] == MAX
    deps.dataset = None
    err = _refused(deps, file=exactly)
    assert (err.param, err.code) == ("file", "unsupported_source")


def test_prompts_from_stored_completions_without_their_answers(deps: EvaluatorDeps, inference: Inference) -> None:
    system = {"role": "system", "content": "Be brief."}
    inference.stored = [example("chatcmpl-1", "How far today?", before=[system]),
                        example("chatcmpl-2", "Rest or ride?", answer="a rater's correction")]
    flt = {"min_rating": 4, "gold": True, "model": "ft:coach-anna-y", "avatar": "coach-anna",
           "metadata": {"screen": "week"}, "created_after": 1_700_000_000}
    created = comparisons.create(deps, TENANT, {"models": MODELS, "stored_completions": flt})
    assert created["source"] == {"type": "stored_completions", "filter": flt}
    assert created["prompt_count"] == 2
    request = inference.requests[-1]
    assert (request.min_rating, request.gold, request.model, request.avatar, dict(request.metadata),
            request.created_after) == (4, True, "ft:coach-anna-y", "coach-anna", {"screen": "week"}, 1_700_000_000)
    assert request.limit == MAX + 1  # no limit given: one more than allowed tells "too many"
    _ready(deps, created["id"])
    served = _served_prompts(deps, created["id"])
    assert sorted(json.dumps(p) for p in served) == sorted(json.dumps(p) for p in (
        [system, {"role": "user", "content": "How far today?"}], [{"role": "user", "content": "Rest or ride?"}]))
    assert not any("Stored answer" in json.dumps(m) or "correction" in json.dumps(m) for m in inference.asked)
    # An unset filter field is left unset in the request; limit is passed as given.
    comparisons.create(deps, TENANT, {"models": MODELS, "stored_completions": {"limit": 1}})
    request = inference.requests[-1]
    assert (request.HasField("min_rating"), request.HasField("gold"), request.limit) == (False, False, 1)
    assert comparisons.list_(deps, TENANT)["data"][-1]["prompt_count"] == 1


def test_stored_completions_refusals(deps: EvaluatorDeps, inference: Inference) -> None:
    err = _refused(deps, stored_completions={"model": "nobody"})
    assert (err.param, err.code) == ("stored_completions", "no_stored_completions")
    assert '"model": "nobody"' in err.message
    inference.stored = [example(f"chatcmpl-{i}", f"q{i}") for i in range(MAX + 1)]
    err = _refused(deps, stored_completions={})
    assert (err.param, err.code) == ("stored_completions", "too_many_prompts")
    assert f"at most {MAX} prompts" in err.message and "stored_completions.limit" in err.message
    assert comparisons.create(deps, TENANT, {"models": MODELS, "stored_completions": {"limit": MAX}})[
        "prompt_count"] == MAX
    err = _refused(deps, stored_completions={"limit": MAX + 1})
    assert err.param == "stored_completions.limit"
    err = _refused(deps, stored_completions={"min_rating": 9})
    assert err.param == "stored_completions.min_rating"
    err = _refused(deps, stored_completions={"colour": "red"})
    assert err.param == "stored_completions.colour"
    inference.stored = [inference_pb2.StoredCompletionExample(id="chatcmpl-tool", messages_json=json.dumps(
        [{"role": "tool", "content": "{}"}, {"role": "assistant", "content": "done"}]))]
    err = _refused(deps, stored_completions={})
    assert (err.param, err.code) == ("stored_completions", "invalid_stored_completion")
    assert "chatcmpl-tool" in err.message and "messages[0].role" in err.message
    inference.fail = InvalidArgument("min_rating must be between 1 and 5", param="min_rating")
    err = _refused(deps, stored_completions={})
    assert err.param == "stored_completions.min_rating" and "min_rating" in err.message
    inference.fail = Unavailable("connection refused")
    with pytest.raises(Unavailable) as down:
        comparisons.create(deps, TENANT, {"models": MODELS, "stored_completions": {}})
    assert down.value.param == "stored_completions" and "try again" in down.value.message
    deps.inference = None
    err = _refused(deps, stored_completions={})
    assert (err.param, err.code) == ("stored_completions", "unsupported_source")


def test_exactly_one_source(deps: EvaluatorDeps, files: Files) -> None:
    prompts = [[{"role": "user", "content": "hi"}]]
    err = _refused(deps)
    assert (err.param, err.code) == ("prompts", "invalid_source")
    assert "exactly one of prompts, file or stored_completions" in err.message
    err = _refused(deps, prompts=prompts, file="file-x")
    assert (err.param, err.code) == ("file", "invalid_source") and "got prompts and file" in err.message
    err = _refused(deps, file="file-x", stored_completions={})
    assert err.param == "stored_completions"
    err = _refused(deps, prompts=[[{"role": "user", "content": "hi"}]] * (MAX + 1))
    assert err.param == "prompts" and f"at most {MAX}" in err.message
    assert comparisons.create(deps, TENANT, {"models": MODELS, "prompts": prompts})["source"] == {"type": "prompts"}


class StandInInference(inference_pb2_grpc.InferenceServiceServicer):
    """ListStoredCompletions of one tenant's stored completions, honouring limit and the model filter."""

    def __init__(self) -> None:
        self.stored: dict[str, list[inference_pb2.StoredCompletionExample]] = {}
        self.requests: list[inference_pb2.ListStoredCompletionsRequest] = []

    def ListStoredCompletions(self, request: inference_pb2.ListStoredCompletionsRequest,
                              context: grpc.ServicerContext) -> Iterator[inference_pb2.StoredCompletionExample]:
        if request.HasField("min_rating") and not 1 <= request.min_rating <= 5:
            raise InvalidArgument("min_rating must be between 1 and 5", param="min_rating")
        self.requests.append(request)
        rows = self.stored.get(current_principal().tenant_id, [])
        yield from rows[:request.limit or 10_000]


def test_the_grpc_client_reads_the_tenants_stored_completions(db: Database) -> None:
    create_tenant(db, TENANT)
    create_tenant(db, "globex")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stand_in = StandInInference()
    stand_in.stored[TENANT] = [example("chatcmpl-a", "Long run?"), example("chatcmpl-b", "Taper?")]
    token = "internal-test-token"
    server = GrpcServerThread([ServiceRegistration(
        inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name, stand_in,
        inference_pb2_grpc.add_InferenceServiceServicer_to_server)], Authenticator(db, token),
        f"127.0.0.1:{port}").start()
    channel = InternalChannel(f"127.0.0.1:{port}", token)
    try:
        deps = EvaluatorDeps(db=db, settings=EvaluatorSettings(), inference=InferenceClient(channel, timeout_s=10))
        created = comparisons.create(deps, TENANT, {"models": MODELS, "stored_completions": {
            "min_rating": 3, "metadata": {"screen": "day"}}})
        assert created["prompt_count"] == 2
        sent = stand_in.requests[-1]
        assert (sent.min_rating, dict(sent.metadata), sent.limit) == (3, {"screen": "day"}, MAX + 1)
        with pytest.raises(InvalidArgument) as none:  # another tenant's completions are not this one's
            comparisons.create(deps, "globex", {"models": MODELS, "stored_completions": {}})
        assert none.value.code == "no_stored_completions"
        limited = comparisons.create(deps, TENANT, {"models": MODELS, "stored_completions": {"limit": 1}})
        assert limited["prompt_count"] == 1 and stand_in.requests[-1].limit == 1
    finally:
        channel.close()
        server.stop()
