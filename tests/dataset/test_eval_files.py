"""Files with ``purpose="evals"`` (OpenAI's eval items, one ``{"item": …, "sample"?: …}`` per line):
validated line by line under the same policies and reports as training uploads, listed and
downloaded like any file, and never read as training data; through the service functions, REST
(the official ``openai`` SDK over the app in process) and the real gRPC server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge_dataset import api, service, versions
from coachforge_dataset import grpc as dataset_grpc
from coachforge_dataset.pipeline import parse_eval_line
from coachforge_dataset.schemas import CreateDatasetVersion
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, NotFound, PayloadTooLarge
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel
from coachforge_shared.http import install_error_handlers

ITEM = {"item": {"question": "Rest or ride after a bad night?", "expected": "rest"}}
WITH_SAMPLE = {"item": {"question": "Easy or hard today?", "expected": "easy"},
               "sample": {"output_text": "easy", "model": "hand-written"}}
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> DatasetDeps:
    create_tenant(db, "acme")
    create_tenant(db, "globex")
    return DatasetDeps(db=db, settings=DatasetSettings(max_upload_bytes=10_000, chunk_bytes=7, trainer_grpc_target=""),
                       files_dir=tmp_path / "files", models_dir=tmp_path / "models")


def report(deps: DatasetDeps, **kw: str) -> dict[str, object]:
    body: dict[str, object] = json.loads(b"".join(service.report_json_chunks(service.get_report(deps, "acme", **kw))))
    return body


@pytest.mark.parametrize(("raw", "problems"), [
    (b"{oops", [("line", "invalid JSON")]),
    (b"\xff\xfe", [("line", "not valid UTF-8")]),
    (b"[1]", [("line", "expected a JSON object")]),
    (line({"question": "q"}), [("item", "missing"), ("question", "unexpected field")]),
    (line({"item": "q"}), [("item", "must be a JSON object")]),
    (line({"item": {}, "sample": "a"}), [("sample", "must be a JSON object")]),
    (line({"item": {}, "sample": None}), [("sample", "must be a JSON object")]),
    (line(CHAT), [("item", "missing"), ("messages", "unexpected field")]),
])
def test_eval_line_errors_name_field_and_reason(raw: bytes, problems: list[tuple[str, str]]) -> None:
    obj, issues = parse_eval_line(3, raw)
    assert obj is None and len(issues) == len(problems)
    for issue, (field, reason) in zip(issues, problems, strict=True):
        assert issue.line == 3 and issue.field == field and reason in issue.reason


def test_valid_eval_lines_decode_as_given() -> None:
    assert parse_eval_line(1, line(ITEM)) == (ITEM, [])
    assert parse_eval_line(2, line(WITH_SAMPLE)) == (WITH_SAMPLE, [])


def test_an_evals_file_is_stored_listed_and_read_back_as_uploaded(deps: DatasetDeps) -> None:
    content = b"\n".join([line(ITEM), line(WITH_SAMPLE), line(ITEM)]) + b"\n"  # a trailing newline is fine
    row = service.store_upload(deps, "acme", "items.jsonl", "evals", [content[i:i + 7]
                                                                     for i in range(0, len(content), 7)])
    assert (row.purpose, row.example_count, row.bytes, row.policy, row.invalid_lines) == (
        "evals", 3, len(content), "strict", 0)
    assert b"".join(service.read_content(deps, "acme", row.id)) == content
    training = service.store_upload(deps, "acme", "train.jsonl", "fine-tune", [line(CHAT)])
    assert [f.id for f in service.list_files(deps, "acme", "evals")] == [row.id]
    assert [f.id for f in service.page_files(deps, "acme", "evals", 10, None)[0]] == [row.id]
    assert {f.id for f in service.list_files(deps, "acme")} == {row.id, training.id}
    assert service.to_openai(row)["purpose"] == "evals" and service.to_proto(row).example_count == 3
    body = report(deps, file_id=row.id)
    assert (body["status"], body["purpose"], body["examples"], body["invalid_lines"]) == ("accepted", "evals", 3, 0)
    with pytest.raises(NotFound):
        service.get_file(deps, "globex", row.id)


def test_strict_refuses_an_evals_file_naming_every_bad_line(deps: DatasetDeps) -> None:
    content = b"\n".join([line(ITEM), b"", line(CHAT), b"{bad", line(ITEM)]) + b"\n"
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "items.jsonl", "evals", [content])
    message = err.value.message
    assert err.value.param == "file" and err.value.code == "invalid_file_format"
    assert message.startswith("Invalid file format: 3 invalid line(s) of 5, 4 problem(s). ")
    assert "line 2: line: empty line" in message and "line 3: item: missing" in message
    assert "line 3: messages: unexpected field" in message and "line 4: line: invalid JSON" in message
    assert service.list_files(deps, "acme") == [] and list((deps.files_dir / "acme").iterdir()) == []
    body = report(deps, report_id=message.rsplit("/v1/files/reports/", 1)[1])
    assert (body["status"], body["purpose"], body["lines"], body["examples"], body["invalid_lines"],
            body["blank_lines"]) == ("rejected", "evals", 5, 2, 3, 0)
    issues = body["issues"]
    assert isinstance(issues, list) and [(i["line"], i["field"]) for i in issues] == [
        (2, "line"), (3, "item"), (3, "messages"), (4, "line")]


def test_lenient_drops_bad_eval_lines_keeping_line_numbers(deps: DatasetDeps) -> None:
    content = b"\n".join([line(ITEM), line({"item": 1}), b"", line(WITH_SAMPLE)]) + b"\n\n"
    row = service.store_upload(deps, "acme", "items.jsonl", "evals", [content], policy="lenient")
    assert (row.example_count, row.invalid_lines, row.issues_total, row.policy) == (2, 3, 3, "lenient")
    stored = b"".join(service.read_content(deps, "acme", row.id)).split(b"\n")
    assert stored == [line(ITEM), b"", b"", line(WITH_SAMPLE), b"", b""]  # line 5 (empty) dropped too
    details = service.to_openai(row)["status_details"]
    assert isinstance(details, str) and details.startswith("3 invalid line(s) dropped under the lenient policy")
    assert "line 2: item: must be a JSON object" in details and "line 3: line: empty line" in details
    assert "line 5: line: empty line" in details
    issues = report(deps, file_id=row.id)["issues"]
    assert isinstance(issues, list) and [i["line"] for i in issues] == [2, 3, 5]
    with pytest.raises(InvalidArgument, match="no eval items"):
        service.store_upload(deps, "acme", "none.jsonl", "evals", [b"{x\n" + line(CHAT)], policy="lenient")


def test_eval_uploads_keep_the_size_limit_and_refuse_an_empty_file(deps: DatasetDeps) -> None:
    with pytest.raises(PayloadTooLarge):
        service.store_upload(deps, "acme", "big.jsonl", "evals", (line(ITEM) + b"\n" for _ in range(1000)))
    with pytest.raises(InvalidArgument, match="no eval items"):
        service.store_upload(deps, "acme", "empty.jsonl", "evals", [b""])
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "x.jsonl", "batch", [line(ITEM)])
    assert err.value.param == "purpose" and "'evals'" in err.value.message
    assert list((deps.files_dir / "acme").iterdir()) == []


def test_an_evals_file_never_becomes_training_data(deps: DatasetDeps) -> None:
    row = service.store_upload(deps, "acme", "items.jsonl", "evals", [line(ITEM)])
    with pytest.raises(InvalidArgument) as err:
        list(service.read_as_openai_chat(deps, "acme", row.id))
    assert err.value.param == "file_id" and "purpose 'evals'" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        versions.check_tokens(deps, "acme", row.id, 100, "SmolLM2-135M-Instruct")
    assert err.value.param == "id" and "not training data" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        versions.create_version(deps, "acme", CreateDatasetVersion(name="d", files=[row.id]))
    assert err.value.param == "files" and "purpose 'evals'" in err.value.message
    # and a training upload is not checked as eval items (an evals line is not a conversation)
    with pytest.raises(InvalidArgument, match="line 1: "):
        service.store_upload(deps, "acme", "items.jsonl", "fine-tune", [line(ITEM)])


@pytest.fixture
def sdk(deps: DatasetDeps, db: Database) -> Iterator[OpenAI]:
    """The official SDK against the dataset router, in process."""
    add_api_key(db, "acme", "cf-acme-key")
    app = FastAPI()
    app.state.authenticator = Authenticator(db, internal_token="internal")
    app.state.dataset = deps
    install_error_handlers(app)
    app.include_router(api.router)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key="cf-acme-key", max_retries=0,
                     http_client=http)


def test_rest_uploads_lists_and_downloads_evals_files(sdk: OpenAI) -> None:
    content = b"\n".join([line(ITEM), line(WITH_SAMPLE)]) + b"\n"
    f = sdk.files.create(file=("items.jsonl", content), purpose="evals")
    assert str(f.purpose) == "evals" and f.bytes == len(content) and f.status == "processed"
    sdk.files.create(file=("train.jsonl", line(CHAT)), purpose="fine-tune")
    assert [x.id for x in sdk.files.list(purpose="evals")] == [f.id]
    assert str(sdk.files.retrieve(f.id).purpose) == "evals"
    assert sdk.files.content(f.id).content == content
    with pytest.raises(openai.BadRequestError) as err:
        sdk.files.create(file=("bad.jsonl", line(ITEM) + b"\n\n" + line(CHAT)), purpose="evals")
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "file" and body["code"] == "invalid_file_format"
    assert "line 2: line: empty line" in body["message"] and "line 3: item: missing" in body["message"]
    lenient = sdk.files.create(file=("l.jsonl", line(ITEM) + b"\n{x\n"), purpose="evals",
                               extra_body={"policy": "lenient"})
    assert lenient.status_details and "line 2: line: invalid JSON" in lenient.status_details
    problems = sdk.get(f"/files/{lenient.id}/report", cast_to=httpx.Response,
                       options={"params": {"format": "jsonl"}}).text.splitlines()
    assert [json.loads(p)["line"] for p in problems[1:]] == [2]


@pytest.fixture
def rpc(deps: DatasetDeps, db: Database) -> Iterator[tuple[dataset_pb2_grpc.DatasetServiceStub, InternalChannel]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = GrpcServerThread([dataset_grpc.registration(deps)], Authenticator(db, "internal-test-token"),
                              f"127.0.0.1:{port}").start()
    channel = InternalChannel(f"127.0.0.1:{port}", "internal-test-token")
    try:
        yield dataset_pb2_grpc.DatasetServiceStub(channel.channel), channel
    finally:
        channel.close()
        server.stop()


def test_grpc_uploads_evals_files_and_refuses_them_as_training_data(
        rpc: tuple[dataset_pb2_grpc.DatasetServiceStub, InternalChannel]) -> None:
    stub, channel = rpc
    md = channel.metadata("acme")
    content = b"\n".join([line(ITEM), line(WITH_SAMPLE)]) + b"\n"
    f = stub.UploadFile(dataset_pb2.UploadFileRequest(filename="items.jsonl", purpose="evals", content=content),
                        metadata=md)
    assert (f.purpose, f.example_count) == ("evals", 2)  # what the trainer checks (purpose != "fine-tune")
    assert stub.GetFile(dataset_pb2.GetFileRequest(file_id=f.id), metadata=md).purpose == "evals"
    assert b"".join(c.data for c in stub.GetFileContent(dataset_pb2.GetFileRequest(file_id=f.id),
                                                        metadata=md)) == content
    assert [x.id for x in stub.ListFiles(dataset_pb2.ListFilesRequest(purpose="evals"), metadata=md).files] == [f.id]
    streamed = stub.UploadFileStream(iter([
        dataset_pb2.UploadFileChunk(filename="s.jsonl", purpose="evals", policy="lenient", data=content[:9]),
        dataset_pb2.UploadFileChunk(data=content[9:] + b"\n")]), metadata=md)
    assert (streamed.example_count, streamed.invalid_lines) == (2, 1)
    assert [(i.line, i.field) for i in streamed.issues] == [(3, "line")]
    for call in (lambda: list(stub.GetFileContent(dataset_pb2.GetFileRequest(file_id=f.id, as_openai_chat=True),
                                                  metadata=md)),
                 lambda: stub.CheckTokens(dataset_pb2.CheckTokensRequest(id=f.id, max_length=100), metadata=md)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "purpose 'evals'" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadFile(dataset_pb2.UploadFileRequest(filename="b.jsonl", purpose="evals", content=b"[1]"),
                        metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 1: line: expected a JSON object" in (err.value.details() or "")
