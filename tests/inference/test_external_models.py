"""External models (a remote fine-tuning API trained them and offers no download of the adapter)
are served through inference by their remote: against a stand-in for a remote OpenAI-compatible API
over real HTTP (OpenAI itself cannot be reached here), the request is forwarded to the registry's
base URL with the remote's model name and the tenant's key from the remotes file, never to an
engine; the answer is renamed back to the CoachForge model; its usage is counted, billed and
published like an engine's answer, streamed or not; chat and text completions, avatars, candidates
and stored completions take the same path; the remote's errors keep their status and message (and
never show the key); a tenant without a remote, a remote other than the model's and a remote that
cannot be reached are clear errors."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from coachforge.registry.v1 import registry_pb2
from coachforge_inference import api, service
from coachforge_inference.external import RemoteError
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, Resolution
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import CoachForgeError, Unavailable
from coachforge_shared.grpc_server import InternalChannel
from coachforge_shared.http import install_error_handlers

TENANT = "acme"
KEY = "sk-remote-" + "k" * 24
BASE = "gpt-4o-mini-2024-07-18"
REMOTE_MODEL = "ft:gpt-4o-mini-2024-07-18:acme-org:coach:AbC123"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


# -- a stand-in remote: OpenAI's chat and text completions, streamed or not ----------------------------

@dataclass
class StandIn:
    """What the stand-in remote answers and what it was asked (in its own thread and event loop)."""

    url: str = ""
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    error: tuple[int, dict[str, Any]] | None = None
    """An error (status, body) every request is answered with."""
    chunks: int = 3

    def last(self) -> tuple[str, dict[str, str], dict[str, Any]]:
        return self.requests[-1]

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, dict(request.headers), body))
        if self.error is not None:
            return web.json_response(self.error[1], status=self.error[0])
        model, chat = body["model"], request.path.endswith("/chat/completions")
        usage = {"prompt_tokens": 11, "completion_tokens": self.chunks, "total_tokens": 11 + self.chunks}
        if not body.get("stream"):
            text = "".join(f"r{i}" for i in range(self.chunks))
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                      if chat else {"index": 0, "text": text, "finish_reason": "stop"})
            # OpenAI's spacing is not the engines': the answer is renamed all the same.
            return web.Response(text=json.dumps({
                "id": "chatcmpl-remote", "object": "chat.completion" if chat else "text_completion", "created": 7,
                "model": model, "choices": [choice], "usage": usage, "system_fingerprint": "fp_remote"}),
                content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for i in range(self.chunks):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if i == self.chunks - 1 else None}
            if chat:
                choice["delta"] = {"content": f"r{i}"}
            else:
                choice["text"] = f"r{i}"
            chunk: dict[str, Any] = {"id": "chatcmpl-remote", "object": "chat.completion.chunk", "created": 7,
                                     "model": model, "choices": [choice]}
            if include_usage:
                chunk["usage"] = None  # OpenAI: null in every chunk but the last
            await response.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
        if include_usage:
            last = {"id": "chatcmpl-remote", "object": "chat.completion.chunk", "created": 7, "model": model,
                    "choices": [], "usage": usage}
            await response.write(b"data: " + json.dumps(last, separators=(",", ":")).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    @staticmethod
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", state._complete)
        app.router.add_post("/v1/completions", state._complete)
        r = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await r.setup()
        port = StandIn.free_port()
        await web.TCPSite(r, "127.0.0.1", port).start()
        state.url = f"http://127.0.0.1:{port}/v1"
        runner.append(r)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield state
    asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


# -- the service without the stack --------------------------------------------------------------------

class _Publisher:
    """Keeps what would be published (the broker is not what these tests are about)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any, str]] = []

    def publish(self, topic: str, message: Any, tenant_id: str, **_: Any) -> str:
        self.published.append((topic, message, tenant_id))
        return "evt"

    def of(self, topic: str) -> list[Any]:
        return [m for t, m, _ in self.published if t == topic]


def _remotes(tmp_path: Path, entries: dict[str, Any]) -> str:
    path = tmp_path / "remotes.json"
    path.write_text(json.dumps(entries))
    return str(path)


def _external(name: str, url: str, fallback: str = "") -> registry_pb2.Model:
    return registry_pb2.Model(id=f"ft:{BASE}:{TENANT}:coach:{name}", owned_by=TENANT, base_model=BASE,
                              adapter_name=f"mv-{name}", external_model=REMOTE_MODEL, external_base_url=url,
                              fallback=fallback)


def _deps(remotes_file: str | None, engine_url: str = "http://127.0.0.1:9") -> InferenceDeps:
    """Deps whose engine cannot be reached: an external model's request never goes there."""
    deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600, remotes_file=remotes_file),
                         registry=InternalChannel("127.0.0.1:9", "internal"),
                         engines=EnginePool([engine_url], timeout_s=5, health_interval_s=0))
    deps.publisher = _Publisher()  # type: ignore[assignment]
    return deps


def _seed(deps: InferenceDeps, name: str, resolution: Resolution) -> str:
    deps._cache[(TENANT, name)] = (time.monotonic(), resolution)
    return name


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Heavy legs. Rest?"}], "max_tokens": 5, **extra}


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _counts(model: str) -> tuple[float, float, float]:
    return (_metric("coachforge_inference_tokens_total", tenant=TENANT, model=model, kind="prompt", purpose="app"),
            _metric("coachforge_inference_tokens_total", tenant=TENANT, model=model, kind="completion",
                    purpose="app"),
            _metric("coachforge_inference_cost_usd_total", tenant=TENANT, model=model, purpose="app"))


async def _lines(events: AsyncIterator[bytes]) -> list[bytes]:
    return [line async for line in events if line.strip()]


def test_a_chat_completion_is_forwarded_renamed_and_billed(stand_in: StandIn, tmp_path: Path) -> None:
    async def run() -> None:
        deps = _deps(_remotes(tmp_path, {TENANT: {"base_url": stand_in.url + "/", "api_key": KEY}}))
        model = _external(secrets.token_hex(3), stand_in.url)
        name = _seed(deps, model.id, Resolution(model))
        before = _counts(model.id)
        try:
            raw, routed = await service.complete(deps, TENANT, CHAT, _chat(name, temperature=0.2, user="athlete-7"))
        finally:
            await deps.close()
        answer = json.loads(raw)
        assert answer["model"] == model.id and answer["choices"][0]["message"]["content"] == "r0r1r2"
        assert answer["usage"]["prompt_tokens"] == 11 and answer["system_fingerprint"] == "fp_remote"

        path, headers, body = stand_in.last()
        assert path == "/v1/chat/completions" and headers["Authorization"] == f"Bearer {KEY}"
        assert body == {"model": REMOTE_MODEL, "messages": _chat(name)["messages"], "max_tokens": 5,
                        "temperature": 0.2, "user": "athlete-7"}
        assert routed.model.id == model.id and routed.engine == stand_in.url
        assert routed.headers()["x-coachforge-model"] == model.id and routed.engine_seconds > 0

        price = deps.settings.fine_tuned_price
        after = _counts(model.id)
        assert (after[0] - before[0], after[1] - before[1]) == (11, 3)
        assert after[2] - before[2] == pytest.approx((11 * price.input + 3 * price.output) / 1e6)
        [usage] = deps.publisher.of("usage.recorded")  # type: ignore[union-attr]
        assert (usage.model, usage.base_model, usage.prompt_tokens, usage.completion_tokens, usage.purpose) == (
            model.id, BASE, 11, 3, "app")
        assert usage.cost_usd == pytest.approx(after[2] - before[2])

    asyncio.run(run())


def test_text_completions_avatars_candidates_and_stored_completions_take_the_same_path(
        stand_in: StandIn, tmp_path: Path, fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as engine:
            deps = _deps(_remotes(tmp_path, {TENANT: {"base_url": stand_in.url, "api_key": KEY}}), engine.url)
            version = secrets.token_hex(3)
            model = _external(version, stand_in.url)
            _seed(deps, model.id, Resolution(model))
            avatar = _seed(deps, f"coach-{secrets.token_hex(3)}",
                           Resolution(_external(version, stand_in.url, fallback="error"), store=True))
            base = registry_pb2.Model(id=engine.BASE, base_model=engine.BASE, fallback="error")
            ab = _seed(deps, f"ab-{secrets.token_hex(3)}", Resolution(base, _external("cand", stand_in.url), 100))
            try:
                raw, _ = await service.complete(deps, TENANT, COMPLETIONS, {"model": model.id, "prompt": "Rest?"})
                assert stand_in.last()[0] == "/v1/completions" and stand_in.last()[2]["model"] == REMOTE_MODEL
                assert json.loads(raw)["model"] == model.id and json.loads(raw)["choices"][0]["text"] == "r0r1r2"

                raw, routed = await service.complete(deps, TENANT, CHAT, _chat(avatar, metadata={"app": "polarize"}))
                assert json.loads(raw)["model"] == model.id and routed.avatar == avatar
                assert "store" not in stand_in.last()[2] and "metadata" not in stand_in.last()[2]
                [stored] = deps.publisher.of("completion.stored")  # type: ignore[union-attr]
                assert (stored.model, stored.requested_model, stored.avatar) == (model.id, avatar, avatar)
                assert json.loads(stored.choices_json)[0]["message"]["content"] == "r0r1r2"

                raw, routed = await service.complete(deps, TENANT, CHAT, _chat(ab))
                assert routed.arm == "candidate" and json.loads(raw)["model"] == f"ft:{BASE}:{TENANT}:coach:cand"
            finally:
                await deps.close()
            assert engine.bodies == [] and len(stand_in.requests) == 3  # the engine was never asked
            usage = deps.publisher.of("usage.recorded")  # type: ignore[union-attr]
            assert [(u.model, u.avatar) for u in usage] == [(model.id, ""), (model.id, avatar),
                                                             (f"ft:{BASE}:{TENANT}:coach:cand", ab)]

    asyncio.run(run())


def test_a_stream_is_forwarded_with_its_usage_asked_and_billed(stand_in: StandIn, tmp_path: Path) -> None:
    async def run() -> None:
        deps = _deps(_remotes(tmp_path, {TENANT: {"base_url": stand_in.url, "api_key": KEY}}))
        model = _external(secrets.token_hex(3), stand_in.url)
        name = _seed(deps, model.id, Resolution(model))
        before = _counts(model.id)
        try:
            events, routed = await service.stream(deps, TENANT, CHAT, _chat(name, stream=True))
            lines = await _lines(events)
            # Asked for the usage anyway (every stream is billed), without vLLM's running usage.
            assert stand_in.last()[2]["stream_options"] == {"include_usage": True}
            assert stand_in.last()[2]["model"] == REMOTE_MODEL
            chunks = [json.loads(line[6:]) for line in lines if line.startswith(b"data: {")]
            assert [c["model"] for c in chunks] == [model.id] * 3 and all(c["choices"] for c in chunks)
            assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "r0r1r2"
            assert lines[-1] == b"data: [DONE]\n" and routed.usage == {"prompt_tokens": 11, "completion_tokens": 3,
                                                                       "total_tokens": 14}

            events, _ = await service.stream(deps, TENANT, CHAT, _chat(
                name, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}))
            chunks = [json.loads(line[6:]) for line in await _lines(events) if line.startswith(b"data: {")]
            assert stand_in.last()[2]["stream_options"] == {"include_usage": True}
            assert chunks[-1]["usage"]["completion_tokens"] == 3 and not chunks[-1]["choices"]
            assert chunks[-1]["model"] == model.id
        finally:
            await deps.close()
        after = _counts(model.id)
        assert (after[0] - before[0], after[1] - before[1]) == (22, 6)
        assert [(u.model, u.prompt_tokens, u.completion_tokens) for u in deps.publisher.of(  # type: ignore[union-attr]
            "usage.recorded")] == [(model.id, 11, 3), (model.id, 11, 3)]

    asyncio.run(run())


def test_the_remote_s_errors_keep_their_status_and_message_without_the_key(stand_in: StandIn,
                                                                         tmp_path: Path) -> None:
    async def run() -> None:
        deps = _deps(_remotes(tmp_path, {TENANT: {"base_url": stand_in.url, "api_key": KEY}}))
        model = _external(secrets.token_hex(3), stand_in.url)
        name = _seed(deps, model.id, Resolution(model))
        try:
            stand_in.error = (404, {"error": {"message": f"The model `{REMOTE_MODEL}` does not exist.",
                                              "type": "invalid_request_error", "param": None,
                                              "code": "model_not_found"}})
            with pytest.raises(RemoteError) as err:
                await service.complete(deps, TENANT, CHAT, _chat(name))
            assert (err.value.http_status, err.value.code, err.value.type) == (404, "model_not_found",
                                                                               "invalid_request_error")
            assert err.value.message == (f"The remote model API at {stand_in.url} answered 404: The model "
                                         f"`{REMOTE_MODEL}` does not exist.")
            stand_in.error = (401, {"error": {"message": f"Incorrect API key provided: {KEY}.",
                                              "type": "invalid_request_error", "code": "invalid_api_key"}})
            with pytest.raises(RemoteError) as err:
                await service.stream(deps, TENANT, CHAT, _chat(name, stream=True))
            # the tenant's configured key was refused, not the caller's: a gateway error, not a 401
            assert (err.value.http_status, err.value.code) == (502, "remote_key_refused")
            assert KEY not in json.dumps(err.value.to_body())
            assert "Incorrect API key provided: ***." in err.value.message
            stand_in.error = (429, {"error": {"message": "Rate limit reached", "type": "requests",
                                              "code": "rate_limit_exceeded"}})
            with pytest.raises(RemoteError) as err:
                await service.complete(deps, TENANT, CHAT, _chat(name))
            assert (err.value.http_status, err.value.type, err.value.code) == (429, "requests", "rate_limit_exceeded")
        finally:
            await deps.close()
        assert deps.publisher.of("usage.recorded") == []  # type: ignore[union-attr]
        assert _metric("coachforge_inference_requests_total", tenant=TENANT, model=model.id, outcome="error") == 3

    asyncio.run(run())


def test_a_tenant_without_a_remote_or_with_another_one_is_refused(stand_in: StandIn, tmp_path: Path) -> None:
    async def run() -> None:
        remotes = _remotes(tmp_path, {"globex": {"base_url": stand_in.url, "api_key": KEY}})
        model = _external(secrets.token_hex(3), stand_in.url)
        for remotes_file in (None, remotes):
            deps = _deps(remotes_file)
            name = _seed(deps, model.id, Resolution(model))
            try:
                with pytest.raises(Unavailable) as err:
                    await service.complete(deps, TENANT, CHAT, _chat(name))
            finally:
                await deps.close()
            assert (err.value.http_status, err.value.param, err.value.code) == (503, "model", "remote_not_configured")
            assert model.id in err.value.message and KEY not in err.value.message

        # The model's remote is not the tenant's configured one (another host, port or path): no key is sent.
        for other in ("http://127.0.0.1:1/v1", stand_in.url.replace("/v1", "/v2")):
            deps = _deps(_remotes(tmp_path, {TENANT: {"base_url": other, "api_key": KEY}}))
            name = _seed(deps, model.id, Resolution(model))
            try:
                with pytest.raises(Unavailable) as err:
                    await service.stream(deps, TENANT, CHAT, _chat(name, stream=True))
            finally:
                await deps.close()
            assert (err.value.code, err.value.param) == ("remote_mismatch", "model")
            assert model.id in err.value.message and other in err.value.message and KEY not in err.value.message
        assert stand_in.requests == []

        # The file is read again once it changed: the tenant's entry added, the model answers.
        deps = _deps(remotes)
        name = _seed(deps, model.id, Resolution(model))
        try:
            with pytest.raises(Unavailable):
                await service.complete(deps, TENANT, CHAT, _chat(name))
            time.sleep(0.01)
            _remotes(tmp_path, {TENANT: {"base_url": stand_in.url, "api_key": KEY}})
            raw, _ = await service.complete(deps, TENANT, CHAT, _chat(name))
            assert json.loads(raw)["model"] == model.id
        finally:
            await deps.close()

    asyncio.run(run())


def test_a_remote_that_cannot_be_reached_is_a_503(tmp_path: Path) -> None:
    async def run() -> None:
        url = f"http://127.0.0.1:{StandIn.free_port()}/v1"
        deps = _deps(_remotes(tmp_path, {TENANT: {"base_url": url, "api_key": KEY}}))
        model = _external(secrets.token_hex(3), url)
        name = _seed(deps, model.id, Resolution(model))
        try:
            for call in (service.complete(deps, TENANT, CHAT, _chat(name)),
                         service.stream(deps, TENANT, CHAT, _chat(name, stream=True))):
                with pytest.raises(Unavailable) as err:
                    await call
                assert (err.value.http_status, err.value.code) == (503, "remote_unreachable")
                assert url in err.value.message and KEY not in err.value.message
        finally:
            await deps.close()

    asyncio.run(run())


def test_over_rest_the_answer_and_the_remote_s_error_are_openai_shaped(stand_in: StandIn, tmp_path: Path,
                                                                      db: Database) -> None:
    create_tenant(db, TENANT)
    add_api_key(db, TENANT, "cf-acme-key")
    deps = _deps(_remotes(tmp_path, {TENANT: {"base_url": stand_in.url, "api_key": KEY}}))
    deps.db = db
    model = _external(secrets.token_hex(3), stand_in.url)
    _seed(deps, model.id, Resolution(model))
    app = FastAPI()
    app.state.authenticator, app.state.inference = Authenticator(db, internal_token="internal"), deps
    install_error_handlers(app)
    app.include_router(api.router)
    headers = {"Authorization": "Bearer cf-acme-key"}
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post(CHAT, headers=headers, json=_chat(model.id))
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model.id and r.headers["x-coachforge-model"] == model.id
        with client.stream("POST", CHAT, headers=headers, json=_chat(model.id, stream=True)) as streamed:
            assert streamed.status_code == 200
            text = "".join(streamed.iter_text())
        assert f'"model":"{model.id}"' in text and REMOTE_MODEL not in text and text.rstrip().endswith("[DONE]")

        stand_in.error = (400, {"error": {"message": "Invalid value for 'temperature'.",
                                          "type": "invalid_request_error", "param": "temperature",
                                          "code": "invalid_value"}})
        r = client.post(CHAT, headers=headers, json=_chat(model.id, temperature=1.5))
        assert r.status_code == 400
        assert r.json() == {"error": {"message": f"The remote model API at {stand_in.url} answered 400: Invalid value "
                                                 "for 'temperature'.", "type": "invalid_request_error",
                                      "param": "temperature", "code": "invalid_value"}}


def test_remote_errors_map_to_grpc_codes() -> None:
    import grpc

    from coachforge_inference.external import remote_error

    assert remote_error(404, "{}", "x").grpc_code == grpc.StatusCode.NOT_FOUND
    assert remote_error(502, "bad gateway", "x").grpc_code == grpc.StatusCode.UNAVAILABLE
    err = remote_error(418, "teapot", "http://x/v1")
    assert isinstance(err, CoachForgeError) and err.http_status == 418
    assert err.message == "The remote model API at http://x/v1 answered 418: teapot"
