"""An avatar's own ``store`` setting (None: the tenant's default): set at creation or with
``PATCH /v1/avatars/{name}``, kept in the avatar's history, published as ``model.avatar_updated``
(inference drops its cached resolution), shown over REST and gRPC; and the migration that adds it
going down without touching the avatars' history, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from test_versions import Recorder

from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_registry.grpc import registration
from coachforge_registry.service import RegistryDeps
from coachforge_shared import migrate
from coachforge_shared.auth import Authenticator
from coachforge_shared.db import Database
from coachforge_shared.grpc_server import GrpcServerThread, wait_for_health

BASE = "SmolLM2-135M-Instruct"
ACME, GLOBEX = {"Authorization": "Bearer cf-acme"}, {"Authorization": "Bearer cf-globex"}


def test_store_at_creation_and_patch_with_history(client: TestClient, deps: RegistryDeps) -> None:
    publisher: Recorder = deps.publisher  # type: ignore[assignment]
    r = client.post("/v1/avatars", headers=ACME, json={"name": "coach-anna", "model": BASE, "store": True})
    assert r.status_code == 200, r.text
    assert r.json()["store"] is True
    r = client.post("/v1/avatars", headers=ACME, json={"name": "coach-tom", "model": BASE})
    assert r.json()["store"] is None  # follows the tenant
    r = client.post("/v1/avatars", headers=ACME, json={"name": "coach-x", "model": BASE, "store": "yes"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "store"

    published = len(publisher.events)
    r = client.patch("/v1/avatars/coach-anna", headers=ACME, json={"store": False, "reason": "GDPR review"})
    assert r.status_code == 200, r.text
    assert r.json()["store"] is False and r.json()["active_model"] == BASE
    assert client.get("/v1/avatars/coach-anna", headers=ACME).json()["store"] is False
    assert [t for t, _, _ in publisher.events[published:]] == ["model.avatar_updated"]
    _, message, tenant = publisher.events[-1]
    assert tenant == "acme" and message.avatar == "coach-anna"

    r = client.patch("/v1/avatars/coach-anna", headers=ACME, json={"store": False})  # no change: no history
    assert r.status_code == 200 and len(publisher.events) == published + 1
    r = client.patch("/v1/avatars/coach-anna", headers=ACME, json={})
    assert r.status_code == 200 and r.json()["store"] is False
    r = client.patch("/v1/avatars/coach-anna", headers=ACME, json={"store": None})  # back to the tenant's
    assert r.status_code == 200 and r.json()["store"] is None

    history = client.get("/v1/avatars/coach-anna/history", headers=ACME).json()["data"]
    assert [(c["action"], c["reason"], c["detail"]) for c in history] == [
        ("settings", "", {"store": None, "previous_store": False}),
        ("settings", "GDPR review", {"store": False, "previous_store": True}),
        ("created", "", {"store": True}),
    ]
    assert all(c["to_model"] == BASE for c in history)
    listed = client.get("/v1/avatars", headers=ACME).json()["data"]
    assert {a["name"]: a["store"] for a in listed} == {"coach-anna": None, "coach-tom": None}

    for body, param in (({"store": "no"}, "store"), ({"store": 0}, "store"), ({"fallback": "base"}, "fallback"),
                        ({"store": True, "reason": "x" * 501}, "reason")):
        r = client.patch("/v1/avatars/coach-tom", headers=ACME, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert client.patch("/v1/avatars/coach-anna", headers=GLOBEX, json={"store": True}).status_code == 404
    assert client.patch("/v1/avatars/nobody", headers=ACME, json={"store": True}).status_code == 404
    assert client.patch("/v1/avatars/coach-anna", json={"store": True}).status_code == 401


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


def test_store_over_grpc_is_unset_when_the_avatar_follows_the_tenant(grpc_target: str) -> None:
    acme = (("authorization", "Bearer cf-acme"),)
    with grpc.insecure_channel(grpc_target) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        keeps = stub.CreateAvatar(registry_pb2.CreateAvatarRequest(name="keeps", model=BASE, store=True),
                                  metadata=acme)
        skips = stub.CreateAvatar(registry_pb2.CreateAvatarRequest(name="skips", model=BASE, store=False),
                                  metadata=acme)
        follows = stub.CreateAvatar(registry_pb2.CreateAvatarRequest(name="follows", model=BASE), metadata=acme)
        assert (keeps.HasField("store"), keeps.store) == (True, True)
        assert (skips.HasField("store"), skips.store) == (True, False)
        assert not follows.HasField("store")
        got = stub.GetAvatar(registry_pb2.GetAvatarRequest(name="skips"), metadata=acme)
        assert got.HasField("store") and got.store is False
        assert not stub.GetAvatar(registry_pb2.GetAvatarRequest(name="follows"), metadata=acme).HasField("store")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_store_column_goes_down_without_touching_the_history(backend: str, tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url, "f3b8c4d5e6a7")
    db = Database(url)  # foreign keys on, as the services run
    try:
        with db.engine.begin() as c:
            c.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO avatars (id, tenant_id, name, active_model, fallback, candidate_share, "
                           "pinned, store, created_at, updated_at) VALUES ('a1', 't', 'coach', 'm', 'error', 0, "
                           "false, true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO avatar_changes (avatar_id, action, to_model, actor, reason, detail_json, "
                           "created_at) VALUES ('a1', 'created', 'm', 'me', '', :d, CURRENT_TIMESTAMP)"),
                      {"d": json.dumps({"store": True})})
            c.execute(text("INSERT INTO stored_completion_policies (tenant_id, store_by_default, retention_days, "
                           "scrub_pii, updated_at) VALUES ('t', true, 7, false, CURRENT_TIMESTAMP)"))
    finally:
        db.dispose()
    migrate.downgrade(url, "e2a7b3c4d5f6")
    engine = create_engine(url)
    try:
        assert "store" not in {c["name"] for c in inspect(engine).get_columns("avatars")}
        assert "stored_completion_policies" not in inspect(engine).get_table_names()
        with engine.begin() as c:
            assert c.execute(text("SELECT name FROM avatars")).scalars().all() == ["coach"]
            assert c.execute(text("SELECT action FROM avatar_changes")).scalars().all() == ["created"]
    finally:
        engine.dispose()
    migrate.upgrade(url)
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            assert c.execute(text("SELECT store FROM avatars")).all() == [(None,)]  # back: follows the tenant
    finally:
        engine.dispose()
