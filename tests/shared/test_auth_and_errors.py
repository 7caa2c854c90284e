"""Authentication and the two error mappings (FastAPI handler, gRPC interceptor), over real
HTTP (TestClient) and a real gRPC server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from coachforge.coach.v1 import coach_pb2, coach_pb2_grpc
from coachforge_coach.grpc import registration as coach_registration
from coachforge_coach.service import CoachDeps
from coachforge_coach.settings import CoachSettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant, current_principal, read_or_create_secret
from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, NotFound, Unauthenticated
from coachforge_shared.grpc_server import GrpcServerThread, ServiceRegistration, wait_for_health
from coachforge_shared.http import CurrentPrincipal, install_error_handlers


@pytest.fixture
def auth(db: Database) -> Authenticator:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    add_api_key(db, "acme", "cf-acme-key")
    add_api_key(db, "globex", "cf-globex-key")
    return Authenticator(db, internal_token="internal-secret")


def test_keys_resolve_to_their_tenant_and_are_stored_hashed(auth: Authenticator) -> None:
    assert auth.authenticate("Bearer cf-acme-key", None, None).tenant_id == "acme"
    assert auth.authenticate("Bearer cf-globex-key", None, None).tenant_id == "globex"
    with pytest.raises(Unauthenticated):
        auth.authenticate("Bearer cf-nope", None, None)
    with pytest.raises(Unauthenticated):
        auth.authenticate(None, None, None)
    with auth.db.engine.connect() as conn:
        stored = [row[0] for row in conn.exec_driver_sql("SELECT key_hash FROM api_keys")]
    assert "cf-acme-key" not in stored and all(len(h) == 64 for h in stored)


def test_internal_token_acts_for_the_named_tenant(auth: Authenticator) -> None:
    p = auth.authenticate(None, "internal-secret", "globex")
    assert p.tenant_id == "globex" and p.internal
    with pytest.raises(Unauthenticated):
        auth.authenticate(None, "wrong", "globex")
    with pytest.raises(Unauthenticated):
        auth.authenticate(None, "internal-secret", None)


def test_generated_secret_is_kept(tmp_path: Path) -> None:
    first, created = read_or_create_secret(tmp_path / "api-key", None)
    again, created_again = read_or_create_secret(tmp_path / "api-key", None)
    assert created and not created_again and first == again
    assert (tmp_path / "api-key").stat().st_mode & 0o777 == 0o600
    assert read_or_create_secret(tmp_path / "other", "given") == ("given", False)


class Body(BaseModel):
    n_epochs: int = Field(ge=1)


def _app(auth: Authenticator) -> FastAPI:
    app = FastAPI()
    app.state.authenticator = auth
    install_error_handlers(app)

    @app.get("/things/{thing_id}")
    def get_thing(principal: CurrentPrincipal, thing_id: str) -> dict[str, str]:
        if thing_id != "mine":
            raise NotFound(f"No thing {thing_id} for {principal.tenant_id}", param="thing_id", code="not_found")
        return {"tenant": principal.tenant_id}

    @app.post("/things")
    def create(principal: CurrentPrincipal, body: Body) -> dict[str, int]:
        raise Conflict("exists", param="n_epochs")

    @app.get("/crash")
    def crash(principal: CurrentPrincipal) -> None:
        raise RuntimeError("secret detail")

    return app


def test_http_errors_are_openai_shaped(auth: Authenticator) -> None:
    client = TestClient(_app(auth), raise_server_exceptions=False)
    key = {"Authorization": "Bearer cf-acme-key"}
    assert client.get("/things/mine", headers=key).json() == {"tenant": "acme"}
    r = client.get("/things/mine")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = client.get("/things/other", headers=key)
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "No thing other for acme", "type": "invalid_request_error",
                                  "param": "thing_id", "code": "not_found"}}
    r = client.post("/things", headers=key, json={"n_epochs": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n_epochs"
    assert client.post("/things", headers=key, json={"n_epochs": 2}).status_code == 409
    r = client.get("/crash", headers=key)
    assert r.status_code == 500 and "secret" not in r.text


@pytest.fixture
def grpc_target(auth: Authenticator, tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deps = CoachDeps(db=auth.db, settings=CoachSettings(), models_dir=tmp_path / "models")
    server = GrpcServerThread([coach_registration(deps)], auth, f"127.0.0.1:{port}", max_workers=4).start()
    target = f"127.0.0.1:{port}"
    wait_for_health(target)
    yield target
    server.stop()


class AsyncCoach(coach_pb2_grpc.CoachServiceServicer):
    """A servicer with ``async def`` methods (as inference's): it runs on the server's event loop."""

    async def GetModificationSchema(self, request: Any, context: Any) -> coach_pb2.ModificationSchema:
        tenant = current_principal().tenant_id
        if tenant == "globex":
            raise NotFound("no schema for globex", param="version")
        return coach_pb2.ModificationSchema(schema_json=json.dumps({"tenant": tenant}))

    async def ValidateModification(self, request: Any, context: Any) -> Any:
        raise RuntimeError("secret detail")


@pytest.fixture
def async_grpc_target(auth: Authenticator) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registration = ServiceRegistration("coachforge.coach.v1.CoachService", AsyncCoach(),
                                       coach_pb2_grpc.add_CoachServiceServicer_to_server)
    server = GrpcServerThread([registration], auth, f"127.0.0.1:{port}", max_workers=4).start()
    target = f"127.0.0.1:{port}"
    wait_for_health(target)
    yield target
    server.stop()


def test_async_servicers_are_authenticated_and_their_errors_mapped(async_grpc_target: str) -> None:
    with grpc.insecure_channel(async_grpc_target) as channel:
        stub = coach_pb2_grpc.CoachServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModificationSchema(coach_pb2.GetModificationSchemaRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        doc = stub.GetModificationSchema(coach_pb2.GetModificationSchemaRequest(),
                                         metadata=(("authorization", "Bearer cf-acme-key"),))
        assert json.loads(doc.schema_json) == {"tenant": "acme"}  # the caller, seen inside the async method
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModificationSchema(coach_pb2.GetModificationSchemaRequest(),
                                       metadata=(("authorization", "Bearer cf-globex-key"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details() == "no schema for globex"
        assert dict(err.value.trailing_metadata())["x-error-param"] == "version"
        with pytest.raises(grpc.RpcError) as err:
            stub.ValidateModification(coach_pb2.ValidateModificationRequest(modification_json="{}"),
                                      metadata=(("authorization", "Bearer cf-acme-key"),))
        assert err.value.code() == grpc.StatusCode.INTERNAL and "secret" not in (err.value.details() or "")


def test_grpc_calls_are_authenticated(grpc_target: str) -> None:
    with grpc.insecure_channel(grpc_target) as channel:
        stub = coach_pb2_grpc.CoachServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModificationSchema(coach_pb2.GetModificationSchemaRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModificationSchema(coach_pb2.GetModificationSchemaRequest(),
                                       metadata=(("authorization", "Bearer cf-wrong"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        doc = stub.GetModificationSchema(coach_pb2.GetModificationSchemaRequest(),
                                         metadata=(("authorization", "Bearer cf-acme-key"),))
        assert json.loads(doc.schema_json)["type"] == "object"
        verdict = stub.ValidateModification(coach_pb2.ValidateModificationRequest(modification_json="{}"),
                                            metadata=(("authorization", "Bearer cf-acme-key"),))
        assert not verdict.valid and verdict.error
