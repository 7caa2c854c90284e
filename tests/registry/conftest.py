"""Registry fixtures: the registry's dependencies on the test database with two tenants (acme,
globex) and its REST router in an app of its own, an empty bucket per test on the local
S3-compatible server (``s3_server`` in tests/conftest.py), and a real PEFT LoRA adapter saved by
peft."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_versions import Recorder

from coachforge_registry import api
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.http import install_error_handlers

if TYPE_CHECKING:
    from conftest import S3Server  # tests/conftest.py

BASE = "SmolLM2-135M-Instruct"


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> RegistryDeps:
    """The registry's dependencies; tenants acme and globex with the keys ``cf-acme`` and ``cf-globex``."""
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
        add_api_key(db, tenant, f"cf-{tenant}")
    return RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE]), artifacts_dir=tmp_path / "store",
                        platform_models_dir=tmp_path / "models", publisher=Recorder(db))  # type: ignore[arg-type]


@pytest.fixture
def client(deps: RegistryDeps) -> TestClient:
    """The registry's REST router over ``deps``."""
    app = FastAPI()
    app.state.authenticator, app.state.registry = Authenticator(deps.db, internal_token="internal"), deps
    install_error_handlers(app)
    app.include_router(api.router)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty bucket for one test, removed with its objects afterwards."""
    client = s3_server.client()
    bucket = "registry-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    client.create_bucket(Bucket=bucket)
    yield bucket
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="session")
def peft_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter (rank 8 on q_proj/v_proj) saved by peft's ``save_pretrained`` from a small
    Llama model whose name is the base model's, so its adapter_config.json and safetensors weights
    are exactly what a training run writes (a tiny model keeps it fast)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    model.name_or_path = f"/models/{BASE}"
    model.config._name_or_path = f"/models/{BASE}"
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM", init_lora_weights=False))
    out = tmp_path_factory.mktemp("peft") / "adapter"
    peft_model.save_pretrained(str(out))
    return out
