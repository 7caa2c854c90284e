"""Gold dataset versions without the stack: a version built from stored chat completions read from the
real inference servicer over gRPC (shared interceptor, SQLite), through the usual pipeline; its
lineage, its export, and the 400s naming ``stored_completions``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from coachforge.inference.v1 import inference_pb2
from coachforge_dataset import service, versions
from coachforge_dataset.schemas import CreateDatasetVersion
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_inference import grpc as inference_grpc
from coachforge_inference import repository, stored
from coachforge_inference.models import StoredCompletion
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.auth import Authenticator, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.events import EventConsumer, encode
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel

TOKEN = "internal"


def store(db: Database, completion_id: str, question: str, answer: str, created: int) -> None:
    msg = inference_pb2.CompletionStored(
        id=completion_id, created=created, model="base", requested_model="base", metadata_json="{}",
        messages_json=json.dumps([{"role": "system", "content": "You are a running coach."},
                                  {"role": "user", "content": question}]),
        params_json="{}", choices_json=json.dumps([{"index": 0, "message": {"role": "assistant", "content": answer},
                                                    "finish_reason": "stop"}]))
    consumer = EventConsumer.__new__(EventConsumer)  # handle() needs no broker connection
    consumer.group, consumer.handler, consumer.db = "t", stored.on_completion_stored, db
    assert consumer.handle(encode("completion.stored", msg, "acme").SerializeToString())[0] == "handled"


def rate(db: Database, completion_id: str, rater: str, **values: object) -> None:
    with db.session() as s:
        row = s.get(StoredCompletion, completion_id)
        assert row is not None
        repository.upsert_feedback(s, row, rater, values)
    time.sleep(0.01)


@pytest.fixture
def deps(db: Database, tmp_path: Path, base_model_dir: Path) -> Iterator[DatasetDeps]:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    for i in range(12):
        store(db, f"chatcmpl-{i}", f"How should I pace interval {i} of today's session?",
              f"Hold zone {i % 5 + 1} for interval {i} and stay relaxed.", created=1_700_000_000 + i)
    rate(db, "chatcmpl-3", "maria", rating=5, gold=True, correction="Skip interval 3: your TSB is too low today.")
    rate(db, "chatcmpl-5", "maria", rating=1, comment="wrong zone")
    rate(db, "chatcmpl-7", "maria", rating=4)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inference = InferenceDeps(settings=InferenceSettings(), registry=InternalChannel("127.0.0.1:9", TOKEN), db=db,
                              engines=EnginePool(["http://127.0.0.1:9"], timeout_s=1, health_interval_s=0))
    server = GrpcServerThread([inference_grpc.registration(inference)], Authenticator(db, internal_token=TOKEN),
                              f"127.0.0.1:{port}", max_workers=4).start()
    channel = InternalChannel(f"127.0.0.1:{port}", TOKEN)
    try:
        yield DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target=""), files_dir=tmp_path / "files",
                          models_dir=base_model_dir.parent, inference=channel)
    finally:
        channel.close()
        server.stop()


def build(deps: DatasetDeps, **body: object) -> versions.DatasetVersion:
    return versions.create_version(deps, "acme", CreateDatasetVersion.model_validate({"name": "gold", **body}))


def test_a_gold_version_holds_the_corrected_answer(deps: DatasetDeps) -> None:
    row = build(deps, stored_completions={"gold": True}, validation_fraction=0.0)
    assert (row.train_examples, row.validation_examples) == (1, 0)
    lineage = json.loads(row.lineage_json)
    assert lineage["stored_completions"]["completion_ids"] == ["chatcmpl-3"]
    assert lineage["stored_completions"]["filter"] == {"gold": True, "limit": 10000}
    assert lineage["stored_completions"]["corrected"] == 1 and lineage["counts"]["train"] == 1
    exported = [json.loads(line) for line in versions.export(deps, "acme", row.id, "openai", "train")]
    assert exported[0]["messages"][-1] == {"role": "assistant",
                                           "content": "Skip interval 3: your TSB is too low today."}
    assert exported[0]["messages"][1]["content"] == "How should I pace interval 3 of today's session?"
    # The same data and settings give the same version.
    assert build(deps, stored_completions={"gold": True}, validation_fraction=0.0).id == row.id


def test_every_stored_completion_goes_through_the_pipeline(deps: DatasetDeps) -> None:
    row = build(deps, stored_completions={}, validation_fraction=0.25, seed=1)
    lineage = json.loads(row.lineage_json)
    assert lineage["stored_completions"]["count"] == 12
    assert row.train_examples + row.validation_examples + lineage["counts"].get("near_duplicates", 0) \
        + lineage["counts"].get("exact_duplicates", 0) <= 12 and row.validation_examples > 0
    rated = build(deps, stored_completions={"min_rating": 4}, validation_fraction=0.0)
    assert json.loads(rated.lineage_json)["stored_completions"]["completion_ids"] == ["chatcmpl-3", "chatcmpl-7"]
    limited = build(deps, stored_completions={"limit": 2}, validation_fraction=0.0)
    assert json.loads(limited.lineage_json)["stored_completions"]["completion_ids"] == ["chatcmpl-0", "chatcmpl-1"]


def test_files_and_stored_completions_together(deps: DatasetDeps) -> None:
    line = json.dumps({"messages": [{"role": "user", "content": "What is a tempo run in my plan?"},
                                    {"role": "assistant", "content": "A sustained effort at threshold pace."}]})
    file_id = service.store_upload(deps, "acme", "a.jsonl", "fine-tune", [line.encode() + b"\n"]).id
    row = build(deps, files=[file_id], stored_completions={"gold": True}, validation_fraction=0.0)
    assert row.train_examples == 2
    lineage = json.loads(row.lineage_json)
    assert [s["id"] for s in lineage["sources"]] == [file_id]
    assert lineage["stored_completions"]["completion_ids"] == ["chatcmpl-3"]


def test_refusals_name_stored_completions(deps: DatasetDeps) -> None:
    with pytest.raises(InvalidArgument) as err:
        build(deps, stored_completions={"min_rating": 5, "model": "nobody"})
    assert err.value.param == "stored_completions" and "No stored chat completions match" in err.value.message
    with pytest.raises(InvalidArgument) as err:  # another tenant's gold completions are not the caller's
        versions.create_version(deps, "globex", CreateDatasetVersion(name="g", stored_completions={"gold": True}))
    assert err.value.param == "stored_completions"
    deps.inference = None
    with pytest.raises(InvalidArgument) as err:
        build(deps, stored_completions={"gold": True})
    assert err.value.param == "stored_completions" and "inference" in err.value.message
    with pytest.raises(ValidationError):
        CreateDatasetVersion.model_validate({"name": "x"})
    with pytest.raises(ValidationError):
        CreateDatasetVersion.model_validate({"name": "x", "stored_completions": {"min_rating": 6}})
