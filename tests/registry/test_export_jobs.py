"""Model exports through the registry's REST API, gRPC and the ``coachforge models export`` command:
asked for, made by the export worker (a thread, as in the registry process), stored with their
sha256, listed, downloaded (streamed, with ETag/Digest), made once when asked for twice, refused with
OpenAI-shaped errors naming the field, invisible to other tenants, run again after an interrupted
worker and failed after too many interruptions, removed with their model.

The base model here is a small llama (2 layers, hidden size 64) with the real base model's
tokenizer and chat template under the base model's name, and the adapter a real PEFT LoRA adapter
on it: every conversion takes about a second. The conversions of the real base model are checked
in test_export_conversions.py."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_export_modelfile import GO_TEMPLATE, parse_modelfile
from test_versions import Recorder
from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata

from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_launcher.cli import main
from coachforge_registry import api, exports, repository
from coachforge_registry.export_jobs import ExportWorker
from coachforge_registry.grpc import registration
from coachforge_registry.models import ModelExport
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.grpc_server import GrpcServerThread, wait_for_health
from coachforge_shared.http import install_error_handlers
from coachforge_shared.ids import utcnow

if TYPE_CHECKING:
    from conftest import S3Server  # tests/conftest.py

BASE = "SmolLM2-135M-Instruct"
ACME = {"Authorization": "Bearer cf-acme"}
GLOBEX = {"Authorization": "Bearer cf-globex"}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def small_models(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder whose base model is a small llama with the real base model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    models = tmp_path_factory.mktemp("export-models")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(str(models / BASE))
    AutoTokenizer.from_pretrained(str(base_model_dir)).save_pretrained(str(models / BASE))
    return models


@pytest.fixture(scope="module")
def small_adapter(small_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter (rank 4, random weights) saved by peft from the small base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(small_models / BASE), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="CAUSAL_LM",
                                            init_lora_weights=False))
    out = tmp_path_factory.mktemp("export-adapter") / "adapter"
    model.save_pretrained(str(out))
    return out


@pytest.fixture
def deps(db: Database, tmp_path: Path, small_models: Path) -> RegistryDeps:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
        add_api_key(db, tenant, f"cf-{tenant}")
    settings = RegistrySettings(base_models=[BASE], models_dir=small_models, export_poll_interval_s=0.2,
                                export_lease_s=30)
    return RegistryDeps(db=db, settings=settings, publisher=Recorder(db),  # type: ignore[arg-type]
                        artifacts_dir=tmp_path / "data" / "artifacts" / "registry")


def app_of(deps: RegistryDeps) -> FastAPI:
    app = FastAPI()
    app.state.authenticator, app.state.registry = Authenticator(deps.db, internal_token="internal"), deps
    install_error_handlers(app)
    app.include_router(api.router)
    return app


@pytest.fixture
def client(deps: RegistryDeps) -> Iterator[TestClient]:
    with TestClient(app_of(deps), raise_server_exceptions=False) as http:
        yield http


@pytest.fixture
def worker(deps: RegistryDeps) -> Iterator[ExportWorker]:
    """The export worker running in a thread, woken by new exports (as the wiring sets it up)."""
    running = ExportWorker(deps, owner="test-worker")
    deps.export_wake = running.wake
    running.start()
    yield running
    running.stop()


def upload(client: TestClient, adapter: Path, suffix: str = "coach") -> str:
    files = [("file", (name, (adapter / name).read_bytes())) for name in exports.ADAPTER_FILES]
    r = client.post(f"/v1/models/{BASE}/versions", headers=ACME, files=files, data={"suffix": suffix})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def finished(client: TestClient, model: str, export_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/models/{model}/exports/{export_id}", headers=ACME)
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("succeeded", "failed"):
            return dict(r.json())
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.1)


def members(content: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(content)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_a_gguf_export_is_made_once_stored_and_downloaded(client: TestClient, deps: RegistryDeps,
                                                          worker: ExportWorker, small_adapter: Path) -> None:
    import gguf

    model = upload(client, small_adapter)
    r = client.post(f"/v1/models/{model}/exports", headers=ACME, json={"format": "gguf", "quantization": "q8_0"})
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["id"].startswith("export_") and created["object"] == "model.export"
    assert (created["model"], created["format"], created["quantization"]) == (model, "gguf", "q8_0")
    assert created["status"] in ("queued", "running") and created["sha256"] is None and created["bytes"] is None

    done = finished(client, model, created["id"])
    assert done["status"] == "succeeded" and done["error"] is None and done["finished_at"] >= done["created_at"]
    assert done["filename"] == f"{model.replace(':', '-')}-q8_0.gguf" and done["bytes"] > 0

    again = client.post(f"/v1/models/{model}/exports", headers=ACME, json={"format": "gguf", "quantization": "q8_0"})
    assert again.json() == done  # the same export, not made again
    assert client.get(f"/v1/models/{model}/exports", headers=ACME).json() == {"object": "list", "data": [done]}

    r = client.get(f"/v1/models/{model}/exports/{done['id']}/content", headers=ACME)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == done["sha256"] and len(r.content) == done["bytes"]
    assert r.headers["etag"] == f'"{done["sha256"]}"'
    assert r.headers["digest"].startswith("sha-256=")
    assert f'filename="{done["filename"]}"' in r.headers["content-disposition"]
    cached = client.get(f"/v1/models/{model}/exports/{done['id']}/content",
                        headers={**ACME, "If-None-Match": r.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""

    stored = deps.artifacts_dir / "acme" / "exports" / done["id"] / done["filename"]  # type: ignore[operator]
    assert stored.read_bytes() == r.content
    metadata, _ = read_gguf_metadata(str(stored))
    assert (metadata["general.architecture"], metadata["llama.block_count"], metadata["tokenizer.ggml.pre"]) == (
        "llama", 2, "smollm")
    assert metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    header = GgufHeader.from_file(str(stored))
    types = {name: gguf.GGMLQuantizationType(t).name for name, t in header.ggml_types.items()}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied to token_embd.weight

    events = deps.publisher.of("model.export.succeeded")  # type: ignore[union-attr]
    assert [(e.id, e.sha256, e.bytes) for e in events] == [(done["id"], done["sha256"], done["bytes"])]


def test_adapter_merged_and_ollama_exports(client: TestClient, deps: RegistryDeps, worker: ExportWorker,
                                           small_models: Path, small_adapter: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = upload(client, small_adapter)
    version = client.get(f"/v1/models/{model}", headers=ACME).json()
    ids = {fmt: client.post(f"/v1/models/{model}/exports", headers=ACME, json={"format": fmt}).json()["id"]
           for fmt in ("adapter", "merged")}
    adapter, merged = (finished(client, model, ids[f]) for f in ("adapter", "merged"))
    assert adapter["quantization"] is None and merged["quantization"] is None

    files = members(client.get(f"/v1/models/{model}/exports/{adapter['id']}/content", headers=ACME).content)
    folder = adapter["filename"].removesuffix(".tar.gz")
    assert sorted(files) == [f"{folder}/adapter_config.json", f"{folder}/adapter_model.safetensors"]
    weights = hashlib.sha256(files[f"{folder}/adapter_model.safetensors"]).hexdigest()
    assert weights == next(f["sha256"] for f in version["files"] if f["path"] == "adapter_model.safetensors")
    assert json.loads(files[f"{folder}/adapter_config.json"])["base_model_name_or_path"] == BASE

    files = members(client.get(f"/v1/models/{model}/exports/{merged['id']}/content", headers=ACME).content)
    folder = merged["filename"].removesuffix(".tar.gz")
    assert sorted(files) == [f"{folder}/{n}" for n in (
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json")]
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    prompt = torch.tensor([[1, 4093, 198, 19556, 905, 2, 198]])
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / folder), dtype=torch.float32)(prompt).logits
        base = AutoModelForCausalLM.from_pretrained(str(small_models / BASE), dtype=torch.float32)
        expected = PeftModel.from_pretrained(base, str(small_adapter))(prompt).logits
    assert (reloaded - expected).abs().max() <= 1e-4

    # Ollama: the avatar answering with the model lends its persona to the Modelfile.
    assert client.post("/v1/avatars", headers=ACME, json={"name": "coach-anna", "model": model}).status_code == 200
    persona = {"system_prompt": "You coach {metadata.athlete}.\nAnswer with JSON.",
               "sampling": {"temperature": 0.2, "max_tokens": 300},
               "few_shot": [{"role": "user", "content": "Rest day?"}, {"role": "assistant", "content": "Yes."}]}
    assert client.put("/v1/avatars/coach-anna/persona", headers=ACME, json=persona).status_code == 200
    r = client.post(f"/v1/models/{model}/exports", headers=ACME, json={"format": "ollama", "quantization": "q4_0"})
    ollama = finished(client, model, r.json()["id"])
    assert (ollama["status"], ollama["avatar"], ollama["persona_version"]) == ("succeeded", "coach-anna", 1)
    files = members(client.get(f"/v1/models/{model}/exports/{ollama['id']}/content", headers=ACME).content)
    folder = ollama["filename"].removesuffix(".tar.gz")
    assert sorted(files) == [f"{folder}/Modelfile", f"{folder}/model.gguf"]
    assert files[f"{folder}/model.gguf"][:4] == b"GGUF"
    assert files[f"{folder}/Modelfile"].decode() == (
        "FROM ./model.gguf\n"
        f'TEMPLATE """{GO_TEMPLATE}"""\n'
        'SYSTEM """You coach .\nAnswer with JSON."""\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER temperature 0.2\n"
        "PARAMETER num_predict 300\n"
        'MESSAGE user "Rest day?"\n'
        'MESSAGE assistant "Yes."\n')
    assert ("system", "You coach .\nAnswer with JSON.") in parse_modelfile(files[f"{folder}/Modelfile"].decode())

    # The same persona version: the same export; a new persona version: a new one.
    same = client.post(f"/v1/models/{model}/exports", headers=ACME, json={"format": "ollama", "quantization": "q4_0",
                                                                          "avatar": "coach-anna"})
    assert same.json()["id"] == ollama["id"]
    assert client.put("/v1/avatars/coach-anna/persona", headers=ACME, json={"system_prompt": "Be brief."}).status_code \
        == 200
    newer = client.post(f"/v1/models/{model}/exports", headers=ACME, json={"format": "ollama", "quantization": "q4_0"})
    assert newer.json()["id"] != ollama["id"] and newer.json()["persona_version"] == 2
    assert len(client.get(f"/v1/models/{model}/exports", headers=ACME).json()["data"]) == 4


def _error(r: Any) -> tuple[int, str | None, str | None]:
    body = r.json()["error"]
    return r.status_code, body["param"], body["code"]


def test_export_requests_are_checked(client: TestClient, small_adapter: Path) -> None:
    model = upload(client, small_adapter)
    url = f"/v1/models/{model}/exports"
    assert _error(client.post(url, headers=ACME, json={"format": "onnx"}))[:2] == (400, "format")
    assert _error(client.post(url, headers=ACME, json={"format": "adapter", "quantization": "q8_0"}))[:2] == (
        400, "quantization")
    assert _error(client.post(url, headers=ACME, json={"format": "merged", "quantization": "f16"}))[:2] == (
        400, "quantization")
    assert _error(client.post(url, headers=ACME, json={"format": "gguf", "quantization": "q5_k"}))[:2] == (
        400, "quantization")
    assert _error(client.post(url, headers=ACME, json={"format": "gguf", "avatar": "coach-anna"}))[:2] == (
        400, "avatar")
    assert _error(client.post(url, headers=ACME, json={"format": "ollama", "avatar": "nobody"})) == (
        404, "avatar", "avatar_not_found")
    assert client.post(url, headers=ACME, json={"format": "gguf", "bits": 4}).status_code == 400
    assert client.post(url, headers=ACME, json={}).status_code == 400
    assert _error(client.post(f"/v1/models/{BASE}/exports", headers=ACME, json={"format": "gguf"})) == (
        400, "model", "model_not_exportable")
    assert _error(client.post("/v1/models/ft:nothing:acme:x:1/exports", headers=ACME, json={"format": "gguf"})) == (
        404, "model", "model_not_found")
    assert _error(client.get(f"{url}/export_0", headers=ACME)) == (404, "export_id", "export_not_found")
    # Nobody converts here: the export stays queued, and its content is not there yet.
    queued = client.post(url, headers=ACME, json={"format": "adapter"}).json()
    assert queued["status"] == "queued"
    assert _error(client.get(f"{url}/{queued['id']}/content", headers=ACME)) == (409, "export_id", "export_not_ready")


def test_exports_are_invisible_to_other_tenants(client: TestClient, small_adapter: Path) -> None:
    model = upload(client, small_adapter)
    url = f"/v1/models/{model}/exports"
    export_id = client.post(url, headers=ACME, json={"format": "adapter"}).json()["id"]
    for r in (client.post(url, headers=GLOBEX, json={"format": "adapter"}), client.get(url, headers=GLOBEX),
              client.get(f"{url}/{export_id}", headers=GLOBEX),
              client.get(f"{url}/{export_id}/content", headers=GLOBEX)):
        assert _error(r) == (404, "model", "model_not_found")
    assert client.get(url).status_code == 401


def _interrupt(deps: RegistryDeps, export_id: str, attempts: int) -> None:
    """As if a worker took the export ``attempts`` times and stopped while converting it."""
    with deps.db.session() as s:
        row = s.get(ModelExport, export_id)
        assert row is not None
        row.status, row.attempts, row.lease_owner = "running", attempts, "gone-worker"
        row.lease_until = utcnow()


def test_an_interrupted_export_is_run_again_then_failed(client: TestClient, deps: RegistryDeps,
                                                        small_adapter: Path) -> None:
    model = upload(client, small_adapter)
    url = f"/v1/models/{model}/exports"
    first = client.post(url, headers=ACME, json={"format": "gguf"}).json()
    _interrupt(deps, first["id"], attempts=1)
    assert client.get(f"{url}/{first['id']}", headers=ACME).json()["status"] == "running"
    restarted = ExportWorker(deps, owner="restarted-worker")  # its lease lapsed: another worker takes it over
    assert restarted.run_next()
    assert client.get(f"{url}/{first['id']}", headers=ACME).json()["status"] == "succeeded"
    with deps.db.session() as s:
        assert s.get(ModelExport, first["id"]).attempts == 2  # type: ignore[union-attr]

    second = client.post(url, headers=ACME, json={"format": "gguf", "quantization": "q4_0"}).json()
    _interrupt(deps, second["id"], attempts=deps.settings.export_max_attempts)
    assert not restarted.run_next()  # nothing left to run: it was interrupted too often
    failed = client.get(f"{url}/{second['id']}", headers=ACME).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "export_interrupted"
    assert "interrupted 3 times" in failed["error"]["message"]
    assert [e.id for e in deps.publisher.of("model.export.failed")] == [second["id"]]  # type: ignore[union-attr]

    retried = client.post(url, headers=ACME, json={"format": "gguf", "quantization": "q4_0"}).json()
    assert (retried["id"], retried["status"], retried["error"]) == (second["id"], "queued", None)
    assert restarted.run_next()
    assert client.get(f"{url}/{second['id']}", headers=ACME).json()["status"] == "succeeded"


def test_an_export_that_cannot_be_made_says_why(client: TestClient, deps: RegistryDeps,
                                                small_adapter: Path) -> None:
    model = upload(client, small_adapter)
    assert client.post("/v1/avatars", headers=ACME, json={"name": "quoter", "model": model}).status_code == 200
    assert client.put("/v1/avatars/quoter/persona", headers=ACME,
                      json={"system_prompt": 'Answer """like this"""'}).status_code == 200
    created = client.post(f"/v1/models/{model}/exports", headers=ACME, json={"format": "ollama"}).json()
    assert ExportWorker(deps, owner="w").run_next()
    failed = client.get(f"/v1/models/{model}/exports/{created['id']}", headers=ACME).json()
    assert failed["status"] == "failed" and failed["sha256"] is None
    assert failed["error"] == {"code": "export_failed",
                               "message": "The system prompt holds three quotes in a row, which a Modelfile cannot "
                                          "contain."}


def test_deleting_a_model_removes_its_exports(client: TestClient, deps: RegistryDeps, worker: ExportWorker,
                                              small_adapter: Path) -> None:
    model = upload(client, small_adapter)
    done = finished(client, model, client.post(f"/v1/models/{model}/exports", headers=ACME,
                                               json={"format": "adapter"}).json()["id"])
    folder = deps.artifacts_dir / "acme" / "exports" / done["id"]  # type: ignore[operator]
    assert (folder / done["filename"]).is_file()
    assert client.delete(f"/v1/models/{model}", headers=ACME).status_code == 200
    assert not folder.exists()
    with deps.db.session() as s:
        assert s.get(ModelExport, done["id"]) is None


def test_exports_in_an_s3_store(db: Database, tmp_path: Path, small_models: Path, small_adapter: Path,
                                s3_server: S3Server, s3_bucket: str) -> None:
    """With the artifact store in a bucket: the adapter is read from it, the export written to it,
    downloaded streamed from it, and removed from it with its model."""
    create_tenant(db, "acme")
    add_api_key(db, "acme", "cf-acme")
    settings = RegistrySettings(base_models=[BASE], models_dir=small_models, storage_url=f"s3://{s3_bucket}/registry",
                                storage_endpoint_url=s3_server.endpoint_url, storage_options=s3_server.options,
                                staging_dir=tmp_path / "staging")
    deps = RegistryDeps(db=db, settings=settings, publisher=Recorder(db))  # type: ignore[arg-type]
    with TestClient(app_of(deps), raise_server_exceptions=False) as client:
        model = upload(client, small_adapter)
        created = client.post(f"/v1/models/{model}/exports", headers=ACME, json={"format": "gguf"}).json()
        assert ExportWorker(deps, owner="s3-worker").run_next()
        done = finished(client, model, created["id"])
        assert done["status"] == "succeeded", done
        r = client.get(f"/v1/models/{model}/exports/{done['id']}/content", headers=ACME)
        assert r.status_code == 200 and r.headers["content-length"] == str(done["bytes"])
        assert hashlib.sha256(r.content).hexdigest() == done["sha256"] and r.content[:4] == b"GGUF"
        key = f"registry/acme/exports/{done['id']}/{done['filename']}"
        s3 = s3_server.client()
        assert s3.head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == done["bytes"]
        assert client.delete(f"/v1/models/{model}", headers=ACME).status_code == 200
        assert s3.list_objects_v2(Bucket=s3_bucket, Prefix="registry/acme/exports/").get("Contents", []) == []
    assert not any((tmp_path / "staging").iterdir())  # the conversion's folder is gone


def test_exports_over_grpc(client: TestClient, deps: RegistryDeps, worker: ExportWorker,
                           small_adapter: Path) -> None:
    model = upload(client, small_adapter)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = GrpcServerThread([registration(deps)], Authenticator(deps.db, internal_token="internal"),
                              f"127.0.0.1:{port}", max_workers=4).start()
    try:
        wait_for_health(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            acme, globex = (("authorization", "Bearer cf-acme"),), (("authorization", "Bearer cf-globex"),)
            created = stub.CreateExport(registry_pb2.CreateExportRequest(model_id=model, format="gguf",
                                                                         quantization="q4_0"), metadata=acme)
            assert (created.format, created.quantization) == ("gguf", "q4_0")
            assert created.id.startswith("export_") and created.status in ("queued", "running", "succeeded")
            deadline = time.monotonic() + 120
            got = created
            while got.status not in ("succeeded", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
                got = stub.GetExport(registry_pb2.GetExportRequest(model_id=model, export_id=created.id),
                                     metadata=acme)
            assert got.status == "succeeded" and len(got.sha256) == 64 and got.bytes > 0
            listed = stub.ListExports(registry_pb2.ListExportsRequest(model_id=model), metadata=acme).exports
            assert [e.id for e in listed] == [created.id]
            rest = client.get(f"/v1/models/{model}/exports/{created.id}", headers=ACME).json()
            assert (rest["sha256"], rest["bytes"]) == (got.sha256, got.bytes)
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateExport(registry_pb2.CreateExportRequest(model_id=model, format="zip"), metadata=acme)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as hidden:
                stub.GetExport(registry_pb2.GetExportRequest(model_id=model, export_id=created.id), metadata=globex)
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


@pytest.fixture
def api_url(deps: RegistryDeps) -> Iterator[str]:
    """The registry's REST API on a real port (the command streams the download over HTTP)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app_of(deps), host="127.0.0.1", port=port, log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_the_export_command_waits_and_downloads(client: TestClient, deps: RegistryDeps, worker: ExportWorker,
                                                small_adapter: Path, api_url: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model = upload(client, small_adapter)
    api_args = ["--base-url", api_url, "--api-key", "cf-acme"]
    assert main(["models", "export", model, "--format", "gguf", "--quantization", "q8_0", "-o", str(tmp_path),
                 "--quiet", *api_args]) == 0
    [done] = client.get(f"/v1/models/{model}/exports", headers=ACME).json()["data"]
    target = tmp_path / done["filename"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == done["sha256"]
    assert f"{target}  {done['bytes']} bytes  sha256 {done['sha256']}" in capsys.readouterr().out.splitlines()
    assert not list(tmp_path.glob("*.part"))

    assert main(["models", "export", model, "--format", "adapter", "-o", str(tmp_path / "a.tgz"), "--quiet",
                 *api_args]) == 0
    assert (tmp_path / "a.tgz").is_file()
    assert main(["models", "export", "ft:nothing:acme:x:1", "--format", "gguf", "--quiet", *api_args]) == 1
    assert "404: The model 'ft:nothing:acme:x:1' does not exist" in capsys.readouterr().err
    with deps.db.session() as s:  # every export the command asked for was made once
        assert sorted(e.format for e in repository.exports_of(s, _version_id(s, model))) == ["adapter", "gguf"]


def _version_id(s: Any, model: str) -> str:
    v = repository.version(s, "acme", model)
    assert v is not None
    return v.id
