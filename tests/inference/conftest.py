"""Fixtures of the inference tests: real PEFT LoRA adapters for the small base model, and a second
real vLLM CPU engine (same model folder and flags as the all-in-one engine, --max-loras 2)."""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coachforge_launcher.models import BASE_MODEL_ID

SECOND_ENGINE_MAX_LORAS = 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def base_avatar(stack) -> str:  # type: ignore[no-untyped-def]
    """A new avatar of the stack's default tenant on the base model, created over REST (its name)."""
    name = f"avatar-{secrets.token_hex(4)}"
    r = httpx.post(f"{stack.base_url}/avatars", headers={"Authorization": f"Bearer {stack.api_key}"},
                   json={"name": name, "model": BASE_MODEL_ID})
    assert r.status_code == 200, r.text
    return name


@pytest.fixture
def avatar_usage(stack):  # type: ignore[no-untyped-def]
    """``avatar_usage(avatar, messages)``: the avatar's daily usage rows (``GET /v1/usage``) once
    they count ``messages`` answers, or as they stand after 60 s."""
    def rows_for(avatar: str, messages: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 60
        while True:
            rows: list[dict[str, Any]] = httpx.get(
                f"{stack.base_url}/usage", headers={"Authorization": f"Bearer {stack.api_key}"},
                params={"avatar": avatar}).json()["data"]
            if (rows and rows[0]["messages"] == messages) or time.monotonic() > deadline:
                return rows
            time.sleep(0.5)
    return rows_for


@pytest.fixture(scope="session")
def stack_engine_url(stack) -> str:  # type: ignore[no-untyped-def]
    """The all-in-one engine's base URL, read from the stack's supervisord configuration."""
    conf = (stack.data_dir / "supervisord.conf").read_text()
    for section in conf.split("[program:"):
        if section.startswith("engine]"):
            command = next(line for line in section.splitlines() if line.startswith("command="))
            args = shlex.split(command.removeprefix("command="))
            return f"http://{args[args.index('--host') + 1]}:{args[args.index('--port') + 1]}"
    raise AssertionError("no engine program in the stack's supervisord.conf")


_MAKE_ADAPTERS = """
import sys
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

base_dir, root, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False, task_type="CAUSAL_LM"))
for i in range(count):
    torch.manual_seed(i)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.01)
    model.save_pretrained(f"{root}/adapter-{i}")
"""


@pytest.fixture(scope="session")
def lora_adapters(tmp_path_factory: pytest.TempPathFactory, base_model_dir: Path) -> list[Path]:
    """Five real PEFT LoRA adapters (rank 8 on q_proj/v_proj, randomly initialised, each its own
    weights) for the base model, saved with peft (in a child process, so the model's memory is
    given back at once)."""
    root = tmp_path_factory.mktemp("adapters")
    subprocess.run([sys.executable, "-c", _MAKE_ADAPTERS, str(base_model_dir), str(root), "5"], check=True,
                   timeout=600)
    paths = [root / f"adapter-{i}" for i in range(5)]
    assert all((p / "adapter_model.safetensors").is_file() for p in paths)
    return paths


@pytest.fixture(scope="session")
def second_engine(second_engine_process: tuple[str, subprocess.Popen[bytes]]) -> str:
    """The second engine's base URL."""
    return second_engine_process[0]


@pytest.fixture(scope="session")
def second_engine_process(stack, base_model_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:  # type: ignore[no-untyped-def]
    """A second real vLLM engine on CPU, started after the stack (so never two extra engines): its
    URL and process (a test may kill it; it is not started again)."""
    port = _free_port()
    log = open(stack.data_dir / "second-engine.log", "wb")  # noqa: SIM115
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true", "VLLM_CPU_KVCACHE_SPACE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_model_dir),
        "--served-model-name", BASE_MODEL_ID, "--host", "127.0.0.1", "--port", str(port),
        "--enable-lora", "--max-lora-rank", "16", "--max-loras", str(SECOND_ENGINE_MAX_LORAS),
        "--max-model-len", "512", "--dtype", "float32", "--gpu-memory-utilization", "0.05",
        "--disable-uvicorn-access-log"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output = (stack.data_dir / "second-engine.log").read_text()[-3000:]
                raise RuntimeError(f"second engine exited: {output}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise TimeoutError("second engine did not start")
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
