"""Adapter uploads and registrations as an attacker tries them: pickled weights (adapter_model.bin)
refused on upload and from a finished job; nothing but adapter_config.json and the safetensors
weights stored (other files listed in the lineage as ignored); uploads staged under the data
folder, never the system's temporary folder, with the unpacked-size and entry-count caps; every
safetensors header entry checked (dtype, shape, offsets inside the file, LoRA ranks); no error and
no tenant-facing answer naming a server path."""

from __future__ import annotations

import io
import json
import math
import socket
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_versions import BASE, CONFIG, Recorder, job_done, tar_gz, write_adapter, zipped

from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_registry import api, service
from coachforge_registry.adapters import base_config_sha256, read_adapter
from coachforge_registry.grpc import registration
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, PayloadTooLarge
from coachforge_shared.grpc_server import GrpcServerThread, wait_for_health
from coachforge_shared.http import install_error_handlers

ACME = {"Authorization": "Bearer cf-acme"}
SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8}


def safetensors_file(tensors: dict[str, tuple[str, list[int]]], *, extra: bytes = b"",
                     edit: Callable[[dict[str, Any]], None] | None = None, length: int | None = None) -> bytes:
    """A safetensors file of zero-filled tensors laid out one after another; ``edit`` changes the
    header before it is written, ``extra`` is appended, ``length`` overrides the header length."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += b"\0" * n
    if edit is not None:
        edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data + extra


def lora(rank: int = 8, rank_b: int | None = None) -> dict[str, tuple[str, list[int]]]:
    prefix = "base_model.model.model.layers.0.self_attn"
    return {f"{prefix}.q_proj.lora_A.weight": ("F32", [rank, 16]),
            f"{prefix}.q_proj.lora_B.weight": ("F32", [16, rank if rank_b is None else rank_b])}


def adapter_with(path: Path, weights: bytes | None = None, **files: bytes) -> Path:
    write_adapter(path)
    if weights is not None:
        (path / "adapter_model.safetensors").write_bytes(weights)
    for name, content in files.items():
        target = path / name.replace("__", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return path


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> RegistryDeps:
    create_tenant(db, "acme")
    models = tmp_path / "models"
    (models / BASE).mkdir(parents=True)
    (models / BASE / "config.json").write_bytes(CONFIG)
    settings = RegistrySettings(base_models=[BASE], models_dir=models)
    # As the wiring builds it: the local store and the staging folder on the data volume.
    return RegistryDeps(db=db, settings=settings, publisher=Recorder(db),  # type: ignore[arg-type]
                        artifacts_dir=tmp_path / "data" / "artifacts" / "registry")


@pytest.fixture
def client(deps: RegistryDeps) -> Iterator[TestClient]:
    add_api_key(deps.db, "acme", "cf-acme")
    app = FastAPI()
    app.state.authenticator, app.state.registry = Authenticator(deps.db, internal_token="internal"), deps
    install_error_handlers(app)
    app.include_router(api.router)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield http


def stored_files(deps: RegistryDeps) -> list[str]:
    root = deps.artifacts_dir
    assert root is not None
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_pickled_weights_are_refused_on_upload_and_from_a_job(client: TestClient, deps: RegistryDeps,
                                                                 tmp_path: Path) -> None:
    config = (write_adapter(tmp_path / "cfg") / "adapter_config.json").read_bytes()
    pickle = b"\x80\x04\x95" + b"cos\nsystem\n(S'touch /tmp/pwned'\ntR."
    uploads = [
        [("file", ("adapter_config.json", config)), ("file", ("adapter_model.bin", pickle))],
        [("file", ("a.tar.gz", tar_of({"m/adapter_config.json": config, "m/adapter_model.bin": pickle})))],
        [("file", ("a.zip", _zip({"adapter_config.json": config, "adapter_model.bin": pickle})))],
    ]
    for files in uploads:
        r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "x"}, files=files)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_adapter", "file")
        assert "adapter_model.bin is a pickle file" in error["message"] and "safetensors" in error["message"]

    job_dir = tmp_path / "jobs" / "acme" / "ftjob-1" / "adapter"
    write_adapter(job_dir)
    (job_dir / "adapter_model.safetensors").unlink()
    (job_dir / "adapter_model.bin").write_bytes(pickle)
    job_done(deps, "acme", "ftjob-000001", "coach", job_dir)
    [rejected] = deps.publisher.of("model.rejected")  # type: ignore[union-attr]
    assert "pickle" in rejected.reason and "safetensors" in rejected.reason
    assert service.list_models(deps, "acme")[1:] == [] and stored_files(deps) == []


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_only_the_adapter_files_are_stored_the_others_are_listed_as_ignored(client: TestClient, deps: RegistryDeps,
                                                                             tmp_path: Path) -> None:
    extras = {"README.md": b"# notes", "tokenizer.json": b"{}", "training_args.bin": b"\x80\x04pickle",
              "sub__optimizer.pt": b"\x80\x04pickle"}
    job = job_done(deps, "acme", "ftjob-000002", "coach", adapter_with(tmp_path / "job", **extras))
    version = service.get_model(deps, "acme", job)
    assert [f.path for f in version.files] == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads(version.lineage_json)["ignored_files"] == ["README.md", "sub/optimizer.pt",
                                                                  "tokenizer.json", "training_args.bin"]
    assert sorted(Path(p).name for p in stored_files(deps)) == ["adapter_config.json", "adapter_model.safetensors"]

    archive = tar_gz(adapter_with(tmp_path / "up", **extras), top="my-adapter")
    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "up"},
                    files={"file": ("adapter.tar.gz", archive)})
    assert r.status_code == 200, r.text
    assert [f["path"] for f in r.json()["files"]] == ["adapter_config.json", "adapter_model.safetensors"]
    assert r.json()["lineage"]["ignored_files"] == ["my-adapter/README.md", "my-adapter/sub/optimizer.pt",
                                                    "my-adapter/tokenizer.json", "my-adapter/training_args.bin"]
    files = [("file", (p.name, p.read_bytes())) for p in sorted(write_adapter(tmp_path / "plain").iterdir())]
    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "up"},
                    files=[*files, ("file", ("notes.txt", b"hello"))])
    assert r.status_code == 200 and r.json()["lineage"]["ignored_files"] == ["notes.txt"]
    assert r.json()["lineage"]["files"] == ["adapter_config.json", "adapter_model.safetensors", "notes.txt"]
    assert {Path(p).name for p in stored_files(deps)} == {"adapter_config.json", "adapter_model.safetensors"}
    assert len(stored_files(deps)) == 6  # three versions, two files each


def test_uploads_are_staged_under_the_data_folder_never_the_system_temp(deps: RegistryDeps, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen: list[Path] = []
    real = read_adapter

    def spy(adapter_dir: Path, param: str = "file") -> Any:
        seen.append(adapter_dir)
        return real(adapter_dir, param)

    monkeypatch.setattr(service, "read_adapter", spy)
    adapter = write_adapter(tmp_path / "peft")
    for name, content in (("a.tar.gz", tar_gz(adapter)), ("a.zip", zipped(adapter))):
        service.upload_version(deps, "acme", "api-key:k", BASE, "s", [(name, io.BytesIO(content))])
    staging = tmp_path / "data" / "artifacts" / ".registry-staging"
    assert len(seen) == 2 and all(p.is_relative_to(staging) for p in seen)
    assert list(system_tmp.iterdir()) == [] and list(staging.iterdir()) == []  # nothing left behind

    deps.settings.staging_dir = tmp_path / "elsewhere"
    service.upload_version(deps, "acme", "api-key:k", BASE, "s", [("a.tar.gz", io.BytesIO(tar_gz(adapter)))])
    assert seen[-1].is_relative_to(tmp_path / "elsewhere")


def test_archive_bombs_are_refused_before_they_are_unpacked(deps: RegistryDeps, tmp_path: Path) -> None:
    deps.settings.max_upload_bytes = 50_000
    adapter = write_adapter(tmp_path / "peft")
    config = (adapter / "adapter_config.json").read_bytes()
    zeros = tar_of({"adapter_config.json": config, "padding.bin": b"\0" * 2_000_000})  # a few KB packed
    assert len(zeros) < 50_000
    for name, content in (("a.tar.gz", zeros), ("a.zip", _zip({"adapter_config.json": config,
                                                                 "padding.bin": b"\0" * 2_000_000}))):
        with pytest.raises(PayloadTooLarge, match="unpacks to more than 50000 bytes"):
            service.upload_version(deps, "acme", "api-key:k", BASE, "s", [(name, io.BytesIO(content))])
    deps.settings.max_upload_bytes = 10**8
    many = tar_of({f"f{i}": b"" for i in range(10_001)})
    with pytest.raises(InvalidArgument, match="more than 10000 entries"):
        service.upload_version(deps, "acme", "api-key:k", BASE, "s", [("a.tar", io.BytesIO(many))])
    assert stored_files(deps) == []


@pytest.mark.parametrize(("weights", "reason"), [
    (safetensors_file({"x.lora_A.weight": ("I64", [8, 16])}), "dtype 'I64'"),
    (safetensors_file({"x.lora_A.weight": ("F32", [8, 4, 4])}), "has shape [8, 4, 4]"),
    (safetensors_file({"x.lora_A.weight": ("F32", [0, 16])}), "has shape [0, 16]"),
    (safetensors_file({"w": ("F32", [2, 2])}, edit=lambda h: h["w"].update(data_offsets=[0, 8])),
     "spans 8 bytes, but F32 [2, 2] needs 16"),
    (safetensors_file({"w": ("F32", [2, 2])}, edit=lambda h: h["w"].update(data_offsets=[0, 1 << 40])),
     "outside the file's 16 bytes"),
    (safetensors_file({"a": ("F32", [2]), "b": ("F32", [2])}, edit=lambda h: h["b"].update(data_offsets=[4, 12])),
     "gaps or overlaps"),
    (safetensors_file({"w": ("F32", [2])}, extra=b"\0" * 4), "4 bytes of data follow the last tensor"),
    (safetensors_file({"w": ("F32", [2])}, edit=lambda h: h.update(w="no")), "is not an object"),
    (safetensors_file({}, edit=lambda h: h.update(__metadata__={"a": 1})), "__metadata__"),
    (safetensors_file({}, length=1 << 40), "larger than 16777216 bytes"),
    (safetensors_file({}, length=10_000), "header length exceeds the file"),
    (b"\x05\x00\x00\x00\x00\x00\x00\x00{oops", "not JSON"),
    (b"\x00\x01", "shorter than the 8-byte header length"),
    (safetensors_file(lora(8, rank_b=4)), "different ranks (8 and 4)"),
])
def test_safetensors_headers_and_tensors_are_checked(tmp_path: Path, weights: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        read_adapter(adapter_with(tmp_path / "a", weights))
    assert err.value.code == "invalid_adapter" and err.value.param == "file"
    assert "adapter_model.safetensors is not a valid safetensors file of LoRA weights" in err.value.message
    assert reason in err.value.message and str(tmp_path) not in err.value.message


def test_the_rank_comes_from_the_weights_too(deps: RegistryDeps, tmp_path: Path) -> None:
    assert read_adapter(adapter_with(tmp_path / "ok", safetensors_file(lora(8)))).lora_rank == 8
    # adapter_config.json says r=8, but a rank_pattern gave a module rank 32: the engines could not load it.
    archive = tar_gz(adapter_with(tmp_path / "big", safetensors_file(lora(32))))
    with pytest.raises(InvalidArgument, match="rank 32 exceeds the engines' max_lora_rank 16"):
        service.upload_version(deps, "acme", "api-key:k", BASE, "s", [("a.tar.gz", io.BytesIO(archive))])


def test_a_file_written_by_the_safetensors_library_is_accepted(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    from safetensors.numpy import save

    tensors = {name: numpy.zeros(shape, dtype=numpy.float16) for name, (_, shape) in lora(4).items()}
    assert read_adapter(adapter_with(tmp_path / "lib", save(tensors, metadata={"format": "pt"}))).lora_rank == 8


def test_oversized_or_hostile_configs_are_refused(tmp_path: Path) -> None:
    for config, reason in ((b"{" + b" " * (1024**2) + b"}", "larger than 1048576 bytes"),
                           (b'{"r": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
                           (b'{"r": ' + b"9" * 5000 + b"}", "not valid JSON"),
                           (b'{"r": 8, "x": "\xff"}', "not valid JSON")):
        with pytest.raises(InvalidArgument) as err:
            read_adapter(adapter_with(tmp_path / "c", **{"adapter_config.json": config}))
        assert err.value.code == "invalid_adapter" and reason in err.value.message


def test_links_in_place_of_the_adapter_files_are_refused(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "a")
    secret = tmp_path / "secret.json"
    secret.write_text('{"r": 8, "target_modules": ["q_proj"]}')
    (adapter / "adapter_config.json").unlink()
    (adapter / "adapter_config.json").symlink_to(secret)
    with pytest.raises(InvalidArgument, match=r"The adapter has no adapter_config\.json"):
        read_adapter(adapter)


def test_archive_errors_name_no_server_path(client: TestClient, deps: RegistryDeps, tmp_path: Path) -> None:
    good = tar_gz(write_adapter(tmp_path / "peft"))
    for name, content in (("a.tar.gz", good[: len(good) // 2]), ("a.tar.gz", b"\x1f\x8b\x08" + b"\0" * 64),
                          ("a.zip", zipped(tmp_path / "peft")[:-30]), ("a.tar", b"x" * 1024)):
        r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "x"},
                        files={"file": (name, content)})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "file"
        assert str(tmp_path) not in message and "/tmp" not in message and ".registry-staging" not in message
    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "x"},
                    files={"file": ("x" * 240 + ".tar.gz", good)})
    assert r.status_code == 200  # a client's file name is never used as a path
    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, data={"suffix": "x"},
                    files={"file": ("x" * 300 + ".tar.gz", good)})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("Bad file name")


def test_base_model_names_are_never_joined_as_paths(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / BASE).mkdir(parents=True)
    (models / BASE / "config.json").write_bytes(CONFIG)
    (tmp_path / "config.json").write_bytes(b"outside")
    assert base_config_sha256(models, BASE)
    for name in ("..", "../" + BASE, f"{BASE}/..", "a\x00b", ""):
        assert base_config_sha256(models, name) == ""


@pytest.fixture
def grpc_target(deps: RegistryDeps) -> Iterator[str]:
    add_api_key(deps.db, "acme", "cf-acme")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = GrpcServerThread([registration(deps)], Authenticator(deps.db, internal_token="internal"),
                              f"127.0.0.1:{port}", max_workers=4).start()
    wait_for_health(f"127.0.0.1:{port}")
    yield f"127.0.0.1:{port}"
    server.stop()


def test_grpc_tells_tenants_no_adapter_location(grpc_target: str, deps: RegistryDeps, tmp_path: Path) -> None:
    name = job_done(deps, "acme", "ftjob-000003", "coach", write_adapter(tmp_path / "a"))
    tenant = (("authorization", "Bearer cf-acme"),)
    internal = (("x-coachforge-internal-token", "internal"), ("x-coachforge-tenant", "acme"))
    with grpc.insecure_channel(grpc_target) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        seen = [stub.GetModel(registry_pb2.GetModelRequest(model_id=name), metadata=tenant),
                *stub.ListModels(registry_pb2.ListModelsRequest(), metadata=tenant).models,
                *stub.ListModelVersions(registry_pb2.ListModelVersionsRequest(model_id=name), metadata=tenant).models,
                stub.UploadModelVersion(registry_pb2.UploadModelVersionRequest(
                    base_model=BASE, suffix="g", filename="a.tar.gz", content=tar_gz(tmp_path / "a")), metadata=tenant)]
        assert all(m.adapter_uri == "" and m.artifact_uri == "" for m in seen)
        assert any(m.adapter_name for m in seen)
        found = stub.GetModel(registry_pb2.GetModelRequest(model_id=name), metadata=internal)
    assert Path(found.adapter_uri).is_dir()  # inference, an internal caller, still learns where to load it
