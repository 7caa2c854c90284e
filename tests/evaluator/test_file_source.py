"""Eval runs whose items come from an uploaded evals file (``source: {"type": "file_id"}``), on a real
(SQLite) database: each non-blank line becomes a row ``{"item", "sample"?}``, the items pass the same
checks as inline ones with errors naming the file line, a file of another purpose, of another tenant
or with too many items is refused before anything is stored. The dataset client is replaced by a
scripted one, then the real one is run over gRPC against a stand-in DatasetService (the whole path,
upload included, is exercised by test_evals_sdk.py)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge_evaluator import service
from coachforge_evaluator.clients import DatasetClient
from coachforge_evaluator.runner import RunExecutor
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_evaluator.settings import EvaluatorSettings
from coachforge_shared.auth import Authenticator, create_tenant, current_principal
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, NotFound, Unavailable
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, ServiceRegistration

TENANT = "acme"
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}, "a": {"type": "string"}}, "required": ["q", "a"]}
CRITERIA = [{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.a}}",
             "operation": "eq"}]
PARAM = "data_source.source.id"


def jsonl(*rows: object) -> bytes:
    """One line per row; ``""`` is a blank line (what a lenient upload stores for a dropped line)."""
    return b"\n".join(b"" if r == "" else json.dumps(r).encode() for r in rows) + b"\n"


class ScriptedDataset:
    """Stands in for :class:`DatasetClient`: files by (tenant, id), content streamed in small chunks,
    counting the bytes handed out."""

    def __init__(self, chunk: int = 16) -> None:
        self.files: dict[tuple[str, str], tuple[dataset_pb2.File, bytes]] = {}
        self.chunk, self.bytes_read = chunk, 0
        self.fail: Exception | None = None

    def add(self, file_id: str, content: bytes, purpose: str = "evals", tenant: str = TENANT,
            example_count: int | None = None) -> str:
        count = sum(1 for x in content.splitlines() if x.strip()) if example_count is None else example_count
        self.files[(tenant, file_id)] = (dataset_pb2.File(id=file_id, purpose=purpose, example_count=count,
                                                          bytes=len(content)), content)
        return file_id

    def file(self, tenant_id: str, file_id: str) -> dataset_pb2.File:
        if self.fail is not None:
            raise self.fail
        if (tenant_id, file_id) not in self.files:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return self.files[(tenant_id, file_id)][0]

    def content(self, tenant_id: str, file_id: str) -> Iterator[bytes]:
        data = self.files[(tenant_id, file_id)][1]
        for i in range(0, len(data), self.chunk):
            self.bytes_read += len(data[i:i + self.chunk])
            yield data[i:i + self.chunk]


@pytest.fixture
def dataset() -> ScriptedDataset:
    return ScriptedDataset()


@pytest.fixture
def deps(db: Database, dataset: ScriptedDataset) -> EvaluatorDeps:
    create_tenant(db, TENANT)
    create_tenant(db, "globex")
    return EvaluatorDeps(db=db, settings=EvaluatorSettings(max_items=5, sweep_interval_s=0.2, lease_seconds=2),
                         dataset=dataset)


def _eval(deps: EvaluatorDeps) -> str:
    return str(service.create_eval(deps, TENANT, {"data_source_config": {"type": "custom", "item_schema": SCHEMA,
                                                                         "include_sample_schema": True},
                                                  "testing_criteria": CRITERIA})["id"])


def _jsonl_run(deps: EvaluatorDeps, eval_id: str, file_id: str) -> dict[str, Any]:
    return service.create_run(deps, TENANT, eval_id, {"data_source": {
        "type": "jsonl", "source": {"type": "file_id", "id": file_id}}})


def _completions_run(deps: EvaluatorDeps, eval_id: str, file_id: str, input_messages: dict[str, Any]) -> None:
    service.create_run(deps, TENANT, eval_id, {"data_source": {
        "type": "completions", "model": "base", "input_messages": input_messages,
        "source": {"type": "file_id", "id": file_id}}})


def _wait(deps: EvaluatorDeps, eval_id: str, run_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = service.get_run(deps, TENANT, eval_id, run_id)
        if run["status"] in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run not finished: {run}")


def _refused(call: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        call()
    return err.value


def test_each_line_of_the_file_becomes_an_item_and_is_graded(deps: EvaluatorDeps, dataset: ScriptedDataset) -> None:
    file_id = dataset.add("file-items", jsonl(
        {"item": {"q": "x", "a": "yes"}, "sample": {"output_text": "yes"}},
        "",  # a line a lenient upload dropped: skipped, the numbering goes on
        {"item": {"q": "y", "a": "yes"}, "sample": {"output_text": "no", "model": "hand-written"}},
        {"item": {"q": "z", "a": "no"}, "sample": {"output_text": "no"}}))
    rows, lines = service.file_rows(deps, TENANT, file_id)
    assert lines == [1, 3, 4]
    assert rows[1] == {"item": {"q": "y", "a": "yes"}, "sample": {"output_text": "no", "model": "hand-written"}}
    eval_id = _eval(deps)
    created = _jsonl_run(deps, eval_id, file_id)
    assert created["data_source"]["source"] == {"type": "file_id", "id": file_id}  # as OpenAI echoes it
    assert created["result_counts"]["total"] == 3
    executor = RunExecutor(deps, "w1")
    executor.submit(created["id"])
    run = _wait(deps, eval_id, created["id"])
    executor.stop()
    assert run["result_counts"] == {"total": 3, "passed": 2, "failed": 1, "errored": 0}
    items = service.list_output_items(deps, TENANT, eval_id, created["id"])["data"]
    assert [(i["datasource_item_id"], i["datasource_item"]["q"], i["status"]) for i in items] == [
        (0, "x", "pass"), (1, "y", "fail"), (2, "z", "pass")]


def test_items_from_a_file_are_checked_like_inline_ones_naming_the_line(deps: EvaluatorDeps,
                                                                        dataset: ScriptedDataset) -> None:
    eval_id = _eval(deps)
    good = {"item": {"q": "x", "a": "yes"}, "sample": {"output_text": "yes"}}
    bad_item = dataset.add("file-bad-item", jsonl(good, "", {"item": {"q": 7, "a": "yes"},
                                                             "sample": {"output_text": "yes"}}))
    err = _refused(lambda: _jsonl_run(deps, eval_id, bad_item))
    assert err.param == PARAM
    assert err.message.startswith(f"File {bad_item}, line 3: item.q: does not match the eval's item_schema: ")
    no_sample = dataset.add("file-no-sample", jsonl(good, {"item": {"q": "y", "a": "no"}}))
    err = _refused(lambda: _jsonl_run(deps, eval_id, no_sample))
    assert err.param == PARAM and f"File {no_sample}, line 2: sample: " in err.message
    # a completions run renders each item's messages: a missing reference names the line too
    refs = dataset.add("file-refs", jsonl({"item": {"q": "x", "a": "y", "messages": [{"role": "user",
                                                                                       "content": "hi"}]}},
                                          {"item": {"q": "x", "a": "y"}}))
    err = _refused(lambda: _completions_run(deps, eval_id, refs, {"type": "item_reference",
                                                                  "item_reference": "item.messages"}))
    assert err.param == "data_source.input_messages" and err.message.startswith(f"File {refs}, line 2: ")
    # a line that is not an item (never stored by the dataset service, but refused all the same)
    broken = dataset.add("file-broken", b'{"item": {"q": "x", "a": "y"}}\n{"item": 3}\n')
    err = _refused(lambda: _completions_run(deps, eval_id, broken, {"type": "template", "template": [
        {"role": "user", "content": "{{item.q}}"}]}))
    assert err.param == PARAM and f"File {broken}, line 2: item: " in err.message
    assert service.list_runs(deps, TENANT, eval_id)["data"] == []  # nothing half-made


def test_a_file_must_be_the_tenants_evals_file(deps: EvaluatorDeps, dataset: ScriptedDataset) -> None:
    eval_id = _eval(deps)
    row = {"item": {"q": "x", "a": "yes"}, "sample": {"output_text": "yes"}}
    for file_id, code in (("file-missing", "file_not_found"),
                          (dataset.add("file-globex", jsonl(row), tenant="globex"), "file_not_found")):
        err = _refused(lambda: _jsonl_run(deps, eval_id, file_id))  # noqa: B023
        assert (err.param, err.code) == (PARAM, code) and err.message == f"File {file_id} not found."
    training = dataset.add("file-train", jsonl(row), purpose="fine-tune")
    err = _refused(lambda: _jsonl_run(deps, eval_id, training))
    assert err.param == PARAM and "purpose 'fine-tune'" in err.message and "'evals'" in err.message
    empty = dataset.add("file-empty", b"\n\n")  # every line dropped by a lenient upload
    assert "has no items" in _refused(lambda: _jsonl_run(deps, eval_id, empty)).message
    dataset.fail = Unavailable("connection refused")
    with pytest.raises(Unavailable) as down:
        _jsonl_run(deps, eval_id, "file-train")
    assert down.value.param == PARAM and "dataset service" in down.value.message
    deps.dataset = None  # no dataset service wired: file_id is refused as before
    err = _refused(lambda: _jsonl_run(deps, eval_id, "file-train"))
    assert (err.param, err.code) == ("data_source.source.type", "unsupported_source")


def test_a_file_with_too_many_items_is_refused_without_reading_it_all(deps: EvaluatorDeps,
                                                                      dataset: ScriptedDataset) -> None:
    eval_id = _eval(deps)
    rows = [{"item": {"q": f"q{i}", "a": "yes"}, "sample": {"output_text": "yes"}} for i in range(50)]
    big = dataset.add("file-big", jsonl(*rows))
    err = _refused(lambda: _jsonl_run(deps, eval_id, big))
    assert err.param == PARAM and "at most 5 items" in err.message and "has 50" in err.message
    assert dataset.bytes_read == 0  # refused on the file's item count alone
    uncounted = dataset.add("file-uncounted", jsonl(*rows), example_count=0)  # a count that cannot be trusted
    err = _refused(lambda: _jsonl_run(deps, eval_id, uncounted))
    assert err.param == PARAM and "at most 5 items" in err.message
    assert 0 < dataset.bytes_read < len(jsonl(*rows)) // 2  # stopped at the sixth item
    exactly = dataset.add("file-five", jsonl(*rows[:5]))
    assert _jsonl_run(deps, eval_id, exactly)["result_counts"]["total"] == 5


class StandInDatasetService(dataset_pb2_grpc.DatasetServiceServicer):
    """GetFile and GetFileContent of one tenant's files, content streamed in 10-byte chunks."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], tuple[dataset_pb2.File, bytes]] = {}

    def _find(self, file_id: str) -> tuple[dataset_pb2.File, bytes]:
        found = self.files.get((current_principal().tenant_id, file_id))
        if found is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")
        return found

    def GetFile(self, request: dataset_pb2.GetFileRequest, context: grpc.ServicerContext) -> dataset_pb2.File:
        return self._find(request.file_id)[0]

    def GetFileContent(self, request: dataset_pb2.GetFileRequest,
                       context: grpc.ServicerContext) -> Iterator[dataset_pb2.FileChunk]:
        data = self._find(request.file_id)[1]
        for i in range(0, len(data), 10):
            yield dataset_pb2.FileChunk(data=data[i:i + 10])


def test_the_grpc_client_reads_the_tenants_file(deps: EvaluatorDeps, db: Database) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stand_in = StandInDatasetService()
    content = jsonl({"item": {"q": "x", "a": "yes"}, "sample": {"output_text": "yes"}}, "",
                    {"item": {"q": "y", "a": "no"}, "sample": {"output_text": "yes"}})
    stand_in.files[(TENANT, "file-e")] = (dataset_pb2.File(id="file-e", purpose="evals", example_count=2), content)
    token = "internal-test-token"
    server = GrpcServerThread([ServiceRegistration(
        dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name, stand_in,
        dataset_pb2_grpc.add_DatasetServiceServicer_to_server)], Authenticator(db, token), f"127.0.0.1:{port}").start()
    channel = InternalChannel(f"127.0.0.1:{port}", token)
    try:
        client = DatasetClient(channel, timeout_s=10)
        assert client.file(TENANT, "file-e").purpose == "evals"
        assert b"".join(client.content(TENANT, "file-e")) == content
        with pytest.raises(NotFound):
            client.file("globex", "file-e")
        deps.dataset = client
        eval_id = _eval(deps)
        run = _jsonl_run(deps, eval_id, "file-e")
        assert run["result_counts"]["total"] == 2
        rows, lines = service.file_rows(deps, TENANT, "file-e")
        assert lines == [1, 3] and rows[1]["item"] == {"q": "y", "a": "no"}
        with pytest.raises(InvalidArgument) as err:  # another tenant's file does not exist for this one
            service.file_rows(deps, "globex", "file-e")
        assert (err.value.param, err.value.code) == (PARAM, "file_not_found")
    finally:
        channel.close()
        server.stop()
