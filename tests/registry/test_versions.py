"""Registry versions: numbering per line, checksummed artifacts in the fsspec store, base identity,
compatibility refusals (registration and activation), lifecycle, delete, pin/candidate, upload over
REST and gRPC, tenant scoping."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge.trainer.v1 import trainer_pb2
from coachforge_registry import api, service
from coachforge_registry.grpc import registration
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_registry.storage import ArtifactStore
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from coachforge_shared.events import decode, publish_in
from coachforge_shared.grpc_server import GrpcServerThread, wait_for_health
from coachforge_shared.http import install_error_handlers
from coachforge_shared.models import OutboxEvent

BASE = "SmolLM2-135M-Instruct"
CONFIG = b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 576}'


class Recorder:
    """The publisher without a broker: writes events into the caller's transaction as the real one
    does; ``events`` reads back the committed ones, oldest first (type, payload, tenant)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def publish_in(self, s: Session, event_type: str, payload: Any, tenant_id: str, key: str | None = None) -> str:
        return publish_in(s, event_type, payload, tenant_id, key)

    @property
    def events(self) -> list[tuple[str, Any, str]]:
        with self.db.session() as s:
            rows = list(s.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))
        return [(env.type, payload, env.tenant_id) for env, payload in (decode(row.envelope) for row in rows)]

    def of(self, event_type: str) -> list[Any]:
        return [p for t, p, _ in self.events if t == event_type]


def write_adapter(path: Path, *, rank: int = 8, base: str = f"/models/{BASE}",
                  targets: list[str] | str | None = None, modules_to_save: list[str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "base_model_name_or_path": base,
              "target_modules": targets if targets is not None else ["q_proj", "v_proj"],
              "modules_to_save": modules_to_save}
    (path / "adapter_config.json").write_text(json.dumps(config))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return path


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> RegistryDeps:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    models = tmp_path / "models"
    (models / BASE).mkdir(parents=True)
    (models / BASE / "config.json").write_bytes(CONFIG)
    settings = RegistrySettings(base_models=[BASE], storage_url=str(tmp_path / "store"), models_dir=models)
    return RegistryDeps(db=db, settings=settings, publisher=Recorder(db))  # type: ignore[arg-type]


def job_done(deps: RegistryDeps, tenant: str, job_id: str, suffix: str, adapter: Path, rank: int = 8) -> str:
    name = f"ft:{BASE}:{tenant}:{suffix}:{job_id[-6:]}"
    event = trainer_pb2.JobSucceeded(job_id=job_id, base_model=BASE, fine_tuned_model=name, adapter_uri=str(adapter),
                                     lora_rank=rank, target_modules=["q_proj", "v_proj"], training_file="file-1",
                                     final_loss=0.5)
    with deps.db.session() as s:
        service.on_job_succeeded(deps, s, Envelope(event_id=f"evt-{job_id}", tenant_id=tenant), event)
    return name


def test_job_registration_numbers_versions_and_stores_checksummed_artifacts(deps: RegistryDeps,
                                                                            tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "jobs" / "a1")
    m1 = job_done(deps, "acme", "ftjob-000001", "coach", adapter)
    job_done(deps, "acme", "ftjob-000001", "coach", adapter)  # replayed: nothing new
    m2 = job_done(deps, "acme", "ftjob-000002", "coach", write_adapter(tmp_path / "jobs" / "a2"))
    other = job_done(deps, "acme", "ftjob-000003", "other", write_adapter(tmp_path / "jobs" / "a3"))
    g1 = job_done(deps, "globex", "ftjob-000004", "coach", write_adapter(tmp_path / "jobs" / "a4"))

    versions = service.list_versions(deps, "acme", m1)
    assert [(v.id, v.version, v.status) for v in versions] == [(m2, 2, "candidate"), (m1, 1, "candidate")]
    assert [v.version for v in service.list_versions(deps, "acme", other)] == [1]
    assert [v.version for v in service.list_versions(deps, "globex", g1)] == [1]
    assert {v.id for v in service.list_versions(deps, "acme", BASE)} == {m1, m2, other}

    v1 = service.get_model(deps, "acme", m1)
    expected = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for p in adapter.iterdir()}
    assert {f.path: (f.sha256, f.size) for f in v1.files} == expected
    assert v1.size_bytes == sum(size for _, size in expected.values())
    assert len(v1.artifact_sha256) == 64
    assert v1.base_config_sha256 == hashlib.sha256(CONFIG).hexdigest()
    assert v1.lora_rank == 8 and list(v1.target_modules) == ["q_proj", "v_proj"]
    assert json.loads(v1.lineage_json)["training_file"] == "file-1"
    # Stored in the registry's own store, on local disk, where the engine reads it by path.
    stored = Path(v1.adapter_uri)
    assert stored.is_dir() and stored.is_relative_to(tmp_path / "store") and v1.artifact_uri == v1.adapter_uri
    assert hashlib.sha256((stored / "adapter_config.json").read_bytes()).hexdigest() == \
        expected["adapter_config.json"][0]
    assert len(deps.publisher.of("model.registered")) == 4  # type: ignore[union-attr]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rank": 64}, "rank 64 exceeds the engines' max_lora_rank 16"),
    ({"base": "Qwen/Qwen2.5-0.5B-Instruct"}, "trained on base model 'Qwen2.5-0.5B-Instruct'"),
    ({"targets": ["q_proj", "lm_head"]}, "target modules lm_head are not supported"),
    ({"targets": "all-linear"}, "target_modules is the pattern 'all-linear'"),
    ({"modules_to_save": ["embed_tokens"]}, "modules_to_save (embed_tokens)"),
])
def test_incompatible_adapter_from_a_job_is_refused_saying_why(deps: RegistryDeps, tmp_path: Path,
                                                               kwargs: dict[str, Any], message: str) -> None:
    name = job_done(deps, "acme", "ftjob-bad001", "coach", write_adapter(tmp_path / "bad", **kwargs))
    assert name not in [m.id for m in service.list_models(deps, "acme")]
    [rejected] = deps.publisher.of("model.rejected")  # type: ignore[union-attr]
    assert rejected.job_id == "ftjob-bad001" and message in rejected.reason
    assert not any((tmp_path / "store").rglob("*.json"))  # nothing stored


def test_activation_rechecks_compatibility(deps: RegistryDeps, tmp_path: Path) -> None:
    m1 = job_done(deps, "acme", "ftjob-000001", "coach", write_adapter(tmp_path / "a1", rank=16))
    deps.settings.max_lora_rank = 8  # the engines were restarted with a lower --max-lora-rank
    with pytest.raises(InvalidArgument) as err:
        service.create_avatar(deps, "acme", "a", "coach", m1)
    assert "rank 16 exceeds the engines' max_lora_rank 8" in err.value.message and err.value.param == "model"
    deps.settings.max_lora_rank = 16
    (deps.settings.models_dir / BASE / "config.json").write_text('{"hidden_size": 1024}')  # type: ignore[operator]
    with pytest.raises(InvalidArgument) as err:
        service.create_avatar(deps, "acme", "a", "coach", m1)
    assert "changed since registration" in err.value.message
    assert service.list_avatars(deps, "acme") == []


def test_activation_verifies_the_stored_checksums(deps: RegistryDeps, tmp_path: Path) -> None:
    m1 = job_done(deps, "acme", "ftjob-000001", "coach", write_adapter(tmp_path / "a1"))
    stored = Path(service.get_model(deps, "acme", m1).artifact_uri)
    (stored / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(FailedPrecondition) as err:
        service.create_avatar(deps, "acme", "a", "coach", m1)
    assert "adapter_model.safetensors does not match its recorded sha256" in err.value.message
    assert err.value.code == "artifact_corrupt"


def test_lifecycle_delete_pin_and_candidate(deps: RegistryDeps, tmp_path: Path) -> None:
    m1 = job_done(deps, "acme", "ftjob-000001", "coach", write_adapter(tmp_path / "a1"))
    m2 = job_done(deps, "acme", "ftjob-000002", "coach", write_adapter(tmp_path / "a2"))
    m3 = job_done(deps, "acme", "ftjob-000003", "coach", write_adapter(tmp_path / "a3"))

    def status() -> dict[str, str]:
        return {v.id: v.status for v in service.list_versions(deps, "acme", m1)}

    service.create_avatar(deps, "acme", "api-key:k1", "coach-anna", m1, reason="launch")
    assert status() == {m1: "active", m2: "candidate", m3: "candidate"}
    service.activate(deps, "acme", "api-key:k1", "coach-anna", m2, reason="better eval")
    assert status() == {m1: "retired", m2: "active", m3: "candidate"}
    service.rollback(deps, "acme", "api-key:k1", "coach-anna", reason="complaints")
    assert status() == {m1: "active", m2: "retired", m3: "candidate"}

    # Candidate with a traffic share; changes are recorded with who, when, why.
    with pytest.raises(InvalidArgument) as err:
        service.set_candidate(deps, "acme", "api-key:k1", "coach-anna", m3, 101)
    assert err.value.param == "traffic_share"
    a = service.set_candidate(deps, "acme", "api-key:k2", "coach-anna", m3, 10, reason="A/B")
    assert (a.active_model, a.candidate_model, a.candidate_share) == (m1, m3, 10)

    # Delete is refused while an avatar points at the version (active or candidate).
    for model, role in ((m1, "active"), (m3, "candidate")):
        with pytest.raises(FailedPrecondition) as refused:
            service.delete_model(deps, "acme", model)
        assert f"coach-anna ({role})" in refused.value.message and refused.value.code == "model_in_use"
    assert service.get_model(deps, "acme", m1).id == m1

    # Pin: activate and rollback are refused until unpinned.
    service.pin(deps, "acme", "api-key:k3", "coach-anna", m3, reason="freeze for the race")
    a = service.get_avatar(deps, "acme", "coach-anna")
    assert (a.active_model, a.pinned, a.candidate_model) == (m3, True, None)
    with pytest.raises(FailedPrecondition):
        service.activate(deps, "acme", "x", "coach-anna", m2)
    with pytest.raises(FailedPrecondition):
        service.rollback(deps, "acme", "x", "coach-anna")
    service.unpin(deps, "acme", "api-key:k3", "coach-anna", reason="race over")
    actions = [(c.action, c.actor, c.reason) for c in service.history(deps, "acme", "coach-anna")]
    assert actions[:3] == [("unpinned", "api-key:k3", "race over"), ("pinned", "api-key:k3", "freeze for the race"),
                           ("candidate_set", "api-key:k2", "A/B")]
    assert json.loads(service.history(deps, "acme", "coach-anna")[2].detail_json)["traffic_share"] == 10
    assert status() == {m1: "retired", m2: "retired", m3: "active"}
    service.rollback(deps, "acme", "x", "coach-anna")  # back to before the pin
    assert service.get_avatar(deps, "acme", "coach-anna").active_model == m1

    # Deleting an unused version removes the row, then its artifact.
    stored = Path(service.get_model(deps, "acme", m2).artifact_uri)
    assert stored.is_dir()
    with pytest.raises(NotFound):
        service.delete_model(deps, "globex", m2)  # another tenant's
    assert service.delete_model(deps, "acme", m2) == {"id": m2, "object": "model", "deleted": True}
    assert not stored.exists()
    with pytest.raises(NotFound):
        service.get_model(deps, "acme", m2)
    assert deps.publisher.of("model.deleted")[0].model_id == m2  # type: ignore[union-attr]
    with pytest.raises(PermissionDenied):
        service.delete_model(deps, "acme", BASE)
    # The next version of the line still counts up.
    m4 = job_done(deps, "acme", "ftjob-000004", "coach", write_adapter(tmp_path / "a4"))
    assert service.get_model(deps, "acme", m4).version == 4


def test_memory_store_through_fsspec(deps: RegistryDeps, tmp_path: Path) -> None:
    """Any fsspec backend works: the in-memory one (S3 itself is tested in test_s3_storage.py)."""
    deps.store = ArtifactStore("memory://registry-test")
    name = job_done(deps, "acme", "ftjob-000001", "coach", write_adapter(tmp_path / "a1"))
    m = service.get_model(deps, "acme", name)
    assert m.artifact_uri.startswith("memory://") and m.adapter_uri == m.artifact_uri
    fs = fsspec.filesystem("memory")
    assert fs.cat(m.artifact_uri + "/adapter_config.json") == (tmp_path / "a1" / "adapter_config.json").read_bytes()
    service.delete_model(deps, "acme", name)
    assert not fs.exists(m.artifact_uri)


# -- REST and gRPC ------------------------------------------------------------------------------

@pytest.fixture
def auth(deps: RegistryDeps) -> Authenticator:
    add_api_key(deps.db, "acme", "cf-acme")
    add_api_key(deps.db, "globex", "cf-globex")
    return Authenticator(deps.db, internal_token="internal")


@pytest.fixture
def client(deps: RegistryDeps, auth: Authenticator) -> TestClient:
    app = FastAPI()
    app.state.authenticator, app.state.registry = auth, deps
    install_error_handlers(app)
    app.include_router(api.router)
    return TestClient(app, raise_server_exceptions=False)


ACME, GLOBEX = {"Authorization": "Bearer cf-acme"}, {"Authorization": "Bearer cf-globex"}


def tar_gz(adapter: Path, top: str = "my-adapter") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(adapter, arcname=top)
    return buf.getvalue()


def zipped(adapter: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in adapter.iterdir():
            zf.write(p, p.name)
    return buf.getvalue()


def test_upload_over_rest(client: TestClient, deps: RegistryDeps, tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "peft")
    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "anna"},
                    files={"file": ("adapter.tar.gz", tar_gz(adapter))})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["id"].startswith(f"ft:{BASE}:acme:anna:") and first["owned_by"] == "acme"
    assert (first["version"], first["status"], first["source"], first["lora_rank"]) == (1, "candidate", "upload", 8)
    assert {f["path"] for f in first["files"]} == {"adapter_config.json", "adapter_model.safetensors"}

    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "anna"},
                    files={"file": ("adapter.zip", zipped(adapter))})
    assert r.status_code == 200 and r.json()["version"] == 2
    files = [("file", (p.name, p.read_bytes())) for p in adapter.iterdir()]
    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "anna"}, files=files)
    assert r.status_code == 200 and r.json()["version"] == 3
    assert r.json()["sha256"] == first["sha256"]  # same files, same digest

    listed = client.get(f"/v1/models/{first['id']}/versions", headers=ACME).json()["data"]
    assert [m["version"] for m in listed] == [3, 2, 1]
    assert client.get(f"/v1/models/{first['id']}", headers=ACME).json()["version"] == 1
    assert first["id"] in [m["id"] for m in client.get("/v1/models", headers=ACME).json()["data"]]

    # Cross-tenant: invisible, not deletable, not listable.
    assert client.get(f"/v1/models/{first['id']}", headers=GLOBEX).status_code == 404
    assert client.get(f"/v1/models/{first['id']}/versions", headers=GLOBEX).status_code == 404
    assert client.delete(f"/v1/models/{first['id']}", headers=GLOBEX).status_code == 404
    assert client.post("/v1/avatars", headers=GLOBEX, json={"name": "x", "model": first["id"]}).status_code == 400

    # Delete: 409 while an avatar points at it, OpenAI's body once it does not.
    assert client.post("/v1/avatars", headers=ACME, json={"name": "anna", "model": first["id"]}).status_code == 200
    r = client.delete(f"/v1/models/{first['id']}", headers=ACME)
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_in_use"
    assert r.json()["error"]["param"] == "model"
    r = client.post("/v1/avatars/anna/candidate", headers=ACME, json={"model": listed[0]["id"], "traffic_share": 20})
    assert r.status_code == 200 and r.json()["candidate_share"] == 20
    assert client.post("/v1/avatars/anna/candidate", headers=ACME,
                       json={"model": listed[0]["id"], "traffic_share": 120}).json()["error"]["param"] == \
        "traffic_share"
    r = client.post("/v1/avatars/anna/pin", headers=ACME, json={"model": listed[1]["id"], "reason": "stable"})
    assert r.status_code == 200 and r.json()["pinned"] is True
    r = client.post("/v1/avatars/anna/activate", headers=ACME, json={"model": first["id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "avatar_pinned"
    r = client.delete(f"/v1/models/{first['id']}", headers=ACME)  # no avatar points at v1 any more
    assert r.status_code == 200 and r.json() == {"id": first["id"], "object": "model", "deleted": True}
    assert client.get(f"/v1/models/{first['id']}", headers=ACME).status_code == 404
    assert client.delete(f"/v1/models/{BASE}", headers=ACME).status_code == 403

    # Evaluation results kept on the version.
    v2 = listed[1]["id"]
    r = client.post(f"/v1/models/{v2}/evaluations", headers=ACME,
                    json={"name": "coach-rules-v1", "metrics": {"valid_json": 0.92, "passes_safety": 0.79}})
    assert r.status_code == 200 and r.json()["evaluations"]["coach-rules-v1"]["metrics"]["valid_json"] == 0.92
    assert client.get(f"/v1/models/{v2}", headers=ACME).json()["evaluations"]["coach-rules-v1"]["actor"]
    r = client.post(f"/v1/models/{v2}/evaluations", headers=ACME, json={"name": "x", "metrics": {"a": "high"}})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("metrics")
    assert client.post(f"/v1/models/{v2}/evaluations", headers=GLOBEX,
                       json={"name": "x", "metrics": {"a": 1}}).status_code == 404


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def test_bad_uploads_are_refused_naming_the_field(client: TestClient, tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "peft")
    traversal = tarfile.TarInfo("../evil.txt")
    traversal.size = 1
    link = tarfile.TarInfo("adapter_config.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    cases = [
        ({"suffix": "anna"}, {"file": ("a.tar.gz", _tar_with([(traversal, b"x")]))}, 400, "file"),
        ({"suffix": "anna"}, {"file": ("a.tar.gz", _tar_with([(link, None)]))}, 400, "file"),
        ({"suffix": "anna"}, {"file": ("a.tar.gz", b"not an archive")}, 400, "file"),
        ({"suffix": "anna"}, {"file": ("adapter_model.safetensors", b"\x00" * 16)}, 400, "file"),
        ({"suffix": "bad:suffix"}, {"file": ("a.tar.gz", tar_gz(adapter))}, 400, "suffix"),
        ({"suffix": "anna"}, {"file": ("a.tar.gz", tar_gz(write_adapter(tmp_path / "big", rank=32)))}, 400, "file"),
    ]
    for data, files, code, param in cases:
        r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data=data, files=files)
        assert r.status_code == code, r.text
        assert r.json()["error"]["param"] == param
    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "anna"},
                    files={"file": ("a.tar.gz", tar_gz(write_adapter(tmp_path / "big", rank=32)))})
    assert "rank 32 exceeds the engines' max_lora_rank 16" in r.json()["error"]["message"]
    r = client.post("/v1/models/no-such-base/versions", headers=ACME, files={"file": ("a.tar.gz", tar_gz(adapter))})
    assert r.status_code == 404 and r.json()["error"]["param"] == "base_model"
    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "anna"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    assert not (tmp_path / "evil.txt").exists()
    assert not any((tmp_path / "store").rglob("*"))  # nothing half-written
    assert [m["id"] for m in client.get("/v1/models", headers=ACME).json()["data"]] == [BASE]


@pytest.fixture
def grpc_target(deps: RegistryDeps, auth: Authenticator) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = GrpcServerThread([registration(deps)], auth, f"127.0.0.1:{port}", max_workers=4).start()
    target = f"127.0.0.1:{port}"
    wait_for_health(target)
    yield target
    server.stop()


def test_versions_over_grpc(grpc_target: str, tmp_path: Path) -> None:
    acme, globex = (("authorization", "Bearer cf-acme"),), (("authorization", "Bearer cf-globex"),)
    content = tar_gz(write_adapter(tmp_path / "peft"))
    with grpc.insecure_channel(grpc_target) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        v1 = stub.UploadModelVersion(registry_pb2.UploadModelVersionRequest(
            base_model=BASE, suffix="g", filename="a.tar.gz", content=content), metadata=acme)
        v2 = stub.UploadModelVersion(registry_pb2.UploadModelVersionRequest(
            base_model=BASE, suffix="g", filename="a.tar.gz", content=content), metadata=acme)
        assert (v1.version, v2.version, v1.status, v1.lora_rank) == (1, 2, "candidate", 8)
        assert len(v1.files) == 2 and v1.artifact_sha256 == v2.artifact_sha256
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadModelVersion(registry_pb2.UploadModelVersionRequest(
                base_model=BASE, suffix="g", filename="a.tar.gz",
                content=tar_gz(write_adapter(tmp_path / "wrong", base="meta-llama/Llama-3.2-1B"))), metadata=acme)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Llama-3.2-1B" in (err.value.details() or "")
        listed = stub.ListModelVersions(registry_pb2.ListModelVersionsRequest(model_id=v1.id), metadata=acme)
        assert [m.version for m in listed.models] == [2, 1]
        stub.CreateAvatar(registry_pb2.CreateAvatarRequest(name="g", model=v1.id), metadata=acme)
        stub.SetCandidate(registry_pb2.SetCandidateRequest(avatar="g", model=v2.id, traffic_share=5), metadata=acme)
        pinned = stub.PinVersion(registry_pb2.PinVersionRequest(avatar="g", model=v1.id, reason="hold"),
                                 metadata=acme)
        assert pinned.pinned and pinned.candidate_model == v2.id and pinned.candidate_share == 5
        assert not stub.UnpinAvatar(registry_pb2.UnpinAvatarRequest(avatar="g"), metadata=acme).pinned
        hist = stub.GetAvatarHistory(registry_pb2.GetAvatarHistoryRequest(avatar="g"), metadata=acme)
        assert [c.action for c in hist.changes] == ["unpinned", "pinned", "candidate_set", "created"]
        with pytest.raises(grpc.RpcError) as err:
            stub.DeleteModel(registry_pb2.DeleteModelRequest(model_id=v2.id), metadata=acme)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            stub.DeleteModel(registry_pb2.DeleteModelRequest(model_id=v1.id), metadata=globex)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModelVersions(registry_pb2.ListModelVersionsRequest(model_id=v1.id), metadata=globex)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        stub.SetCandidate(registry_pb2.SetCandidateRequest(avatar="g"), metadata=acme)  # clear
        evaluated = stub.RecordEvaluation(registry_pb2.RecordEvaluationRequest(
            model_id=v2.id, name="smoke", metrics={"valid_json": 1.0}), metadata=acme)
        assert json.loads(evaluated.evaluations_json)["smoke"]["metrics"] == {"valid_json": 1.0}
        deleted = stub.DeleteModel(registry_pb2.DeleteModelRequest(model_id=v2.id), metadata=acme)
        assert (deleted.id, deleted.object, deleted.deleted) == (v2.id, "model", True)


def test_job_lineage_is_kept_and_shown_over_rest_and_grpc(client: TestClient, grpc_target: str, deps: RegistryDeps,
                                                          tmp_path: Path) -> None:
    hyperparameters = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0, "lora_r": 8,
                       "lora_alpha": 16, "max_length": 1024, "seed": 42, "learning_rate": 0.0005}
    name = f"ft:{BASE}:acme:coach:lin001"
    event = trainer_pb2.JobSucceeded(
        job_id="ftjob-lin001", base_model=BASE, fine_tuned_model=name, adapter_uri=str(write_adapter(tmp_path / "a")),
        lora_rank=8, target_modules=["q_proj", "v_proj"], training_file="file-train", trained_tokens=1234,
        final_loss=0.26, validation_file="file-valid", hyperparameters_json=json.dumps(hyperparameters),
        valid_loss=0.0, n_epochs=3, steps=24, result_file="file-results")
    for event_id in ("evt-1", "evt-2"):  # delivered twice, the second time under a new event id
        with deps.db.session() as s:
            service.on_job_succeeded(deps, s, Envelope(event_id=event_id, tenant_id="acme"), event)
    expected = {"job_id": "ftjob-lin001", "training_file": "file-train", "trained_tokens": 1234, "final_loss": 0.26,
                "validation_file": "file-valid", "hyperparameters": hyperparameters, "valid_loss": 0.0,
                "n_epochs": 3, "steps": 24, "result_file": "file-results"}
    r = client.get(f"/v1/models/{name}", headers=ACME)
    assert r.status_code == 200 and r.json()["lineage"] == expected and r.json()["job_id"] == "ftjob-lin001"
    listed = client.get(f"/v1/models/{name}/versions", headers=ACME).json()["data"]
    assert [(m["id"], m["lineage"]) for m in listed] == [(name, expected)]  # one version, not two
    assert len(deps.publisher.of("model.registered")) == 1  # type: ignore[union-attr]
    with grpc.insecure_channel(grpc_target) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        got = stub.GetModel(registry_pb2.GetModelRequest(model_id=name),
                            metadata=(("authorization", "Bearer cf-acme"),))
    assert json.loads(got.lineage_json) == expected

    # An event from an older trainer (none of the new fields): lineage as before, no zeros invented.
    old = job_done(deps, "acme", "ftjob-old001", "coach", write_adapter(tmp_path / "b"))
    assert client.get(f"/v1/models/{old}", headers=ACME).json()["lineage"] == {
        "job_id": "ftjob-old001", "training_file": "file-1", "trained_tokens": 0, "final_loss": 0.5}
