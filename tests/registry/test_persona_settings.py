"""An avatar's persona in the registry (REST and gRPC on a real SQLite database, the events written
to the outbox): strict validation naming the field with nothing written, versions with who/when/why
in the avatar's history, rollback, the avatar's one ``store`` setting, a candidate that is another
persona version, GetAvatar carrying what inference applies; and the migration up and down on
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge.trainer.v1 import trainer_pb2
from coachforge_registry import service
from coachforge_registry.grpc import registration
from coachforge_registry.service import RegistryDeps
from coachforge_shared import migrate
from coachforge_shared.auth import Authenticator
from coachforge_shared.db import Database
from coachforge_shared.grpc_server import GrpcServerThread, wait_for_health

BASE = "SmolLM2-135M-Instruct"
ACME, GLOBEX = {"Authorization": "Bearer cf-acme"}, {"Authorization": "Bearer cf-globex"}
PERSONA: dict[str, Any] = {
    "system_prompt": "You are Coach Anna, talking to {metadata.athlete}.",
    "system_mode": "prepend",
    "sampling": {"temperature": 0.4, "max_tokens": 64, "stop": ["###"]},
    "few_shot": [{"role": "user", "content": "Run today?"}, {"role": "assistant", "content": "Easy 30 min."}],
    "response_format": {"type": "json_schema",
                        "json_schema": {"name": "plan", "schema": {"type": "object"}, "strict": True}},
}


@pytest.fixture
def client(client: TestClient) -> TestClient:
    """The registry's REST router (tests/registry/conftest.py) with acme's avatar coach-anna."""
    assert client.post("/v1/avatars", headers=ACME, json={"name": "coach-anna", "model": BASE}).status_code == 200
    return client


BAD: list[tuple[dict[str, Any], str]] = [
    ({"sampling": {"temperature": 2.5}}, "sampling.temperature"),
    ({"sampling": {"temperature": "0.5"}}, "sampling.temperature"),
    ({"sampling": {"top_p": 1.5}}, "sampling.top_p"),
    ({"sampling": {"max_tokens": 0}}, "sampling.max_tokens"),
    ({"sampling": {"max_tokens": True}}, "sampling.max_tokens"),
    ({"sampling": {"stop": ["a", "b", "c", "d", "e"]}}, "sampling.stop"),
    ({"sampling": {"frequency_penalty": -2.1}}, "sampling.frequency_penalty"),
    ({"sampling": {"presence_penalty": 3}}, "sampling.presence_penalty"),
    ({"sampling": {"seed": 1}}, "sampling.seed"),
    ({"few_shot": [{"role": "user", "content": "hi"}]}, "few_shot"),
    ({"few_shot": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}, "few_shot"),
    ({"few_shot": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "few_shot"),
    ({"few_shot": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 11}, "few_shot"),
    ({"few_shot": [{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}]}, "few_shot.0.role"),
    ({"system_prompt": "x" * 8001}, "system_prompt"),
    ({"system_mode": "append"}, "system_mode"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "has space"}}},
     "response_format.json_schema.name"),
    ({"store": "yes"}, "store"),
    ({"voice": "calm"}, "voice"),
]


def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(client: TestClient,
                                                                      deps: RegistryDeps) -> None:
    published = len(deps.publisher.events)  # type: ignore[union-attr]
    for body, param in BAD:
        r = client.put("/v1/avatars/coach-anna/persona", headers=ACME, json=body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", (body, error)
    assert client.get("/v1/avatars/coach-anna/persona", headers=ACME).status_code == 404
    assert client.get("/v1/avatars/coach-anna/persona/versions", headers=ACME).json()["data"] == []
    assert [c["action"] for c in client.get("/v1/avatars/coach-anna/history", headers=ACME).json()["data"]] == [
        "created"]
    assert len(deps.publisher.events) == published  # type: ignore[union-attr]
    # over gRPC's JSON the same checks name the same fields
    for body, param in BAD:
        with pytest.raises(Exception) as err:
            service.parse_persona(json.dumps(body))
        assert getattr(err.value, "param", None) == param, (body, err.value)
    for text_, param in (("[1]", "settings_json"), ("{", "settings_json")):
        with pytest.raises(Exception) as err:
            service.parse_persona(text_)
        assert getattr(err.value, "param", None) == param


def test_versions_history_and_rollback(client: TestClient, deps: RegistryDeps) -> None:
    r = client.put("/v1/avatars/coach-anna/persona", headers=ACME, json={**PERSONA, "reason": "launch"})
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["object"], first["version"], first["active"], first["reason"]) == (
        "avatar.persona", 1, True, "launch")
    assert first["actor"].startswith("api-key:")
    assert first["sampling"] == PERSONA["sampling"] and first["few_shot"] == PERSONA["few_shot"]
    assert first["response_format"] == PERSONA["response_format"]
    assert first["store"] is None  # the avatar's (follows the tenant)

    r = client.put("/v1/avatars/coach-anna/persona", headers=ACME,
                   json={"system_prompt": "Be terse.", "system_mode": "replace", "sampling": {"max_tokens": 8},
                         "store": True, "reason": "shorter"})
    assert r.status_code == 200 and r.json()["version"] == 2
    got = client.get("/v1/avatars/coach-anna/persona", headers=ACME).json()
    assert (got["version"], got["system_prompt"], got["system_mode"], got["store"]) == (2, "Be terse.", "replace",
                                                                                      True)
    assert got["few_shot"] == [] and got["response_format"] is None and got["sampling"] == {"max_tokens": 8}
    avatar = client.get("/v1/avatars/coach-anna", headers=ACME).json()
    assert (avatar["persona_version"], avatar["store"]) == (2, True)  # one store setting

    # PATCH changes the same setting: the persona shows it
    assert client.patch("/v1/avatars/coach-anna", headers=ACME, json={"store": False}).status_code == 200
    assert client.get("/v1/avatars/coach-anna/persona", headers=ACME).json()["store"] is False

    r = client.post("/v1/avatars/coach-anna/persona/rollback", headers=ACME, json={"reason": "too terse"})
    assert r.status_code == 200, r.text
    back = r.json()
    assert (back["version"], back["system_prompt"], back["sampling"]) == (3, PERSONA["system_prompt"],
                                                                          PERSONA["sampling"])
    assert back["store"] is False  # version 1 did not set store: unchanged
    r = client.post("/v1/avatars/coach-anna/persona/rollback", headers=ACME, json={"version": 2})
    assert r.status_code == 200 and r.json()["version"] == 4 and r.json()["system_prompt"] == "Be terse."
    assert r.json()["store"] is True  # version 2 set it

    versions = client.get("/v1/avatars/coach-anna/persona/versions", headers=ACME).json()["data"]
    assert [(v["version"], v["active"], v["reason"]) for v in versions] == [
        (4, True, ""), (3, False, "too terse"), (2, False, "shorter"), (1, False, "launch")]
    history = client.get("/v1/avatars/coach-anna/history", headers=ACME).json()["data"]
    assert [(c["action"], c["detail"].get("version"), c["detail"].get("previous_version"),
             c["detail"].get("restored_version")) for c in history if c["action"].startswith("persona")] == [
        ("persona_rollback", 4, 3, 2), ("persona_rollback", 3, 2, 1), ("persona_set", 2, 1, None),
        ("persona_set", 1, None, None)]
    assert all(c["to_model"] == BASE and c["actor"].startswith("api-key:") for c in history)
    assert history[0]["detail"]["store"] is True and history[0]["detail"]["previous_store"] is False
    events = deps.publisher.of("model.avatar_updated")  # type: ignore[union-attr]
    assert len(events) >= 5 and all(e.avatar == "coach-anna" for e in events)

    for body, status, param in (({"version": 4}, 400, "version"), ({"version": 9}, 400, "version"),
                                ({"version": 0}, 400, "version"), ({"version": 1, "x": 1}, 400, "x")):
        r = client.post("/v1/avatars/coach-anna/persona/rollback", headers=ACME, json=body)
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), (body, r.text)
    assert client.get("/v1/avatars/coach-anna/persona", headers=ACME).json()["version"] == 4

    # tenant-scoped; an avatar without a persona has nothing to roll back
    assert client.get("/v1/avatars/coach-anna/persona", headers=GLOBEX).status_code == 404
    assert client.put("/v1/avatars/nobody/persona", headers=ACME, json={}).status_code == 404
    client.post("/v1/avatars", headers=ACME, json={"name": "plain", "model": BASE})
    r = client.post("/v1/avatars/plain/persona/rollback", headers=ACME)
    assert r.status_code == 404 and r.json()["error"]["code"] == "persona_not_found"
    client.put("/v1/avatars/plain/persona", headers=ACME, json={})
    r = client.post("/v1/avatars/plain/persona/rollback", headers=ACME)
    assert r.status_code == 409 and r.json()["error"]["param"] == "version"


def _register(deps: RegistryDeps, model_id: str) -> None:
    event = trainer_pb2.JobSucceeded(job_id="ftjob-p1", base_model=BASE, fine_tuned_model=model_id,
                                     adapter_uri="/adapters/ftjob-p1", lora_rank=8, target_modules=["q_proj"])
    with deps.db.session() as s:
        service.on_job_succeeded(deps, s, Envelope(event_id="evt-p1", tenant_id="acme"), event)


def test_a_candidate_can_be_another_persona_version(client: TestClient, deps: RegistryDeps) -> None:
    for prompt in ("one", "two"):
        assert client.put("/v1/avatars/coach-anna/persona", headers=ACME,
                          json={"system_prompt": prompt}).status_code == 200
    r = client.post("/v1/avatars/coach-anna/candidate", headers=ACME,
                    json={"candidate_persona_version": 1, "traffic_share": 30, "reason": "A/B prompts"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert (a["candidate_model"], a["candidate_share"], a["candidate_persona_version"], a["persona_version"]) == (
        None, 30, 1, 2)
    change = client.get("/v1/avatars/coach-anna/history", headers=ACME).json()["data"][0]
    assert change["action"] == "candidate_set" and change["detail"]["candidate_persona_version"] == 1

    for body, param in (({"candidate_persona_version": 7, "traffic_share": 5}, "candidate_persona_version"),
                        ({"candidate_persona_version": 2, "traffic_share": 5}, "candidate_persona_version"),
                        ({"candidate_persona_version": "1"}, "candidate_persona_version"),
                        ({"traffic_share": 5}, "traffic_share")):
        r = client.post("/v1/avatars/coach-anna/candidate", headers=ACME, json=body)
        assert (r.status_code, r.json()["error"]["param"]) == (400, param), (body, r.text)

    model = f"ft:{BASE}:acme:coach:p1"
    _register(deps, model)
    r = client.post("/v1/avatars/coach-anna/candidate", headers=ACME,
                    json={"model": model, "candidate_persona_version": 1, "traffic_share": 10})
    assert r.status_code == 200 and (r.json()["candidate_model"], r.json()["candidate_persona_version"]) == (model, 1)
    r = client.post("/v1/avatars/coach-anna/candidate", headers=ACME, json={"model": model, "traffic_share": 10})
    assert r.json()["candidate_persona_version"] is None  # the candidate model with the active persona
    r = client.post("/v1/avatars/coach-anna/candidate", headers=ACME,
                    json={"model": model, "candidate_persona_version": 1, "traffic_share": 10})
    r = client.post("/v1/avatars/coach-anna/activate", headers=ACME, json={"model": model})
    assert r.status_code == 200, r.text
    a = r.json()  # the candidate became active: its candidate persona is over too
    assert (a["candidate_model"], a["candidate_share"], a["candidate_persona_version"]) == (None, 0, None)
    r = client.post("/v1/avatars/coach-anna/candidate", headers=ACME,
                    json={"candidate_persona_version": 1, "traffic_share": 50})
    r = client.post("/v1/avatars/coach-anna/candidate", headers=ACME, json={"model": None})
    assert (r.json()["candidate_share"], r.json()["candidate_persona_version"]) == (0, None)


@pytest.fixture
def grpc_target(deps: RegistryDeps) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = Authenticator(deps.db, internal_token="internal")
    server = GrpcServerThread([registration(deps)], auth, f"127.0.0.1:{port}", max_workers=2).start()
    target = f"127.0.0.1:{port}"
    wait_for_health(target)
    yield target
    server.stop()


def test_personas_over_grpc_and_what_get_avatar_gives_inference(client: TestClient, grpc_target: str) -> None:
    acme = (("authorization", "Bearer cf-acme"),)
    with grpc.insecure_channel(grpc_target) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        got = stub.GetAvatar(registry_pb2.GetAvatarRequest(name="coach-anna"), metadata=acme)
        assert (got.persona_version, got.persona_json, got.candidate_persona_json) == (0, "", "")
        with pytest.raises(grpc.RpcError) as err:
            stub.GetPersona(registry_pb2.GetPersonaRequest(avatar="coach-anna"), metadata=acme)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.SetPersona(registry_pb2.SetPersonaRequest(
                avatar="coach-anna", settings_json=json.dumps({"sampling": {"top_p": 2}})), metadata=acme)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sampling.top_p" in err.value.details()

        one = stub.SetPersona(registry_pb2.SetPersonaRequest(
            avatar="coach-anna", settings_json=json.dumps({**PERSONA, "store": False}), reason="grpc"), metadata=acme)
        assert (one.version, one.reason, one.active) == (1, "grpc", True)
        assert json.loads(one.settings_json)["store"] is False
        two = stub.SetPersona(registry_pb2.SetPersonaRequest(
            avatar="coach-anna", settings_json=json.dumps({"system_prompt": "two"})), metadata=acme)
        assert two.version == 2
        listed = stub.ListPersonaVersions(registry_pb2.ListPersonaVersionsRequest(avatar="coach-anna"), metadata=acme)
        assert [(v.version, v.active) for v in listed.versions] == [(2, True), (1, False)]

        stub.SetCandidate(registry_pb2.SetCandidateRequest(avatar="coach-anna", traffic_share=100,
                                                           candidate_persona_version=1), metadata=acme)
        got = stub.GetAvatar(registry_pb2.GetAvatarRequest(name="coach-anna"), metadata=acme)
        assert (got.persona_version, got.candidate_persona_version, got.candidate_model, got.candidate_share) == (
            2, 1, "", 100)
        assert json.loads(got.persona_json) == {"system_prompt": "two", "system_mode": "prepend", "sampling": {},
                                                "few_shot": [], "response_format": None}
        assert json.loads(got.candidate_persona_json) == PERSONA  # what inference applies: no store
        assert got.HasField("store") and got.store is False

        back = stub.RollbackPersona(registry_pb2.RollbackPersonaRequest(avatar="coach-anna", reason="undo"),
                                    metadata=acme)
        assert back.version == 3 and json.loads(back.settings_json)["system_prompt"] == PERSONA["system_prompt"]
        assert stub.GetPersona(registry_pb2.GetPersonaRequest(avatar="coach-anna"), metadata=acme).version == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_persona_migration_goes_down_without_touching_the_avatars(backend: str, tmp_path: Path,
                                                                      request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url)
    db = Database(url)  # foreign keys on, as the services run
    try:
        with db.engine.begin() as c:
            c.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO avatars (id, tenant_id, name, active_model, fallback, candidate_share, "
                           "pinned, store, persona_version, candidate_persona_version, created_at, updated_at) "
                           "VALUES ('a1', 't', 'coach', 'm', 'error', 0, false, true, 1, NULL, CURRENT_TIMESTAMP, "
                           "CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO avatar_changes (avatar_id, action, to_model, actor, reason, detail_json, "
                           "created_at) VALUES ('a1', 'persona_set', 'm', 'me', '', '{}', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO avatar_personas (avatar_id, version, settings_json, actor, reason, "
                           "created_at) VALUES ('a1', 1, '{}', 'me', '', CURRENT_TIMESTAMP)"))
    finally:
        db.dispose()
    migrate.downgrade(url, "b2d3e4f5a6c7")
    engine = create_engine(url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("avatars")}
        assert not {"persona_version", "candidate_persona_version"} & columns and "store" in columns
        assert "avatar_personas" not in inspect(engine).get_table_names()
        with engine.begin() as c:
            assert c.execute(text("SELECT name, store FROM avatars")).all() == [("coach", True)]
            assert c.execute(text("SELECT action FROM avatar_changes")).scalars().all() == ["persona_set"]
    finally:
        engine.dispose()
    migrate.upgrade(url)
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            assert c.execute(text("SELECT persona_version FROM avatars")).all() == [(None,)]
    finally:
        engine.dispose()
