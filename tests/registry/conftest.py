"""Registry fixtures: a local S3-compatible server (moto's, in a thread, on a free port) with an
empty bucket per test, and a real PEFT LoRA adapter saved by peft."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BASE = "SmolLM2-135M-Instruct"


@dataclass
class S3Server:
    """Where the local S3-compatible server listens and how to reach it."""

    endpoint_url: str
    options: dict[str, Any]  # fsspec/s3fs storage options: credentials and region

    def client(self) -> Any:
        """A plain boto3 client on the same server, to look at the objects behind the registry's back."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.options["key"],
                            aws_secret_access_key=self.options["secret"], region_name="us-east-1")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}",
                       options={"key": "coachforge-test", "secret": "coachforge-test-secret",
                                "client_kwargs": {"region_name": "us-east-1"}})
    finally:
        server.stop()


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
