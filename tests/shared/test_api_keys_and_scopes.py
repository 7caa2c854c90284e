"""Tenants, API keys and scopes, tried as an attacker would: a read key that writes, a tenant's
admin key that reaches for another tenant, a revoked key used again at once, the internal token
presented on the public REST port, header bytes that are not a key, a short configured key."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from coachforge.coach.v1 import coach_pb2, coach_pb2_grpc
from coachforge_coach.grpc import registration as coach_registration
from coachforge_coach.service import CoachDeps
from coachforge_coach.settings import CoachSettings
from coachforge_shared import admin, auth
from coachforge_shared.auth import (
    INTERNAL_HEADER,
    KEY_PREFIX,
    READ,
    TENANT_HEADER,
    Authenticator,
    add_api_key,
    create_api_key,
    create_tenant,
    grpc_scope,
    hash_key,
)
from coachforge_shared.db import Database
from coachforge_shared.errors import Unauthenticated
from coachforge_shared.grpc_server import GrpcServerThread, wait_for_health
from coachforge_shared.http import CurrentPrincipal, install_error_handlers, needs_scope
from coachforge_shared.models import ApiKey
from coachforge_shared.settings import PlatformSettings

INTERNAL = "internal-token-0123456789abcdef0123456789"


@pytest.fixture
def authenticator(db: Database) -> Authenticator:
    for tenant in ("default", "acme", "globex"):
        create_tenant(db, tenant)
    return Authenticator(db, INTERNAL)


def _key(db: Database, tenant: str, scopes: str) -> str:
    return create_api_key(db, tenant, name=f"{tenant} {scopes}", scopes=scopes)[1]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(authenticator: Authenticator) -> TestClient:
    """An app like a composed one: the admin API and a service router with a read, a write and a
    chat-like (POST, read scope) operation."""
    app = FastAPI()
    app.state.authenticator = authenticator
    app.state.admin = admin.AdminDeps(db=authenticator.db, authenticator=authenticator, operator_tenant="default")
    install_error_handlers(app)
    router = APIRouter(prefix="/v1")

    @router.get("/things")
    def things(principal: CurrentPrincipal) -> dict[str, str]:
        return {"tenant": principal.tenant_id}

    @router.post("/things")
    def create(principal: CurrentPrincipal) -> dict[str, str]:
        return {"created_for": principal.tenant_id}

    @router.post("/chat/completions", openapi_extra=needs_scope(READ))
    def chat(principal: CurrentPrincipal) -> dict[str, str]:
        return {"answered": principal.tenant_id}

    app.include_router(admin.router)
    app.include_router(router)
    return TestClient(app, raise_server_exceptions=False)


def test_generated_keys_are_long_prefixed_random_and_stored_hashed(db: Database, authenticator: Authenticator) -> None:
    created, key = create_api_key(db, "acme", name="ci", scopes="read")
    again = create_api_key(db, "acme", scopes="read")[1]
    assert key.startswith(KEY_PREFIX) and len(key) - len(KEY_PREFIX) >= 43  # 32 random bytes, base64url
    assert key != again
    assert created["prefix"] == key[:10] and created["scopes"] == ["read"] and "key" not in created
    with db.session() as s:
        stored = s.get(ApiKey, created["id"])
        assert stored is not None and stored.key_hash == hash_key(key) and key not in stored.key_hash
    assert all(key not in str(row) for row in auth.list_api_keys(db, "acme"))  # shown once, never listed
    principal = authenticator.authenticate(f"Bearer {key}", None, None)
    assert principal.tenant_id == "acme" and principal.scopes == {"read"}
    assert auth.list_api_keys(db, "acme")[0]["last_used_at"] is not None


def test_keys_stored_before_scopes_keep_every_scope(db: Database, authenticator: Authenticator) -> None:
    add_api_key(db, "acme", "cf-an-old-key-from-before-scopes")
    assert authenticator.authenticate("Bearer cf-an-old-key-from-before-scopes", None, None).scopes == {
        "read", "write", "admin"}


@pytest.mark.parametrize("scopes", ["", "read,root", "READ", "write, superuser"])
def test_unknown_scopes_are_refused(db: Database, authenticator: Authenticator, scopes: str) -> None:
    with pytest.raises(Exception) as err:
        create_api_key(db, "acme", scopes=scopes)
    assert getattr(err.value, "param", None) == "scopes"


def test_a_read_key_reads_and_chats_but_cannot_write(db: Database, client: TestClient) -> None:
    read = _bearer(_key(db, "acme", "read"))
    assert client.get("/v1/things", headers=read).json() == {"tenant": "acme"}
    assert client.post("/v1/chat/completions", headers=read).json() == {"answered": "acme"}
    r = client.post("/v1/things", headers=read)
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["type"] == "permission_error" and error["code"] == "missing_scope"
    assert "'write' scope" in error["message"]
    write = _bearer(_key(db, "acme", "write"))
    assert client.post("/v1/things", headers=write).json() == {"created_for": "acme"}
    r = client.get("/v1/things", headers=write)  # write does not imply read
    assert r.status_code == 403 and "'read' scope" in r.json()["error"]["message"]


def test_only_admin_keys_manage_keys(db: Database, client: TestClient) -> None:
    for scopes in ("read", "read,write"):
        headers = _bearer(_key(db, "acme", scopes))
        for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/key-x"),
                             ("GET", "/v1/tenants"), ("POST", "/v1/tenants")):
            r = client.request(method, path, headers=headers, json={"id": "evil"} if method == "POST" else None)
            assert r.status_code == 403 and "'admin' scope" in r.json()["error"]["message"], (scopes, method, path)


def test_a_tenant_admin_cannot_reach_other_tenants(db: Database, client: TestClient) -> None:
    acme_admin = _bearer(_key(db, "acme", "read,write,admin"))
    globex_key = create_api_key(db, "globex", scopes="read")[0]
    r = client.post("/v1/keys", headers=acme_admin, json={"tenant": "globex", "scopes": ["admin"]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_operator"
    assert client.get("/v1/keys", headers=acme_admin, params={"tenant": "globex"}).status_code == 403
    assert client.get("/v1/tenants", headers=acme_admin).status_code == 403
    assert client.post("/v1/tenants", headers=acme_admin, json={"id": "mine"}).status_code == 403
    r = client.delete(f"/v1/keys/{globex_key['id']}", headers=acme_admin)  # another tenant's key: not found
    assert r.status_code == 404 and r.json()["error"]["param"] == "key_id"
    # Its own tenant's keys it manages.
    made = client.post("/v1/keys", headers=acme_admin, json={"name": "bot", "scopes": ["read"]}).json()
    assert made["tenant"] == "acme" and made["scopes"] == ["read"] and made["key"].startswith(KEY_PREFIX)
    listed = client.get("/v1/keys", headers=acme_admin).json()["data"]
    assert {k["tenant"] for k in listed} == {"acme"} and made["id"] in {k["id"] for k in listed}
    assert all("key" not in k for k in listed)


def test_the_operator_manages_tenants_and_their_keys(db: Database, client: TestClient) -> None:
    operator = _bearer(_key(db, "default", "admin"))
    r = client.post("/v1/tenants", headers=operator, json={"id": "initech", "name": "Initech"})
    assert r.status_code == 200 and r.json()["id"] == "initech"
    assert client.post("/v1/tenants", headers=operator, json={"id": "initech"}).status_code == 409
    for bad in ("Initech", "a:b", "../x", "x" * 64, ""):
        r = client.post("/v1/tenants", headers=operator, json={"id": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "id", bad
    assert "initech" in {t["id"] for t in client.get("/v1/tenants", headers=operator).json()["data"]}
    made = client.post("/v1/keys", headers=operator, json={"tenant": "initech"}).json()
    assert made["tenant"] == "initech" and made["scopes"] == ["read", "write"]
    assert client.get("/v1/things", headers=_bearer(made["key"])).json() == {"tenant": "initech"}
    r = client.post("/v1/keys", headers=operator, json={"tenant": "nobody"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "tenant"
    r = client.post("/v1/keys", headers=operator, json={"tenant": "initech", "scopes": ["root"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "scopes"


def test_a_revoked_key_stops_working_at_once(db: Database, client: TestClient) -> None:
    acme_admin = _bearer(_key(db, "acme", "read,admin"))
    made = client.post("/v1/keys", headers=acme_admin, json={"scopes": ["read"]}).json()
    victim = _bearer(made["key"])
    assert client.get("/v1/things", headers=victim).status_code == 200  # now cached for key_cache_s
    revoked = client.delete(f"/v1/keys/{made['id']}", headers=acme_admin).json()
    assert revoked["revoked_at"] is not None
    r = client.get("/v1/things", headers=victim)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # Revoking again changes nothing; the admin key still works.
    assert client.delete(f"/v1/keys/{made['id']}", headers=acme_admin).json()["revoked_at"] == revoked["revoked_at"]


def test_the_internal_token_is_ignored_on_the_rest_port(client: TestClient) -> None:
    r = client.get("/v1/things", headers={INTERNAL_HEADER: INTERNAL, TENANT_HEADER: "globex"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = client.post("/v1/keys", headers={INTERNAL_HEADER: INTERNAL, TENANT_HEADER: "default"}, json={})
    assert r.status_code == 401


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe\xfd", "Bearer cl\u00e9".encode("latin-1"), b"Bearer a\tb",
                                   b"Bearer " + b"k" * 5000, b"Basic Zm9vOmJhcg==", b"\xc3\xa9"])
def test_bad_authorization_bytes_are_401(client: TestClient, value: bytes) -> None:
    r = client.get("/v1/things", headers={"Authorization": value})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("value", [b"\xff\xfe", "t\u00f6ken".encode("latin-1"), b"x" * 5000])
def test_bad_internal_token_bytes_are_401_not_500(client: TestClient, authenticator: Authenticator,
                                                  value: bytes) -> None:
    r = client.get("/v1/things", headers={INTERNAL_HEADER: value, TENANT_HEADER: "acme"})
    assert r.status_code == 401
    with pytest.raises(Unauthenticated):  # as the gRPC listener sees it
        authenticator.authenticate(None, value.decode("latin-1"), "acme")
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(None, INTERNAL, "ac\u00e9me")


def test_a_short_configured_api_key_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        PlatformSettings(data_dir=tmp_path, api_key="cf-test-" + "0" * 16)
    assert "COACHFORGE_API_KEY must be at least 32" in str(err.value)
    with pytest.raises(ValidationError):
        PlatformSettings(data_dir=tmp_path, api_key="x" * 31 + " ")
    assert PlatformSettings(data_dir=tmp_path, api_key="cf-test-" + "0" * 32).api_key


def test_grpc_method_scopes() -> None:
    reads = ["GetFile", "ListJobs", "CreateChatCompletion", "StreamChatCompletion", "CreateCompletion",
             "ValidateModification", "Recommend", "ExportDatasetVersion", "CheckTokens", "Search"]
    writes = ["UploadFile", "UploadFileStream", "CreateJob", "CancelJob", "ActivateModel", "DeleteModel",
              "ApplyModification", "UndoChange", "UpsertAthlete", "RecordFeedback", "CreateEval",
              "GenerateSyntheticData", "ImportData", "PinVersion", "CreateChatCompletionX"]
    assert {m: grpc_scope(f"/coachforge.x.v1.S/{m}") for m in reads} == dict.fromkeys(reads, "read")
    assert {m: grpc_scope(f"/coachforge.x.v1.S/{m}") for m in writes} == dict.fromkeys(writes, "write")


@pytest.fixture
def grpc_target(authenticator: Authenticator, tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deps = CoachDeps(db=authenticator.db, settings=CoachSettings(), models_dir=tmp_path / "models")
    server = GrpcServerThread([coach_registration(deps)], authenticator, f"127.0.0.1:{port}", max_workers=4).start()
    target = f"127.0.0.1:{port}"
    wait_for_health(target)
    yield target
    server.stop()


def test_grpc_enforces_scopes_for_keys_and_accepts_the_internal_token(db: Database, grpc_target: str) -> None:
    read = (("authorization", f"Bearer {_key(db, 'acme', 'read')}"),)
    with grpc.insecure_channel(grpc_target) as channel:
        stub = coach_pb2_grpc.CoachServiceStub(channel)
        assert stub.GetModificationSchema(coach_pb2.GetModificationSchemaRequest(), metadata=read).schema_json
        athlete = coach_pb2.Athlete(external_id="ath-1", name="Ann", sport="run")
        with pytest.raises(grpc.RpcError) as err:
            stub.UpsertAthlete(athlete, metadata=read)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'write' scope" in (err.value.details() or "")
        write = (("authorization", f"Bearer {_key(db, 'acme', 'read,write')}"),)
        assert stub.UpsertAthlete(athlete, metadata=write).external_id == "ath-1"
        internal = ((INTERNAL_HEADER, INTERNAL), (TENANT_HEADER, "acme"))
        assert stub.UpsertAthlete(athlete, metadata=internal).external_id == "ath-1"
        with pytest.raises(grpc.RpcError) as err:
            stub.UpsertAthlete(athlete, metadata=((INTERNAL_HEADER, "wrong"), (TENANT_HEADER, "acme")))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
