"""The registry's artifact store on S3-compatible object storage: s3fs against a real local S3
server (moto's ThreadedMotoServer), configured the way a deployment is (COACHFORGE_REGISTRY_*
variables): checksummed upload, re-verification at activation, tampering and a missing object
detected, delete removing the objects."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_versions import BASE, CONFIG, Recorder, job_done, tar_gz

from coachforge_registry import service
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_registry.storage import ArtifactStore, manifest
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import FailedPrecondition

if TYPE_CHECKING:
    from conftest import S3Server


def _objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


@pytest.fixture
def s3_deps(db: Database, tmp_path: Path, s3_server: S3Server, s3_bucket: str,
            monkeypatch: pytest.MonkeyPatch) -> RegistryDeps:
    """The registry configured from its environment variables for an s3:// store."""
    create_tenant(db, "acme")
    models = tmp_path / "models"
    (models / BASE).mkdir(parents=True)
    (models / BASE / "config.json").write_bytes(CONFIG)
    monkeypatch.setenv("COACHFORGE_REGISTRY_STORAGE_URL", f"s3://{s3_bucket}/registry")
    monkeypatch.setenv("COACHFORGE_REGISTRY_STORAGE_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("COACHFORGE_REGISTRY_STORAGE_OPTIONS", json.dumps(s3_server.options))
    monkeypatch.setenv("COACHFORGE_REGISTRY_BASE_MODELS", json.dumps([BASE]))
    monkeypatch.setenv("COACHFORGE_REGISTRY_MODELS_DIR", str(models))
    monkeypatch.setenv("COACHFORGE_REGISTRY_STAGING_DIR", str(tmp_path / "staging"))
    return RegistryDeps(db=db, settings=RegistrySettings(), publisher=Recorder(db))  # type: ignore[arg-type]


def test_s3_store_checksums_verifies_and_deletes(s3_deps: RegistryDeps, s3_server: S3Server, s3_bucket: str,
                                                 peft_adapter: Path) -> None:
    deps = s3_deps
    assert deps.artifact_store().fs.protocol[0] == "s3" and not deps.artifact_store().is_local
    local = {f.path: f for f in manifest(peft_adapter)}
    assert set(local) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    kept = {"adapter_config.json", "adapter_model.safetensors"}  # peft's README.md is not stored
    assert json.loads((peft_adapter / "adapter_config.json").read_text())["r"] == 8

    m1 = job_done(deps, "acme", "ftjob-s30001", "coach", peft_adapter)
    m2 = job_done(deps, "acme", "ftjob-s30002", "coach", peft_adapter)
    v1, v2 = service.get_model(deps, "acme", m1), service.get_model(deps, "acme", m2)
    prefix1, prefix2 = f"registry/acme/{v1.adapter_name}/", f"registry/acme/{v2.adapter_name}/"
    assert v1.artifact_uri == f"s3://{s3_bucket}/{prefix1.rstrip('/')}" and v1.adapter_uri == v1.artifact_uri
    assert v1.lora_rank == 8 and list(v1.target_modules) == ["q_proj", "v_proj"]

    # Every stored object, read back with a plain S3 client, has the sha256 and size recorded for it.
    stored = _objects(s3_server, s3_bucket, prefix1)
    assert set(stored) == kept and json.loads(v1.lineage_json)["ignored_files"] == ["README.md"]
    for f in v1.files:
        assert hashlib.sha256(stored[f.path]).hexdigest() == f.sha256 == local[f.path].sha256
        assert len(stored[f.path]) == f.size

    # Activation reads every object again and checks it.
    assert service.create_avatar(deps, "acme", "api-key:k1", "coach-anna", m1).active_model == m1
    assert service.get_model(deps, "acme", m1).status == "active"

    # An object changed behind the registry's back: activation refused, naming the file.
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key=prefix2 + "adapter_model.safetensors", Body=b"tampered")
    with pytest.raises(FailedPrecondition) as err:
        service.activate(deps, "acme", "api-key:k1", "coach-anna", m2)
    assert "adapter_model.safetensors does not match its recorded sha256" in err.value.message
    assert err.value.code == "artifact_corrupt"
    client.delete_object(Bucket=s3_bucket, Key=prefix2 + "adapter_config.json")
    with pytest.raises(FailedPrecondition) as err:
        service.activate(deps, "acme", "api-key:k1", "coach-anna", m2)
    assert "adapter_config.json is missing" in err.value.message
    assert service.get_avatar(deps, "acme", "coach-anna").active_model == m1

    # Deleting a version removes its objects, and only its.
    assert service.delete_model(deps, "acme", m2)["deleted"] is True
    assert _objects(s3_server, s3_bucket, prefix2) == {}
    assert set(_objects(s3_server, s3_bucket, prefix1)) == kept

    # An uploaded archive goes to the same store.
    up = service.upload_version(deps, "acme", "api-key:k1", BASE, "anna",
                                [("adapter.tar.gz", io.BytesIO(tar_gz(peft_adapter)))])
    assert up.artifact_uri.startswith(f"s3://{s3_bucket}/registry/acme/")
    assert set(_objects(s3_server, s3_bucket, f"registry/acme/{up.id}/")) == kept


def test_s3_store_refuses_a_missing_bucket_without_creating_it(s3_server: S3Server, peft_adapter: Path) -> None:
    store = ArtifactStore("s3://no-such-bucket/registry", {**s3_server.options, "endpoint_url": s3_server.endpoint_url})
    with pytest.raises(OSError):
        store.put_dir(peft_adapter, "acme/mv-1", manifest(peft_adapter))
    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "no-such-bucket" not in names
