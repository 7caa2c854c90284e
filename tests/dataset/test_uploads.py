"""Upload policies and reports, files paging and deletion rules, CheckTokens and synthetic data,
through the service functions and through the real gRPC server (with a stand-in trainer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from coachforge_dataset import grpc as dataset_grpc
from coachforge_dataset import service, versions
from coachforge_dataset.schemas import CreateDatasetVersion
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import Authenticator, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, ServiceRegistration

GOOD = {"messages": [{"role": "user", "content": "How hard should Tuesday's session be?"},
                     {"role": "assistant", "content": "Keep it in zone 2 and stop if your legs feel heavy."}]}


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def bad_file(good: int = 3, bad: int = 30) -> bytes:
    """``good`` valid lines, then ``bad`` invalid ones alternating invalid JSON and an unknown role."""
    lines = [line(GOOD)] * good
    for i in range(bad):
        lines.append(b"{nope" if i % 2 == 0 else line({"messages": [{"role": "bot", "content": "x"}]}))
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def deps(db: Database, tmp_path: Path, base_model_dir: Path) -> DatasetDeps:
    create_tenant(db, "acme")
    create_tenant(db, "globex")
    return DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target="", max_synthetic_examples=50),
                       files_dir=tmp_path / "files", models_dir=base_model_dir.parent)


def report(deps: DatasetDeps, **kw: str) -> dict[str, object]:
    found = service.get_report(deps, kw.pop("tenant", "acme"), **kw)
    body: dict[str, object] = json.loads(b"".join(service.report_json_chunks(found)))
    jsonl = [json.loads(x) for x in service.report_lines(found)]
    assert jsonl[0] == {k: v for k, v in body.items() if k != "issues"} and jsonl[1:] == body["issues"]
    return body


def test_strict_rejects_naming_lines_and_keeps_a_full_report(deps: DatasetDeps) -> None:
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "bad.jsonl", "fine-tune", [bad_file()])
    message = err.value.message
    assert err.value.param == "file" and err.value.code == "invalid_file_format"
    assert "30 invalid line(s) of 33" in message and "line 4: line: invalid JSON" in message
    assert "line 5: messages[0].role: unknown role 'bot'" in message and "(and 10 more)" in message
    assert service.list_files(deps, "acme") == [] and list((deps.files_dir / "acme").iterdir()) == []
    report_id = message.rsplit("/v1/files/reports/", 1)[1]
    body = report(deps, report_id=report_id)
    assert body["status"] == "rejected" and body["file_id"] is None and body["policy"] == "strict"
    assert (body["lines"], body["examples"], body["invalid_lines"], body["issues_total"]) == (33, 3, 30, 30)
    issues = body["issues"]
    assert isinstance(issues, list) and [i["line"] for i in issues] == list(range(4, 34))
    with pytest.raises(NotFound):
        service.get_report(deps, "globex", report_id=report_id)


def test_lenient_drops_and_reports_keeping_line_numbers(deps: DatasetDeps) -> None:
    row = service.store_upload(deps, "acme", "mixed.jsonl", "fine-tune", [bad_file(good=3, bad=25)], policy="lenient")
    assert (row.example_count, row.invalid_lines, row.issues_total, row.policy) == (3, 25, 25, "lenient")
    stored = b"".join(service.read_content(deps, "acme", row.id)).split(b"\n")
    assert stored[:3] == [line(GOOD)] * 3 and set(stored[3:]) == {b""} and len(stored) == 29
    obj = service.to_openai(row)
    details = obj["status_details"]
    assert isinstance(details, str) and details.startswith("25 invalid line(s) dropped under the lenient policy")
    assert "line 4: line: invalid JSON" in details and f"/v1/files/{row.id}/report" in details
    validation = obj["validation"]
    assert isinstance(validation, dict) and len(validation["issues"]) == 20 and validation["issues_total"] == 25
    body = report(deps, file_id=row.id)
    assert body["status"] == "accepted" and body["file_id"] == row.id
    assert isinstance(body["issues"], list) and len(body["issues"]) == 25
    # a lenient file whose every line is bad stores nothing
    with pytest.raises(InvalidArgument, match="no training examples"):
        service.store_upload(deps, "acme", "all-bad.jsonl", "fine-tune", [bad_file(good=0, bad=2)], policy="lenient")


def test_policy_is_checked(deps: DatasetDeps) -> None:
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "a.jsonl", "fine-tune", [line(GOOD)], policy="sloppy")
    assert err.value.param == "policy"


def test_files_page_like_openai(deps: DatasetDeps) -> None:
    ids = [service.store_upload(deps, "acme", f"{i}.jsonl", "fine-tune", [line(GOOD)]).id for i in range(5)]
    newest_first, more = service.page_files(deps, "acme", None, 2, None)
    assert [r.id for r in newest_first] == ids[::-1][:2] and more
    rest, more = service.page_files(deps, "acme", None, 10, newest_first[-1].id)
    assert [r.id for r in rest] == ids[::-1][2:] and not more
    oldest_first, _ = service.page_files(deps, "acme", None, 10, None, "asc")
    assert [r.id for r in oldest_first] == ids
    for bad in ({"limit": 0}, {"after": "file-nope"}):
        with pytest.raises(InvalidArgument) as err:
            service.page_files(deps, "acme", None, bad.get("limit", 10), bad.get("after"))  # type: ignore[arg-type]
        assert err.value.param in bad


def test_delete_refused_while_a_version_uses_the_file(deps: DatasetDeps) -> None:
    lines = [line({"messages": [{"role": "user", "content": f"question {i} about pacing my long run"},
                                {"role": "assistant", "content": f"answer {i}: keep it easy"}]}) for i in range(20)]
    file_id = service.store_upload(deps, "acme", "a.jsonl", "fine-tune", [b"\n".join(lines)]).id
    version = versions.create_version(deps, "acme", CreateDatasetVersion(name="d", files=[file_id]))
    with pytest.raises(FailedPrecondition) as err:
        service.delete_file(deps, "acme", file_id)
    assert version.id in err.value.message and err.value.http_status == 409 and err.value.code == "file_in_use"
    versions.delete_version(deps, "acme", version.id)
    assert not Path(version.train_path).exists()
    report_path = service.get_report(deps, "acme", file_id=file_id).path
    service.delete_file(deps, "acme", file_id)
    assert not Path(report_path).exists()


def test_check_tokens_on_files_and_versions(deps: DatasetDeps) -> None:
    short = line(GOOD)
    long = line({"messages": [{"role": "user", "content": "tell me everything " * 80},
                              {"role": "assistant", "content": "ok"}], "conversation_id": "x"})
    file_id = service.store_upload(deps, "acme", "t.jsonl", "fine-tune", [b"\n".join([short, long, short])]).id
    result = versions.check_tokens(deps, "acme", file_id, 100, "SmolLM2-135M-Instruct")
    assert (result.examples, result.over_limit) == (3, 1) and result.max_tokens > 240
    [issue] = result.issues
    assert issue.line == 2 and issue.field == "messages" and "over max_length 100" in issue.reason
    assert result.message().startswith("1 of 3 examples exceed max_length 100: line 2: messages:")
    fits = versions.check_tokens(deps, "acme", file_id, 10_000, "SmolLM2-135M-Instruct")
    assert fits.over_limit == 0 and fits.message() == "" and fits.total_tokens == result.total_tokens
    version = versions.create_version(deps, "acme", CreateDatasetVersion(name="t", files=[file_id],
                                                                         validation_fraction=0.0))
    on_version = versions.check_tokens(deps, "acme", version.id, 100, "")
    assert on_version.over_limit == 1 and on_version.issues[0].field == "train.messages"
    with pytest.raises(InvalidArgument) as err:
        versions.check_tokens(deps, "acme", file_id, 0, "SmolLM2-135M-Instruct")
    assert err.value.param == "max_length"
    with pytest.raises(NotFound):
        versions.check_tokens(deps, "globex", file_id, 100, "SmolLM2-135M-Instruct")


def test_synthetic_data_is_a_validated_file(deps: DatasetDeps) -> None:
    row = service.generate_synthetic(deps, "acme", 8, 3)
    assert row.example_count == 8 and row.filename == "synthetic-coach-8-3.jsonl" and row.policy == "strict"
    assert b"".join(service.read_content(deps, "acme", row.id)).decode() == service.synthetic_jsonl(8, 3)
    for count in (0, 51):
        with pytest.raises(InvalidArgument) as err:
            service.generate_synthetic(deps, "acme", count, 1)
        assert err.value.param == "count"


class FakeTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    """Answers ListJobs from a fixed list, three jobs a page."""

    def __init__(self) -> None:
        self.jobs: list[trainer_pb2.Job] = []

    def ListJobs(self, request: trainer_pb2.ListJobsRequest,
                 context: grpc.ServicerContext) -> trainer_pb2.ListJobsResponse:
        start = next((i + 1 for i, j in enumerate(self.jobs) if j.id == request.after), 0)
        page = self.jobs[start:start + 3]
        return trainer_pb2.ListJobsResponse(jobs=page, has_more=start + 3 < len(self.jobs))


@pytest.fixture
def rpc(deps: DatasetDeps, db: Database) -> Iterator[tuple[dataset_pb2_grpc.DatasetServiceStub, InternalChannel,
                                                            FakeTrainer]]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "internal-test-token"
    trainer = FakeTrainer()
    server = GrpcServerThread([
        dataset_grpc.registration(deps),
        ServiceRegistration(trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name, trainer,
                            trainer_pb2_grpc.add_TrainerServiceServicer_to_server),
    ], Authenticator(db, token), f"127.0.0.1:{port}").start()
    channel = InternalChannel(f"127.0.0.1:{port}", token)
    deps.trainer = InternalChannel(f"127.0.0.1:{port}", token)
    try:
        yield dataset_pb2_grpc.DatasetServiceStub(channel.channel), channel, trainer
    finally:
        channel.close()
        deps.trainer.close()
        server.stop()


def test_grpc_uploads_reports_tokens_and_delete_rules(rpc: tuple[dataset_pb2_grpc.DatasetServiceStub,
                                                                 InternalChannel, FakeTrainer]) -> None:
    stub, channel, trainer = rpc
    md = channel.metadata("acme")
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadFile(dataset_pb2.UploadFileRequest(filename="b.jsonl", content=bad_file(1, 2)), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 2: line: invalid JSON" in (err.value.details() or "")
    report_id = (err.value.details() or "").rsplit("/v1/files/reports/", 1)[1]
    text = b"".join(c.data for c in stub.GetFileReport(dataset_pb2.GetFileReportRequest(report_id=report_id),
                                                       metadata=md))
    assert [json.loads(x)["line"] for x in text.splitlines()[1:]] == [2, 3]

    chunks = [dataset_pb2.UploadFileChunk(filename="s.jsonl", policy="lenient", data=bad_file(2, 1)[:10])]
    rest = bad_file(2, 1)[10:]
    chunks += [dataset_pb2.UploadFileChunk(data=rest[i:i + 7]) for i in range(0, len(rest), 7)]
    f = stub.UploadFileStream(iter(chunks), metadata=md)
    assert (f.example_count, f.invalid_lines, f.policy) == (2, 1, "lenient")
    assert [(i.line, i.field) for i in f.issues] == [(3, "line")] and "1 invalid line(s) dropped" in f.status_details

    checked = stub.CheckTokens(dataset_pb2.CheckTokensRequest(id=f.id, max_length=5), metadata=md)
    assert checked.examples == 2 and checked.over_limit == 2 and checked.issues[0].line == 1
    assert "2 of 2 examples exceed max_length 5" in checked.message

    trainer.jobs = [trainer_pb2.Job(id=f"ftjob-{i}", status=trainer_pb2.JOB_STATUS_SUCCEEDED, training_file=f.id)
                    for i in range(4)]
    trainer.jobs.append(trainer_pb2.Job(id="ftjob-live", status=trainer_pb2.JOB_STATUS_RUNNING,
                                        training_file="file-other", validation_file=f.id))
    with pytest.raises(grpc.RpcError) as err:
        stub.DeleteFile(dataset_pb2.GetFileRequest(file_id=f.id), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "ftjob-live" in (err.value.details() or "")
    trainer.jobs.pop()
    assert stub.DeleteFile(dataset_pb2.GetFileRequest(file_id=f.id), metadata=md).deleted

    synthetic = stub.GenerateSyntheticData(dataset_pb2.GenerateSyntheticDataRequest(count=4, seed=2), metadata=md)
    assert synthetic.example_count == 4
    with pytest.raises(grpc.RpcError) as err:
        stub.GenerateSyntheticData(dataset_pb2.GenerateSyntheticDataRequest(count=0), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_uploads_read_transcripts_with_the_named_assistant(
        rpc: tuple[dataset_pb2_grpc.DatasetServiceStub, InternalChannel, FakeTrainer]) -> None:
    stub, channel, _ = rpc
    md = channel.metadata("acme")
    transcript = b"Anna: Is 10 km too much today?\nBen: Keep it to 8 km, easy.\n"
    f = stub.UploadFile(dataset_pb2.UploadFileRequest(filename="chat.txt", content=transcript,
                                                      assistant_speaker="Ben"), metadata=md)
    assert f.example_count == 1
    content = b"".join(c.data for c in stub.GetFileContent(dataset_pb2.GetFileRequest(file_id=f.id), metadata=md))
    assert json.loads(content)["messages"][1] == {"role": "assistant", "content": "Keep it to 8 km, easy."}
    streamed = stub.UploadFileStream(iter([
        dataset_pb2.UploadFileChunk(filename="chat.txt", assistant_speaker="Ben", data=transcript[:9]),
        dataset_pb2.UploadFileChunk(data=transcript[9:])]), metadata=md)
    assert streamed.example_count == 1 and streamed.sha256 == f.sha256
    for assistant, words in (("Carl", "'Carl' is not among the speakers"),
                             ("Anna", "no user message followed by an assistant answer")):
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadFile(dataset_pb2.UploadFileRequest(filename="chat.txt", content=transcript,
                                                          assistant_speaker=assistant), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in (err.value.details() or "")


def test_delete_is_refused_when_the_trainer_cannot_be_asked(deps: DatasetDeps) -> None:
    row = service.store_upload(deps, "acme", "a.jsonl", "fine-tune", [line(GOOD)])
    deps.trainer = InternalChannel("127.0.0.1:1", "token")
    try:
        with pytest.raises(Unavailable):
            service.delete_file(deps, "acme", row.id)
    finally:
        deps.trainer.close()
    assert service.get_file(deps, "acme", row.id).id == row.id
