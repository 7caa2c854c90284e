"""A persona's ``knowledge`` setting in the registry (REST on a real SQLite database): strict
validation naming the field with nothing written, its defaults filled in and kept with the version,
carried to inference in GetAvatar's ``persona_json``; the knowledge base checked with the real
dataset service over gRPC when the registry has a channel to it (another tenant's is refused, a
dataset service that does not answer is a 503 and nothing is written), its form only otherwise."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coachforge_dataset.knowledge import grpc as knowledge_grpc
from coachforge_dataset.knowledge import service as knowledge_service
from coachforge_dataset.knowledge.schemas import CreateKnowledgeBase
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_registry import service
from coachforge_registry.knowledge import KnowledgeBaseCheck
from coachforge_registry.service import RegistryDeps
from coachforge_shared.auth import Authenticator
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, wait_for_health

ACME = {"Authorization": "Bearer cf-acme"}
KB = "kb-0123456789abcdef01234567"

BAD: list[tuple[Any, str]] = [
    ({"knowledge_base": "notes"}, "knowledge.knowledge_base"),
    ({"knowledge_base": "kb-"}, "knowledge.knowledge_base"),
    ({"knowledge_base": 7}, "knowledge.knowledge_base"),
    ({"top_k": 4}, "knowledge.knowledge_base"),
    ({"knowledge_base": KB, "top_k": 0}, "knowledge.top_k"),
    ({"knowledge_base": KB, "top_k": 51}, "knowledge.top_k"),
    ({"knowledge_base": KB, "top_k": "4"}, "knowledge.top_k"),
    ({"knowledge_base": KB, "max_tokens": 0}, "knowledge.max_tokens"),
    ({"knowledge_base": KB, "max_tokens": 8001}, "knowledge.max_tokens"),
    ({"knowledge_base": KB, "query_turns": 0}, "knowledge.query_turns"),
    ({"knowledge_base": KB, "query_turns": 1.5}, "knowledge.query_turns"),
    ({"knowledge_base": KB, "rerank": True}, "knowledge.rerank"),
    ("kb-1", "knowledge"),
]


@pytest.fixture
def client(client: TestClient) -> TestClient:
    """The registry's REST router (tests/registry/conftest.py) with acme's avatar coach-anna."""
    assert client.post("/v1/avatars", headers=ACME, json={"name": "coach-anna", "model": "SmolLM2-135M-Instruct"}
                       ).status_code == 200
    return client


@pytest.fixture
def dataset(deps: RegistryDeps, tmp_path: Path) -> Iterator[DatasetDeps]:
    """The dataset service's KnowledgeService on a gRPC server of its own (same database), and the
    registry asking it about knowledge bases."""
    dataset_deps = DatasetDeps(db=deps.db, settings=DatasetSettings(trainer_grpc_target=""),
                               files_dir=tmp_path / "files", models_dir=tmp_path / "models")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = GrpcServerThread([knowledge_grpc.registration(dataset_deps)], Authenticator(deps.db, "internal"),
                              f"127.0.0.1:{port}", max_workers=2).start()
    wait_for_health(f"127.0.0.1:{port}")
    channel = InternalChannel(f"127.0.0.1:{port}", "internal")
    deps.knowledge_bases = KnowledgeBaseCheck(channel)
    yield dataset_deps
    channel.close()
    server.stop()


def _versions(client: TestClient) -> list[int]:
    return [v["version"] for v in client.get("/v1/avatars/coach-anna/persona/versions", headers=ACME).json()["data"]]


def test_bad_knowledge_is_refused_naming_the_field_and_nothing_is_written(client: TestClient,
                                                                          deps: RegistryDeps) -> None:
    published = len(deps.publisher.events)  # type: ignore[union-attr]
    for knowledge, param in BAD:
        r = client.put("/v1/avatars/coach-anna/persona", headers=ACME, json={"knowledge": knowledge})
        assert r.status_code == 400, (knowledge, r.text)
        assert r.json()["error"]["param"] == param, (knowledge, r.json())
        with pytest.raises(Exception) as err:  # over gRPC's JSON: the same field
            service.parse_persona(json.dumps({"knowledge": knowledge}))
        assert getattr(err.value, "param", None) == param, (knowledge, err.value)
    assert _versions(client) == []
    assert len(deps.publisher.events) == published  # type: ignore[union-attr]


def test_knowledge_is_kept_with_its_defaults_and_reaches_inference(client: TestClient, deps: RegistryDeps) -> None:
    # no dataset channel: only the id's form is checked
    r = client.put("/v1/avatars/coach-anna/persona", headers=ACME,
                   json={"system_prompt": "Coach.", "knowledge": {"knowledge_base": KB, "max_tokens": 300}})
    assert r.status_code == 200, r.text
    expected = {"knowledge_base": KB, "top_k": 4, "max_tokens": 300, "query_turns": 1}
    assert r.json()["knowledge"] == expected
    assert client.get("/v1/avatars/coach-anna/persona", headers=ACME).json()["knowledge"] == expected
    _, persona, _ = service.avatar_with_personas(deps, "acme", "coach-anna")
    assert json.loads(service.applied_persona_json(persona))["knowledge"] == expected

    # a persona without knowledge carries none (and inference's settings are as they always were)
    r = client.put("/v1/avatars/coach-anna/persona", headers=ACME, json={"system_prompt": "Coach."})
    assert r.status_code == 200 and "knowledge" not in r.json()
    _, persona, _ = service.avatar_with_personas(deps, "acme", "coach-anna")
    assert json.loads(service.applied_persona_json(persona)) == {
        "system_prompt": "Coach.", "system_mode": "prepend", "sampling": {}, "few_shot": [], "response_format": None}
    # a rollback restores the knowledge as it was
    r = client.post("/v1/avatars/coach-anna/persona/rollback", headers=ACME, json={})
    assert r.status_code == 200 and r.json()["knowledge"] == expected


def test_the_knowledge_base_must_be_the_tenants(client: TestClient, deps: RegistryDeps,
                                                dataset: DatasetDeps) -> None:
    mine = knowledge_service.create_knowledge_base(dataset, "acme", CreateKnowledgeBase(name="notes")).id
    theirs = knowledge_service.create_knowledge_base(dataset, "globex", CreateKnowledgeBase(name="notes")).id
    published = len(deps.publisher.events)  # type: ignore[union-attr]
    for kb in (theirs, KB):
        r = client.put("/v1/avatars/coach-anna/persona", headers=ACME, json={"knowledge": {"knowledge_base": kb}})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["param"], error["code"]) == ("knowledge.knowledge_base", "knowledge_base_not_found")
    r = client.put("/v1/avatars/nobody/persona", headers=ACME, json={"knowledge": {"knowledge_base": mine}})
    assert r.status_code == 404
    assert _versions(client) == [] and len(deps.publisher.events) == published  # type: ignore[union-attr]

    r = client.put("/v1/avatars/coach-anna/persona", headers=ACME, json={"knowledge": {"knowledge_base": mine}})
    assert r.status_code == 200 and r.json()["knowledge"]["knowledge_base"] == mine

    # the dataset service does not answer: 503, nothing written
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    channel = InternalChannel(f"127.0.0.1:{dead}", "internal")
    deps.knowledge_bases = KnowledgeBaseCheck(channel, timeout_s=1)
    try:
        r = client.put("/v1/avatars/coach-anna/persona", headers=ACME, json={"knowledge": {"knowledge_base": mine}})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["param"] == "knowledge.knowledge_base"
        assert _versions(client) == [1]
    finally:
        channel.close()
