"""External models in the registry: a job whose remote offers no download of its adapter
(``job.succeeded`` with an empty ``adapter_uri`` and a ``remote_model``) is registered as a version
without an artifact that names the remote model and base URL; it is listed, got (REST and the
registry's gRPC answer), activated for an avatar and deleted like any fine-tuned model, without the
engines' checks; its export is refused; events that would make it point anywhere odd are refused;
and the migration adds and drops its two nullable columns on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.trainer.v1 import trainer_pb2
from coachforge_registry import service
from coachforge_registry.service import RegistryDeps
from coachforge_shared import migrate
from coachforge_shared.events import InvalidEvent

BASE = "SmolLM2-135M-Instruct"
REMOTE_URL = "https://api.openai.example/v1"
REMOTE_MODEL = "ft:gpt-4o-mini-2024-07-18:acme-org:coach:AbC123"
ACME = {"Authorization": "Bearer cf-acme"}
GLOBEX = {"Authorization": "Bearer cf-globex"}


def _succeeded(deps: RegistryDeps, job_id: str, *, base: str = BASE, tenant: str = "acme",
               remote_base_url: str = REMOTE_URL, remote_model: str = REMOTE_MODEL) -> str:
    name = f"ft:{base}:{tenant}:coach:{job_id[-6:]}"
    event = trainer_pb2.JobSucceeded(
        job_id=job_id, base_model=base, fine_tuned_model=name, adapter_uri="", trained_tokens=1234, final_loss=0.25,
        training_file="file-1", backend="openai_compatible", n_epochs=2, steps=6, remote_job_id="ftjob-remote7",
        remote_model=remote_model, remote_base_url=remote_base_url)
    with deps.db.session() as s:
        service.on_job_succeeded(deps, s, Envelope(event_id=f"evt-{job_id}", tenant_id=tenant), event)
    return name


def test_a_job_without_an_adapter_registers_an_external_model(deps: RegistryDeps, client: TestClient) -> None:
    deps.job_artifacts_dir = Path("/nonexistent/artifacts")  # checked for adapters, not for external models
    model = _succeeded(deps, "ftjob-ext001")
    _succeeded(deps, "ftjob-ext001")  # replayed: nothing new
    m = service.get_model(deps, "acme", model)
    assert (m.external_model, m.external_base_url, m.base_model, m.version, m.status, m.source) == (
        REMOTE_MODEL, REMOTE_URL, BASE, 1, "candidate", "job")
    assert (m.adapter_uri, m.artifact_uri, list(m.files), m.size_bytes, m.artifact_sha256, m.lora_rank) == (
        "", "", [], 0, "", 0)
    assert m.adapter_name  # the version's id, as for every fine-tuned model
    assert json.loads(m.lineage_json)["remote"] == {"job_id": "ftjob-remote7", "model": REMOTE_MODEL,
                                                    "base_url": REMOTE_URL}
    registered = deps.publisher.of("model.registered")  # type: ignore[union-attr]
    assert [r.model.id for r in registered] == [model]
    assert registered[0].model.external_model == REMOTE_MODEL

    # REST: OpenAI's model object with CoachForge's facts, "external" saying where it is served.
    shown = client.get(f"/v1/models/{model}", headers=ACME).json()
    assert (shown["id"], shown["object"], shown["owned_by"]) == (model, "model", "acme")
    assert shown["external"] == {"model": REMOTE_MODEL, "base_url": REMOTE_URL}
    assert (shown["files"], shown["size_bytes"], shown["lora_rank"]) == ([], 0, 0)
    listed = {m["id"]: m for m in client.get("/v1/models", headers=ACME).json()["data"]}
    assert listed[model]["external"] == shown["external"] and "external" not in listed[BASE]
    assert client.get(f"/v1/models/{model}", headers=GLOBEX).status_code == 404  # acme's only


def test_an_adapter_version_shows_no_external(deps: RegistryDeps, client: TestClient, tmp_path: Path) -> None:
    from test_versions import job_done, write_adapter

    model = job_done(deps, "acme", "ftjob-adp001", "coach", write_adapter(tmp_path / "a1"))
    assert service.get_model(deps, "acme", model).external_model == ""
    assert client.get(f"/v1/models/{model}", headers=ACME).json()["external"] is None


def test_an_avatar_answers_with_an_external_model_without_the_engines_checks(deps: RegistryDeps,
                                                                             client: TestClient) -> None:
    # Its base model is not one the engines serve, and it has no rank or target modules: the remote serves it.
    model = _succeeded(deps, "ftjob-ext002", base="gpt-4o-mini-2024-07-18")
    r = client.post("/v1/avatars", headers=ACME, json={"name": "coach-remote", "model": BASE})
    assert r.status_code == 200, r.text
    r = client.post("/v1/avatars/coach-remote/activate", headers=ACME, json={"model": model, "reason": "remote"})
    assert r.status_code == 200, r.text
    resolved = service.get_model(deps, "acme", "coach-remote")
    assert (resolved.id, resolved.external_model, resolved.fallback) == (model, REMOTE_MODEL, "error")
    assert service.get_model(deps, "acme", model).status == "active"
    r = client.post("/v1/avatars/coach-remote/candidate", headers=ACME,
                    json={"model": _succeeded(deps, "ftjob-ext003"), "traffic_share": 20})
    assert r.status_code == 200, r.text

    # In use: not deleted; once the avatar points elsewhere, deleted like any version.
    assert client.delete(f"/v1/models/{model}", headers=ACME).json()["error"]["code"] == "model_in_use"
    assert client.post("/v1/avatars/coach-remote/activate", headers=ACME, json={"model": BASE}).status_code == 200
    assert client.post("/v1/avatars/coach-remote/candidate", headers=ACME, json={"model": None}).status_code == 200
    assert client.delete(f"/v1/models/{model}", headers=ACME).json() == {"id": model, "object": "model",
                                                                         "deleted": True}
    assert client.get(f"/v1/models/{model}", headers=ACME).status_code == 404
    deleted = deps.publisher.of("model.deleted")  # type: ignore[union-attr]
    assert [d.model_id for d in deleted] == [model]


def test_an_external_model_has_no_adapter_to_export(deps: RegistryDeps, client: TestClient) -> None:
    model = _succeeded(deps, "ftjob-ext004")
    for fmt in ("adapter", "merged", "gguf"):
        r = client.post(f"/v1/models/{model}/exports", headers=ACME, json={"format": fmt})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "model",
                                                                  "model_not_exportable")
        assert "external model" in error["message"] and "no adapter" in error["message"]
    assert client.get(f"/v1/models/{model}/exports", headers=ACME).json()["data"] == []


@pytest.mark.parametrize(("remote_base_url", "remote_model"), [
    ("", REMOTE_MODEL), ("ftp://api.openai.example/v1", REMOTE_MODEL),
    ("https://user:secret@api.openai.example/v1", REMOTE_MODEL), ("https:///v1", REMOTE_MODEL),
    (REMOTE_URL, "ft:gpt 4o\nmini"), (REMOTE_URL, "x" * 301)])
def test_an_external_model_must_name_a_plain_remote(deps: RegistryDeps, remote_base_url: str,
                                                    remote_model: str) -> None:
    with pytest.raises(InvalidEvent):
        _succeeded(deps, "ftjob-bad001", remote_base_url=remote_base_url, remote_model=remote_model)
    assert [m.id for m in service.list_models(deps, "acme")] == [BASE]


def test_an_event_with_neither_adapter_nor_remote_model_is_still_refused(deps: RegistryDeps,
                                                                         tmp_path: Path) -> None:
    deps.job_artifacts_dir = tmp_path / "artifacts"
    with pytest.raises(InvalidEvent) as err:
        _succeeded(deps, "ftjob-bad002", remote_model="")
    assert "names no adapter" in str(err.value)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_adds_and_drops_the_external_columns(backend: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")

    def columns() -> dict[str, bool]:
        engine = create_engine(url)
        try:
            return {c["name"]: c["nullable"] for c in inspect(engine).get_columns("model_versions")}
        finally:
            engine.dispose()

    migrate.upgrade(url, "d0e1f2a3b4c5")
    assert "external_model" not in columns() and "external_base_url" not in columns()
    migrate.upgrade(url, "e1f2a3b4c5d6")
    found = columns()
    assert found["external_model"] is True and found["external_base_url"] is True
    migrate.downgrade(url, "d0e1f2a3b4c5")
    assert "external_model" not in columns() and "external_base_url" not in columns()
    assert "artifact_uri" in columns()
