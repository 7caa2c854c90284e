"""Inference sends the engines' API key on every engine call. The engine here is a small app behind
vLLM's own authentication middleware (the one ``--api-key`` / ``VLLM_API_KEY`` turns on), so the
check is the engine's: without the key, nothing under /v1 answers (no generation, no adapter
loads); with it, everything does."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from coachforge_inference.engine import Engine
from coachforge_inference.pool import EnginePool
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.errors import CoachForgeError

KEY = "engine-key-" + "k" * 32
SEEN: list[tuple[str, str | None]] = []


async def _chat(request: Request) -> Response:
    SEEN.append((request.url.path, request.headers.get("authorization")))
    body = await request.json()
    if body.get("stream"):
        async def events() -> Any:
            yield b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse({"choices": [{"message": {"content": "hi"}}]})


async def _adapter(request: Request) -> Response:
    SEEN.append((request.url.path, request.headers.get("authorization")))
    return PlainTextResponse("ok")


async def _health(request: Request) -> Response:
    return PlainTextResponse("")


@pytest.fixture(scope="module")
def engine_url() -> Iterator[str]:
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"]),
                            Route("/v1/load_lora_adapter", _adapter, methods=["POST"]),
                            Route("/v1/unload_lora_adapter", _adapter, methods=["POST"]),
                            Route("/health", _health)])
    app.add_middleware(AuthenticationMiddleware, tokens=[KEY])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_the_engine_refuses_calls_without_its_key(engine_url: str) -> None:
    assert httpx.post(f"{engine_url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/etc"}).status_code \
        == 401
    assert httpx.post(f"{engine_url}/v1/chat/completions", json={},
                      headers={"Authorization": "Bearer wrong"}).status_code == 401


def _exercise(engine: Engine) -> tuple[bytes, list[bytes], bool, bool]:
    async def run() -> tuple[bytes, list[bytes], bool, bool]:
        body = json.dumps({"model": "m", "messages": []}).encode()
        try:
            answer = await engine.post("/v1/chat/completions", body)
            lines = [line async for line in engine.stream("/v1/chat/completions",
                                                          json.dumps({"stream": True}).encode())]
            await engine.load_adapter("a", "/adapters/a")
            unloaded = await engine.unload_adapter("a")
            return answer, lines, unloaded, await engine.health()
        finally:
            await engine.close()

    return asyncio.run(run())


def test_every_engine_call_carries_the_key(engine_url: str) -> None:
    SEEN.clear()
    answer, lines, unloaded, healthy = _exercise(Engine(engine_url, 10, KEY))
    assert json.loads(answer)["choices"][0]["message"]["content"] == "hi"
    assert b"data: [DONE]\n" in lines and unloaded and healthy
    paths = ["/v1/chat/completions", "/v1/chat/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
    assert list(SEEN) == [(path, f"Bearer {KEY}") for path in paths]


def test_without_the_key_inference_gets_nothing_from_the_engine(engine_url: str) -> None:
    with pytest.raises(CoachForgeError) as err:
        _exercise(Engine(engine_url, 10))
    assert getattr(err.value, "http_status", None) == 401


def test_the_pool_takes_the_key_from_the_settings(engine_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COACHFORGE_INFERENCE_ENGINE_URL", engine_url)
    monkeypatch.setenv("COACHFORGE_INFERENCE_ENGINE_API_KEY", KEY)
    settings = InferenceSettings()
    assert KEY not in repr(settings)  # a secret: never printed with the settings
    pool = EnginePool.from_settings(settings)
    SEEN.clear()
    _exercise(pool.engines[0].client)
    assert SEEN and all(auth == f"Bearer {KEY}" for _, auth in SEEN)
