"""Creating a continued-training job through the trainer's REST API, against the registry's real
gRPC service: the parent model is found (for its own tenant only), and a LoRA shape other than the
parent's, an unusable backend or method, or conflicting hyperparameters are 400s in OpenAI's error
body naming the parameter, before any training data is looked at."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.trainer.v1 import trainer_pb2
from coachforge_registry import grpc as registry_grpc
from coachforge_registry import service as registry_service
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.events import publish_in
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel
from coachforge_shared.http import install_error_handlers
from coachforge_trainer import api
from coachforge_trainer.service import TrainerDeps
from coachforge_trainer.settings import TrainerSettings

BASE = "SmolLM2-135M-Instruct"
PARENT = f"ft:{BASE}:acme:coach:parent01"
INTERNAL = "internal-token"


class OutboxOnly:
    """The publisher without a broker: events go to the outbox in the caller's transaction."""

    def publish_in(self, s: Session, event_type: str, payload: Any, tenant_id: str, key: str | None = None) -> str:
        return publish_in(s, event_type, payload, tenant_id, key)


def _adapter(folder: Path) -> Path:
    """A LoRA adapter (rank 8, alpha 16 on q_proj/v_proj) saved by peft from a tiny Llama named as the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    model.config._name_or_path = f"/models/{BASE}"
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM", init_lora_weights=False))
    peft_model.save_pretrained(str(folder))
    return folder


@pytest.fixture
def client(db: Database, tmp_path: Path) -> Iterator[TestClient]:
    """The trainer's REST router for tenants acme (keys ``cf-acme``, owning PARENT) and globex, its
    registry channel on the registry's gRPC service (its dataset channel leads nowhere)."""
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
        add_api_key(db, tenant, f"cf-{tenant}")
    registry = RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE]), artifacts_dir=tmp_path / "store",
                            platform_models_dir=tmp_path / "models", publisher=OutboxOnly())  # type: ignore[arg-type]
    hyperparameters = {"n_epochs": 1, "lora_r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    with db.session() as s:  # the version a finished job of acme's registered
        registry_service.on_job_succeeded(registry, s, Envelope(tenant_id="acme"), trainer_pb2.JobSucceeded(
            job_id="ftjob-parent01", base_model=BASE, fine_tuned_model=PARENT,
            adapter_uri=str(_adapter(tmp_path / "job" / "adapter")), lora_rank=8,
            target_modules=["q_proj", "v_proj"], training_file="file-1",
            hyperparameters_json=json.dumps(hyperparameters)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    authenticator = Authenticator(db, internal_token=INTERNAL)
    server = GrpcServerThread([registry_grpc.registration(registry)], authenticator, f"127.0.0.1:{port}").start()
    registry_channel = InternalChannel(f"127.0.0.1:{port}", INTERNAL)
    nowhere = InternalChannel("127.0.0.1:1", INTERNAL)
    deps = TrainerDeps(db=db, settings=TrainerSettings(), publisher=OutboxOnly(),  # type: ignore[arg-type]
                       dataset=nowhere, registry=registry_channel)
    app = FastAPI()
    app.state.authenticator, app.state.trainer = authenticator, deps
    install_error_handlers(app)
    app.include_router(api.router)
    try:
        yield TestClient(app, raise_server_exceptions=False)
    finally:
        registry_channel.close()
        nowhere.close()
        server.stop()


def _create(client: TestClient, tenant: str = "acme", **body: Any) -> dict[str, Any]:
    response = client.post("/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer cf-{tenant}"},
                           json={"model": PARENT, "training_file": "file-x", **body})
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(("body", "param"), [
    ({"hyperparameters": {"lora_r": 16}}, "hyperparameters.lora_r"),
    ({"hyperparameters": {"lora_alpha": 32}}, "hyperparameters.lora_alpha"),
    ({"hyperparameters": {"target_modules": ["q_proj", "k_proj", "v_proj"]}}, "hyperparameters.target_modules"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_r": 4}}}},
     "method.supervised.hyperparameters.lora_r"),
])
def test_a_lora_shape_other_than_the_parent_s_is_refused(client: TestClient, body: dict[str, Any],
                                                         param: str) -> None:
    error = _create(client, **body)
    assert (error["param"], error["code"]) == (param, "incompatible_parent_model")
    assert PARENT in error["message"] and "inherit" in error["message"]


@pytest.mark.parametrize("model", [PARENT, f"ft:{BASE}:acme:coach:unknown1"])
def test_another_tenant_s_or_an_unknown_fine_tuned_model_is_not_available(client: TestClient, model: str) -> None:
    error = _create(client, tenant="globex" if model == PARENT else "acme", model=model)
    assert (error["param"], error["code"]) == ("model", "model_not_available")
    assert model in error["message"]


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"backend": "unsloth"}, "backend", "backend_unavailable"),
    ({"backend": "openai_compatible"}, "backend", "backend_not_configured"),
    ({"backend": "nope"}, "backend", "invalid_backend"),
    ({"method": {"type": "reinforcement"}}, "method.type", "unsupported_method"),
    ({"method": {"type": "supervised", "dpo": {}}}, "method.dpo", "invalid_method"),
    ({"hyperparameters": {"n_epochs": 2}, "method": {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3}}}}, "hyperparameters.n_epochs", "conflicting_hyperparameters"),
    ({"method": {"type": "ppo"}}, "method.type", "invalid_value"),
])
def test_method_and_backend_errors_name_the_param(client: TestClient, body: dict[str, Any], param: str,
                                                  code: str) -> None:
    error = _create(client, **body)
    assert (error["param"], error["code"]) == (param, code)


def test_a_remote_backend_cannot_continue_the_training_of_a_local_adapter(client: TestClient, tmp_path: Path) -> None:
    remotes = tmp_path / "remotes.json"
    remotes.write_text(json.dumps({"acme": {"base_url": "https://api.openai.com/v1", "api_key": "sk-test"}}))
    client.app.state.trainer.settings.remotes_file = str(remotes)  # type: ignore[attr-defined]
    error = _create(client, backend="openai_compatible")
    assert (error["param"], error["code"]) == ("model", "unsupported_continued_training")
    assert PARENT in error["message"] and BASE in error["message"]


def test_an_external_model_cannot_be_trained_further(client: TestClient, db: Database, tmp_path: Path) -> None:
    """An external model (a remote trained it and offers no download) has no adapter here to start from."""
    external = f"ft:{BASE}:acme:remote:ext00001"
    registry = RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE]), artifacts_dir=tmp_path / "store",
                            platform_models_dir=tmp_path / "models", publisher=OutboxOnly())  # type: ignore[arg-type]
    with db.session() as s:
        registry_service.on_job_succeeded(registry, s, Envelope(tenant_id="acme"), trainer_pb2.JobSucceeded(
            job_id="ftjob-ext00001", base_model=BASE, fine_tuned_model=external, training_file="file-1",
            remote_job_id="ftjob-r1", remote_model="ft:remote-model:x", remote_base_url="https://api.openai.com/v1"))
    error = _create(client, model=external)
    assert (error["param"], error["code"]) == ("model", "unsupported_continued_training")
    assert external in error["message"] and "external model" in error["message"] and BASE in error["message"]
