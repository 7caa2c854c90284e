"""Dataset versions built from uploaded files: content addressing, lineage, policies, exports."""

from __future__ import annotations

import json
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from coachforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from coachforge_dataset import service, versions
from coachforge_dataset.pipeline import parse_line
from coachforge_dataset.schemas import CreateDatasetVersion
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from coachforge_shared.grpc_server import InternalChannel


def chat(user: str, answer: str, conv: str | None = None) -> bytes:
    obj: dict[str, object] = {"messages": [{"role": "user", "content": user},
                                           {"role": "assistant", "content": answer}]}
    if conv:
        obj["conversation_id"] = conv
    return json.dumps(obj).encode()


def sharegpt(user: str, answer: str) -> bytes:
    return json.dumps({"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]}).encode()


@pytest.fixture
def deps(db: Database, tmp_path: Path, base_model_dir: Path) -> DatasetDeps:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    return DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target=""), files_dir=tmp_path / "files",
                       models_dir=base_model_dir.parent)


def upload(deps: DatasetDeps, name: str, lines: list[bytes], tenant: str = "acme") -> str:
    return service.store_upload(deps, tenant, name, "fine-tune", [b"\n".join(lines) + b"\n"]).id


def sample_files(deps: DatasetDeps) -> list[str]:
    first = [chat(f"How do I pace interval {i} of my session today?", f"Hold zone {i % 5 + 1} and stay relaxed.",
                  conv=f"c{i // 2}") for i in range(20)]
    first.append(first[0])  # an exact duplicate
    second = [sharegpt(f"Is a rest day after race {i} a good idea for me?", f"Yes, rest after race {i}.")
              for i in range(10)]
    return [upload(deps, "a.jsonl", first), upload(deps, "b.jsonl", second)]


def test_version_is_content_addressed_with_lineage(deps: DatasetDeps) -> None:
    files = sample_files(deps)
    req = CreateDatasetVersion(name="coach", files=files, validation_fraction=0.2, seed=3)
    v = versions.create_version(deps, "acme", req)
    lineage = json.loads(v.lineage_json)
    assert [s["id"] for s in lineage["sources"]] == files
    assert lineage["counts"]["exact_duplicates"] == 1
    assert v.train_examples + v.validation_examples == 30
    assert v.validation_examples > 0
    stats = json.loads(v.stats_json)
    assert stats["examples"] == 30 and stats["tokens_total"] > 0
    assert stats["format_mix"] == {"openai": 20, "sharegpt": 10}
    again = versions.create_version(deps, "acme", req)
    assert again.id == v.id and again.sha256 == v.sha256
    other_seed = versions.create_version(deps, "acme", req.model_copy(update={"seed": 4}))
    assert other_seed.sha256 != v.sha256
    assert {r.id for r in versions.list_versions(deps, "acme", "coach")} == {v.id, other_seed.id}
    with pytest.raises(NotFound):
        versions.get_version(deps, "globex", v.id)
    with pytest.raises(InvalidArgument):
        versions.create_version(deps, "globex", req)  # the files are acme's


def test_conversations_never_straddle_the_split(deps: DatasetDeps) -> None:
    v = versions.create_version(deps, "acme", CreateDatasetVersion(name="c", files=sample_files(deps),
                                                                   validation_fraction=0.3, seed=1))
    def convs(path: str) -> set[str]:
        return {json.loads(line).get("conversation_id") for line in Path(path).read_text().splitlines()} - {None}
    assert not convs(v.train_path) & convs(v.validation_path)


@pytest.mark.parametrize("fmt", ["openai", "chatml", "alpaca"])
def test_exports_reimport_to_the_same_examples(deps: DatasetDeps, fmt: str) -> None:
    v = versions.create_version(deps, "acme", CreateDatasetVersion(name="x", files=sample_files(deps)))
    stored = [parse_line(i, raw.encode(), "openai")[0] for i, raw in
              enumerate(Path(v.train_path).read_text().splitlines(), 1)]
    exported = list(versions.export(deps, "acme", v.id, fmt, "train"))
    back = [parse_line(i, raw.encode(), fmt)[0] for i, raw in enumerate(exported, 1)]
    assert [e.messages if e else None for e in back] == [e.messages if e else None for e in stored]
    with pytest.raises(InvalidArgument):
        list(versions.export(deps, "acme", v.id, "csv", "train"))


def test_strict_policy_rejects_and_lenient_reports(deps: DatasetDeps) -> None:
    good = [chat(f"question number {i} about my long ride", f"answer number {i}") for i in range(5)]
    # store_upload refuses invalid lines, so write a bad line into a stored file's content directly.
    file_id = upload(deps, "c.jsonl", good)
    row = service.get_file(deps, "acme", file_id)
    Path(row.storage_path).write_bytes(b"\n".join([*good, b'{"messages": [{"role": "user", "content": "x"}]}']))
    with pytest.raises(InvalidArgument) as err:
        versions.create_version(deps, "acme", CreateDatasetVersion(name="s", files=[file_id], policy="strict"))
    assert "line 6: messages: no assistant turn" in err.value.message
    v = versions.create_version(deps, "acme", CreateDatasetVersion(name="s", files=[file_id], policy="lenient"))
    report = json.loads(v.report_json)
    assert report["issues_total"] == 1 and report["issues"][0]["line"] == 6
    assert v.train_examples + v.validation_examples == 5


def test_result_files_are_stored_as_is_and_never_become_training_data(deps: DatasetDeps) -> None:
    csv = b"step,train_loss\n1,2.0\n"
    row = service.store_result_file(deps, "acme", "ftjob-1-metrics.csv", csv)
    assert (row.purpose, row.bytes, row.example_count) == ("fine-tune-results", len(csv), 0)
    assert b"".join(service.read_content(deps, "acme", row.id)) == csv
    with pytest.raises(InvalidArgument) as err:
        versions.create_version(deps, "acme", CreateDatasetVersion(name="x", files=[row.id]))
    assert err.value.param == "files"


class _Trainer(trainer_pb2_grpc.TrainerServiceServicer):
    """A trainer answering ListJobs with fixed jobs (the dataset service asks it before deleting)."""

    def __init__(self) -> None:
        self.jobs: list[trainer_pb2.Job] = []

    def ListJobs(self, request: trainer_pb2.ListJobsRequest,
                 context: grpc.ServicerContext) -> trainer_pb2.ListJobsResponse:
        return trainer_pb2.ListJobsResponse(jobs=self.jobs, has_more=False)


def test_delete_refused_while_an_unfinished_job_uses_the_version(deps: DatasetDeps) -> None:
    v = versions.create_version(deps, "acme", CreateDatasetVersion(name="c", files=sample_files(deps),
                                                                   validation_fraction=0.2, seed=1))
    trainer = _Trainer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(trainer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    deps.trainer = InternalChannel(f"127.0.0.1:{port}", "token")
    try:
        for field in ("training_file", "validation_file"):  # training on it, or validating on its split
            files = {"training_file": "file-other", field: v.id}
            trainer.jobs = [trainer_pb2.Job(id="ftjob-live", status=trainer_pb2.JOB_STATUS_RUNNING, **files)]
            with pytest.raises(FailedPrecondition) as err:
                versions.delete_version(deps, "acme", v.id)
            assert err.value.http_status == 409 and err.value.code == "dataset_version_in_use"
            assert err.value.param == "dataset_version_id" and "ftjob-live" in err.value.message
        assert Path(v.train_path).exists()
        trainer.jobs = [trainer_pb2.Job(id="ftjob-done", status=trainer_pb2.JOB_STATUS_SUCCEEDED,
                                        training_file=v.id, validation_file=v.id)]
        versions.delete_version(deps, "acme", v.id)
        assert not Path(v.train_path).exists()
    finally:
        deps.trainer.close()
        server.stop(None)


def test_token_check_of_one_split(deps: DatasetDeps) -> None:
    v = versions.create_version(deps, "acme", CreateDatasetVersion(name="c", files=sample_files(deps),
                                                                   validation_fraction=0.2, seed=1))
    both = versions.check_tokens(deps, "acme", v.id, 10_000, "")
    train = versions.check_tokens(deps, "acme", v.id, 10_000, "", split="train")
    valid = versions.check_tokens(deps, "acme", v.id, 10_000, "", split="validation")
    assert (train.examples, valid.examples) == (v.train_examples, v.validation_examples)
    assert train.total_tokens + valid.total_tokens == both.total_tokens
    with pytest.raises(InvalidArgument):
        versions.check_tokens(deps, "acme", v.id, 10_000, "", split="test")
