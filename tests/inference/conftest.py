"""Fixtures of the inference tests: real PEFT LoRA adapters for the small base model, a second
real vLLM CPU engine (same model folder and flags as the all-in-one engine, --max-loras 2), and
small local HTTP servers that answer like a vLLM engine (:class:`FakeEngine`) for the routing
tests that need no model."""

from __future__ import annotations

import asyncio
import json
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
from aiohttp import web

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


class FakeEngine:
    """A local HTTP server that speaks the parts of vLLM's OpenAI server the gateway uses (health,
    runtime LoRA load/unload, chat and text completions, streamed or not, with the usage chunk),
    standing in for a GPU engine in the routing tests. Run it inside the test's event loop:
    ``async with FakeEngine() as engine``. Its attributes say what it was asked and steer it."""

    BASE = "fake-base"
    """The base model it serves."""

    def __init__(self, *, load_delay: float = 0.0, chunks: int = 3) -> None:
        self.load_delay, self.chunks = load_delay, chunks
        self.healthy = True
        self.dead = False
        """Every request (health included) has its connection cut, as by a killed process."""
        self.die_after: int | None = None
        """Cut the connection (and die) after this many chunks of a stream."""
        self.error_after: int | None = None
        """Send vLLM's error event after this many chunks of a stream."""
        self.refuse: set[str] = set()
        """Adapters whose load is refused (400)."""
        self.loaded: set[str] = set()
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeEngine:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def _cut(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async def _health(self, request: web.Request) -> web.StreamResponse:
        if self.dead:
            return self._cut(request)
        return web.Response(status=200 if self.healthy else 503)

    async def _load(self, request: web.Request) -> web.StreamResponse:
        if self.dead:
            return self._cut(request)
        body = await request.json()
        name = body["lora_name"]
        await asyncio.sleep(self.load_delay)
        if name in self.refuse:
            return web.json_response({"error": {"message": f"cannot load {name}", "code": 400}}, status=400)
        if name in self.loaded:
            return web.json_response({"error": {"message": f"The lora adapter '{name}' has already been loaded.",
                                                "code": 400}}, status=400)
        self.loads.append(name)
        self.loaded.add(name)
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.StreamResponse:
        if self.dead:
            return self._cut(request)
        name = (await request.json())["lora_name"]
        self.unloads.append(name)
        if name not in self.loaded:
            return web.json_response({"error": {"message": f"{name} not found", "code": 404}}, status=404)
        self.loaded.discard(name)
        return web.Response(text="Success")

    def _chunk(self, model: str, chat: bool, i: int, last: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if last else None}
        if chat:
            choice["delta"] = {"content": f"t{i}"}
        else:
            choice["text"] = f"t{i}"
        return {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
                "created": 1, "model": model, "choices": [choice]}

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        if self.dead:
            return self._cut(request)
        body = await request.json()
        self.bodies.append(body)
        model, chat = body["model"], request.path.endswith("/chat/completions")
        if model != self.BASE and model not in self.loaded:
            return web.json_response({"error": {"object": "error", "message": f"The model `{model}` does not exist.",
                                                "type": "NotFoundError", "param": None, "code": 404}}, status=404)
        usage = {"prompt_tokens": 3, "completion_tokens": self.chunks, "total_tokens": 3 + self.chunks}
        if not body.get("stream"):
            text = "".join(f"t{i}" for i in range(self.chunks))
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length"})
            return web.json_response({"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                                      "created": 1, "model": model, "choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        running = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        for i in range(self.chunks):
            if i == self.die_after:
                self.dead = True
                assert request.transport is not None
                request.transport.abort()
                return response
            if i == self.error_after:
                error = {"error": {"object": "error", "message": "engine failed mid-stream",
                                   "type": "InternalServerError", "param": None, "code": 500}}
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                await response.write(b"data: [DONE]\n\n")
                return response
            chunk = self._chunk(model, chat, i, i == self.chunks - 1)
            if running:  # vLLM's continuous_usage_stats: the tokens so far in every chunk
                chunk["usage"] = {"prompt_tokens": 3, "total_tokens": 4 + i, "completion_tokens": i + 1}
            await response.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
            await asyncio.sleep(0)
        if (body.get("stream_options") or {}).get("include_usage"):
            last = {"id": "cmpl-fake", "object": "text_completion", "created": 1, "model": model, "choices": [],
                    "usage": usage}
            await response.write(b"data: " + json.dumps(last, separators=(",", ":")).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
def fake_engine() -> type[FakeEngine]:
    """:class:`FakeEngine`, to start inside a test's event loop: ``async with fake_engine() as e``."""
    return FakeEngine
