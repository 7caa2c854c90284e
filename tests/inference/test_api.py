"""REST and gRPC in front of the one async path, against a local HTTP server that answers like a vLLM
engine (the real engine is exercised by the stack tests): the same checks of a request's body on
both, the answering model in headers / initial metadata, server-sent events turned into gRPC
chunks, and a stream broken after it began ending the gRPC call with the error's status code."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_inference import api
from coachforge_inference import grpc as inference_grpc
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, Resolution
from coachforge_inference.settings import InferenceSettings, Price
from coachforge_shared.auth import (
    INTERNAL_HEADER,
    TENANT_HEADER,
    Authenticator,
    Principal,
    add_api_key,
    create_tenant,
    reset_principal,
    set_principal,
)
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, Unavailable
from coachforge_shared.grpc_server import InternalChannel, build_server
from coachforge_shared.http import install_error_handlers

TENANT = "api-test"
TOKEN = "internal-test-token"
KEY = "cf-api-test-key"
BASE = "fake-base"
"""The base model a FakeEngine serves (``FakeEngine.BASE``, tests/inference/conftest.py)."""


def _rest_authenticator(db: Database) -> Authenticator:
    """The REST port takes API keys only (the internal token is the gRPC listener's): one of TENANT's."""
    create_tenant(db, TENANT)
    add_api_key(db, TENANT, KEY)
    return Authenticator(db, TOKEN)


def _deps(url: str) -> InferenceDeps:
    deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                         registry=InternalChannel("127.0.0.1:9", TOKEN),
                         engines=EnginePool([url], timeout_s=10, health_interval_s=0))
    deps._cache[(TENANT, BASE)] = (time.monotonic(), Resolution(registry_pb2.Model(id=BASE, base_model=BASE)))
    adapter = registry_pb2.Model(id="ft:coach", base_model=BASE, adapter_name="coach", adapter_uri="/adapters/coach")
    deps._cache[(TENANT, "coach")] = (time.monotonic(), Resolution(adapter))
    return deps


class _Context:
    """What the servicer uses of a ``grpc.aio.ServicerContext``."""

    def __init__(self) -> None:
        self.initial: dict[str, str] = {}

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.initial = dict(metadata)


def test_rest_answers_and_checks_bodies(fake_engine: Any, db: Database) -> None:
    async def run() -> None:
        async with fake_engine(chunks=3) as engine:
            deps = _deps(engine.url)
            app = FastAPI()
            app.state.authenticator = _rest_authenticator(db)
            app.state.inference = deps
            install_error_handlers(app)
            app.include_router(api.router)
            headers = {"Authorization": f"Bearer {KEY}"}
            chat = {"model": "coach", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                    r = await client.post("/v1/chat/completions", headers=headers, json=chat)
                    assert r.status_code == 200, r.text
                    assert r.json()["model"] == "ft:coach" and r.headers["x-coachforge-model"] == "ft:coach"
                    assert r.json()["choices"][0]["message"]["content"] == "t0t1t2"
                    assert "gateway;dur=" in r.headers["server-timing"]
                    r = await client.post("/v1/completions", headers=headers, json={
                        "model": BASE, "prompt": "x", "stream": True, "stream_options": {"include_usage": True}})
                    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                    events = [line for line in r.text.split("\n") if line]
                    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["usage"]["total_tokens"] == 6
                    for path, body, param in [
                        ("/v1/chat/completions", b"{not json", "body"),
                        ("/v1/chat/completions", b"[1]", "body"),
                        ("/v1/chat/completions", json.dumps({**chat, "messages": []}).encode(), "messages"),
                        ("/v1/chat/completions", json.dumps({**chat, "model": ""}).encode(), "model"),
                        ("/v1/chat/completions", json.dumps({**chat, "n": -1}).encode(), "n"),
                        ("/v1/completions", json.dumps({"model": BASE}).encode(), "prompt"),
                    ]:
                        r = await client.post(path, headers={**headers, "content-type": "application/json"},
                                              content=body)
                        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
            finally:
                await deps.close()

    asyncio.run(run())


def test_grpc_servicer_answers_streams_and_checks_like_rest(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine(chunks=3) as engine:
            deps = _deps(engine.url)
            servicer = inference_grpc.InferenceServicer(deps)
            token = set_principal(Principal(tenant_id=TENANT, internal=True))
            try:
                context = _Context()
                answer = await servicer.CreateChatCompletion(inference_pb2.ChatCompletionRequest(
                    model="coach", messages=[inference_pb2.ChatMessage(role="user", content="Hi")]), context)
                assert answer.model == "ft:coach" and answer.content == "t0t1t2" and answer.usage.total_tokens == 6
                assert context.initial["x-coachforge-model"] == "ft:coach"

                context = _Context()
                request = inference_pb2.CompletionRequest(model=BASE, prompt="x", n=1, include_usage=True)
                chunks = [c async for c in servicer.StreamCompletion(request, context)]
                assert "".join(c.choices[0].content for c in chunks if c.choices) == "t0t1t2"
                assert chunks[-1].usage.completion_tokens == 3 and not chunks[-1].choices
                assert all(c.model == BASE for c in chunks) and context.initial["x-coachforge-model"] == BASE
                request.include_usage = False
                chunks = [c async for c in servicer.StreamCompletion(request, _Context())]
                assert len(chunks) == 3 and not any(c.HasField("usage") for c in chunks)
                assert engine.bodies[-1]["stream"] is True

                with pytest.raises(InvalidArgument) as err:  # the same check as over REST
                    await servicer.CreateChatCompletion(inference_pb2.ChatCompletionRequest(model=BASE), _Context())
                assert err.value.param == "messages"
                with pytest.raises(InvalidArgument) as err:
                    [c async for c in servicer.StreamCompletion(inference_pb2.CompletionRequest(model=BASE),
                                                                 _Context())]
                assert err.value.param == "prompt"

                engine.die_after = 2  # the engine dies after two chunks: they arrive, then the error
                received = []
                with pytest.raises(Unavailable, match="unreachable"):
                    async for chunk in servicer.StreamCompletion(request, _Context()):
                        received.append(chunk)
                assert len(received) == 2
                assert [e.inflight for e in deps.pool.engines] == [0]
            finally:
                reset_principal(token)
                await deps.close()

    asyncio.run(run())


def test_grpc_server_ends_a_broken_stream_with_the_errors_status(fake_engine: Any) -> None:
    """Through a real ``grpc.aio`` server and the shared interceptor (authentication, error mapping)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> None:
        async with fake_engine(chunks=4) as engine:
            deps = _deps(engine.url)
            server, _ = build_server([inference_grpc.registration(deps)], Authenticator(None, TOKEN),  # type: ignore[arg-type]
                                     f"127.0.0.1:{port}", max_workers=2)
            await server.start()
            metadata = ((INTERNAL_HEADER, TOKEN), (TENANT_HEADER, TENANT))
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = inference_pb2_grpc.InferenceServiceStub(channel)
                    call = stub.CreateCompletion(inference_pb2.CompletionRequest(model="coach", prompt="x"),
                                                 metadata=metadata)
                    answer = await call
                    assert answer.model == "ft:coach" and answer.choices[0].content == "t0t1t2t3"
                    assert dict(await call.initial_metadata())["x-coachforge-model"] == "ft:coach"

                    engine.error_after = 2
                    call = stub.StreamCompletion(inference_pb2.CompletionRequest(model=BASE, prompt="x"),
                                                 metadata=metadata)
                    received = []
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        async for chunk in call:
                            received.append(chunk)
                    assert len(received) == 2
                    assert err.value.code() == grpc.StatusCode.INTERNAL
                    assert err.value.details() == "engine failed mid-stream"

                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.CreateChatCompletion(inference_pb2.ChatCompletionRequest(model=BASE),
                                                        metadata=metadata)
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            finally:
                await server.stop(None)
                await deps.close()

    asyncio.run(run())


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class _Registry(registry_pb2_grpc.RegistryServiceServicer):
    """The registry's answers for GetModel and GetAvatar: a base model, two fine-tuned models (one in
    the price table) and an avatar whose active model is the priced one; NOT_FOUND for the rest."""

    MODELS = {
        BASE: registry_pb2.Model(id=BASE, owned_by="coachforge", base_model=BASE),
        "ft:priced": registry_pb2.Model(id="ft:priced", owned_by=TENANT, base_model=BASE, adapter_name="priced",
                                        adapter_uri="/adapters/priced"),
        "ft:plain": registry_pb2.Model(id="ft:plain", owned_by=TENANT, base_model=BASE, adapter_name="plain",
                                       adapter_uri="/adapters/plain"),
        "coach-anna": registry_pb2.Model(id="ft:priced", owned_by=TENANT, base_model=BASE, adapter_name="priced",
                                         adapter_uri="/adapters/priced", fallback="error"),
    }

    def GetModel(self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext) -> registry_pb2.Model:
        if request.model_id not in self.MODELS:
            context.abort(grpc.StatusCode.NOT_FOUND, f"The model '{request.model_id}' does not exist")
        return self.MODELS[request.model_id]

    def GetAvatar(self, request: registry_pb2.GetAvatarRequest, context: grpc.ServicerContext) -> registry_pb2.Avatar:
        return registry_pb2.Avatar(name=request.name, active_model="ft:priced", fallback="error")


def test_grpc_purpose_bills_evaluations_apart_and_model_prices_resolve_like_requests(fake_engine: Any,
                                                                                    db: Database) -> None:
    """Over a real gRPC server: a completion asked with purpose "evaluation" is counted as one, a
    purpose that is neither app nor evaluation is refused naming it, REST is always "app"; and
    GetModelPrice answers the price table's entry, the base or fine-tuned default, an avatar's
    active model, NOT_FOUND for a model the registry does not know."""
    registry = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(_Registry(), registry)
    registry_port = registry.add_insecure_port("127.0.0.1:0")
    registry.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> None:
        async with fake_engine(chunks=3) as engine:
            deps = InferenceDeps(
                settings=InferenceSettings(resolve_cache_s=3600, prices={"ft:priced": Price(input=2.5, output=7.5)}),
                registry=InternalChannel(f"127.0.0.1:{registry_port}", TOKEN),
                engines=EnginePool([engine.url], timeout_s=10, health_interval_s=0))
            server, _ = build_server([inference_grpc.registration(deps)], Authenticator(None, TOKEN),  # type: ignore[arg-type]
                                     f"127.0.0.1:{port}", max_workers=2)
            await server.start()
            metadata = ((INTERNAL_HEADER, TOKEN), (TENANT_HEADER, TENANT))

            def tokens(purpose: str) -> float:
                return _metric("coachforge_inference_tokens_total", tenant=TENANT, model=BASE, kind="completion",
                               purpose=purpose)

            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = inference_pb2_grpc.InferenceServiceStub(channel)
                    app, evaluation = tokens("app"), tokens("evaluation")
                    chat = inference_pb2.ChatCompletionRequest(
                        model=BASE, messages=[inference_pb2.ChatMessage(role="user", content="Hi")],
                        purpose="evaluation")
                    assert (await stub.CreateChatCompletion(chat, metadata=metadata)).content == "t0t1t2"
                    assert [c async for c in stub.StreamChatCompletion(chat, metadata=metadata)]
                    assert tokens("evaluation") == evaluation + 6 and tokens("app") == app
                    await stub.CreateCompletion(inference_pb2.CompletionRequest(model=BASE, prompt="x"),
                                                metadata=metadata)  # no purpose: an app's request
                    assert tokens("app") == app + 3 and tokens("evaluation") == evaluation + 6

                    sent = len(engine.bodies)
                    chat.purpose = "judge"
                    for call in (stub.CreateChatCompletion(chat, metadata=metadata),
                                 stub.StreamChatCompletion(chat, metadata=metadata),
                                 stub.CreateCompletion(inference_pb2.CompletionRequest(
                                     model=BASE, prompt="x", purpose="Evaluation"), metadata=metadata)):
                        with pytest.raises(grpc.aio.AioRpcError) as err:
                            if isinstance(call, grpc.aio.UnaryStreamCall):
                                [c async for c in call]
                            else:
                                await call
                        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                        assert dict(err.value.trailing_metadata())["x-error-param"] == "purpose"
                    assert len(engine.bodies) == sent

                    prices = {}
                    for model in (BASE, "ft:priced", "ft:plain", "coach-anna"):
                        p = await stub.GetModelPrice(inference_pb2.GetModelPriceRequest(model=model),
                                                     metadata=metadata)
                        prices[model] = (p.model, p.input_per_million, p.output_per_million, p.base_model,
                                         p.fine_tuned)
                    base, tuned = deps.settings.base_price, deps.settings.fine_tuned_price
                    assert prices == {
                        BASE: (BASE, base.input, base.output, BASE, False),
                        "ft:priced": ("ft:priced", 2.5, 7.5, BASE, True),
                        "ft:plain": ("ft:plain", tuned.input, tuned.output, BASE, True),
                        "coach-anna": ("ft:priced", 2.5, 7.5, BASE, True),  # the avatar's active model
                    }
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.GetModelPrice(inference_pb2.GetModelPriceRequest(model="ft:nope"),
                                                 metadata=metadata)
                    assert err.value.code() == grpc.StatusCode.NOT_FOUND
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.GetModelPrice(inference_pb2.GetModelPriceRequest(), metadata=metadata)
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert dict(err.value.trailing_metadata())["x-error-param"] == "model"

                # REST has no purpose: a body that names one is still an app's request.
                app = FastAPI()
                app.state.authenticator = _rest_authenticator(db)
                app.state.inference = deps
                install_error_handlers(app)
                app.include_router(api.router)
                before = tokens("app"), tokens("evaluation")
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                    r = await client.post("/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                                          json={"model": BASE, "prompt": "x", "purpose": "evaluation"})
                    assert r.status_code == 200, r.text
                assert (tokens("app"), tokens("evaluation")) == (before[0] + 3, before[1])
            finally:
                await server.stop(None)
                await deps.close()
                deps.registry.close()

    try:
        asyncio.run(run())
    finally:
        registry.stop(None)
