"""The one async request path and the engine pool against small local HTTP servers that answer like
vLLM engines (:class:`FakeEngine`; the real engines are exercised by the stack tests): routing to
the engine that holds an adapter, least-recently-used unloading, one load for a burst of first
requests, a dead engine taken out of rotation with the request retried, health checks on the event
loop, an engine that lost its adapters reloading once, streams that break after they began ending
with the error's own body, the usage chunk, fallback to the base model, and a deleted model's
adapter unloaded when its event arrives over the real broker."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from coachforge.registry.v1 import registry_pb2
from coachforge_inference import service
from coachforge_inference.engine import EngineUnreachable
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, Resolution
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.errors import InvalidArgument, Unavailable
from coachforge_shared.events import EventPublisher, ensure_topics
from coachforge_shared.grpc_server import InternalChannel

TENANT = "routing-test"
BASE = "fake-base"
"""The base model a FakeEngine serves (``FakeEngine.BASE``, tests/inference/conftest.py)."""


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _deps(urls: list[str], max_loras: int = 2, health_interval_s: float = 0,
          kafka_bootstrap: str | None = None) -> InferenceDeps:
    pool = EnginePool(urls, timeout_s=10, max_loras=max_loras, health_interval_s=health_interval_s)
    return InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                         registry=InternalChannel("127.0.0.1:9", "internal"), engines=pool,
                         kafka_bootstrap=kafka_bootstrap)


def _seed(deps: InferenceDeps, name: str, adapter: bool = True, fallback: str = "") -> str:
    """A resolution in the cache (the registry is not what these tests are about)."""
    if adapter:
        model = registry_pb2.Model(id=f"ft:{name}", base_model=BASE, adapter_name=name,
                                   adapter_uri=f"file:///adapters/{name}", lora_rank=8, fallback=fallback)
    else:
        model = registry_pb2.Model(id=BASE, base_model=BASE)
    deps._cache[(TENANT, name)] = (time.monotonic(), Resolution(model))
    return name


def _body(model: str, **extra: object) -> dict[str, Any]:
    return {"model": model, "prompt": "Rest day:", "max_tokens": 2, **extra}


async def _ask(deps: InferenceDeps, model: str) -> service.Routed:
    raw, routed = await service.complete(deps, TENANT, "/v1/completions", _body(model))
    answer = json.loads(raw)
    assert answer["model"] == routed.model.id and answer["choices"][0]["text"]
    return routed


async def _lines(events: AsyncIterator[bytes]) -> list[bytes]:
    return [line async for line in events if line.strip()]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_routing_prefers_the_holder_then_the_least_loaded(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as first, fake_engine() as second:
            deps = _deps([first.url, second.url])
            a, b = _seed(deps, "route-a"), _seed(deps, "route-b")
            try:
                used = [(await _ask(deps, m)).engine for m in (a, b, a, b, a)]
            finally:
                await deps.close()
            # a lands on the first engine; b on the other (nothing in flight, fewer adapters); then each
            # stays where it is loaded.
            assert used == [first.url, second.url, first.url, second.url, first.url]
            assert first.loaded == {a} and second.loaded == {b}
            assert [e.inflight for e in deps.pool.engines] == [0, 0]
            assert [list(e.adapters) for e in deps.pool.engines] == [[a], [b]]

    asyncio.run(run())


def test_least_recently_used_adapter_is_unloaded_beyond_max_loras(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as engine:
            deps = _deps([engine.url], max_loras=2)
            names = [_seed(deps, f"lru-{secrets.token_hex(3)}-{i}") for i in range(3)]
            evicted = _metric("coachforge_inference_adapter_evictions_total", engine=engine.url, outcome="unloaded")
            try:
                for m in (names[0], names[1], names[0]):  # names[1] is now the least recently used
                    await _ask(deps, m)
                assert engine.loaded == {names[0], names[1]}
                await _ask(deps, names[2])
                assert engine.loaded == {names[0], names[2]}
                await _ask(deps, names[1])  # loaded again; names[0] is the oldest now
                assert engine.loaded == {names[1], names[2]}
            finally:
                await deps.close()
            assert engine.unloads == [names[1], names[0]]
            assert _metric("coachforge_inference_adapter_evictions_total", engine=engine.url,
                           outcome="unloaded") == evicted + 2
            assert list(deps.pool.engines[0].adapters) == [names[2], names[1]]

    asyncio.run(run())


def test_a_burst_of_first_requests_loads_the_adapter_once(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine(load_delay=0.1) as first, fake_engine(load_delay=0.1) as second:
            deps = _deps([first.url, second.url], max_loras=4)
            name = _seed(deps, f"burst-{secrets.token_hex(3)}")
            loaded = {u: _metric("coachforge_inference_adapter_loads_total", engine=u, outcome="loaded")
                      for u in (first.url, second.url)}
            try:
                routed = await asyncio.gather(*(_ask(deps, name) for _ in range(8)))
            finally:
                await deps.close()
            assert len({r.engine for r in routed}) == 1
            assert first.loads + second.loads == [name]
            assert sum(_metric("coachforge_inference_adapter_loads_total", engine=u, outcome="loaded") - loaded[u]
                       for u in (first.url, second.url)) == 1
            assert [e.inflight for e in deps.pool.engines] == [0, 0]

    asyncio.run(run())


def test_a_dead_engine_leaves_the_rotation_and_requests_are_retried(fake_engine: Any) -> None:
    dead = _dead_url()

    async def run() -> None:
        async with fake_engine() as live:
            deps = _deps([dead, live.url])
            base, adapter = _seed(deps, BASE, adapter=False), _seed(deps, f"retry-{secrets.token_hex(3)}")
            retries = _metric("coachforge_inference_retries_total", engine=dead)
            try:
                routed = await _ask(deps, base)  # the dead engine is tried first (nothing in flight anywhere)
                assert routed.engine == live.url
                assert _metric("coachforge_inference_retries_total", engine=dead) == retries + 1
                assert _metric("coachforge_inference_engine_up", engine=dead) == 0
                assert not deps.pool.engine(dead).up
                assert (await _ask(deps, adapter)).engine == live.url  # out of rotation: no second retry
                assert _metric("coachforge_inference_retries_total", engine=dead) == retries + 1
                # A stream whose engine cannot be reached before its first byte is retried too.
                deps.pool.engine(dead).up = True
                events, routed = await service.stream(deps, TENANT, "/v1/completions", _body(base, stream=True))
                lines = await _lines(events)
                assert routed.engine == live.url and lines[-1].strip() == b"data: [DONE]"
                assert _metric("coachforge_inference_retries_total", engine=dead) == retries + 2
                # An adapter load that cannot reach the engine is retried the same way.
                deps.pool.engine(dead).up = True
                deps.pool.engine(live.url).inflight = 5  # the dead engine looks less busy
                second = _seed(deps, f"retry-{secrets.token_hex(3)}")
                assert (await _ask(deps, second)).engine == live.url
                deps.pool.engine(live.url).inflight = 0
            finally:
                await deps.close()
            assert [e.inflight for e in deps.pool.engines] == [0, 0]

        # Nothing reachable: a clean 503, no hang.
        only_dead = _deps([dead, _dead_url()])
        _seed(only_dead, BASE, adapter=False)
        try:
            with pytest.raises(Unavailable, match="No inference engine could serve"):
                await service.complete(only_dead, TENANT, "/v1/completions", _body(BASE))
        finally:
            await only_dead.close()

    asyncio.run(run())


def test_health_checks_run_on_the_loop_and_move_engines_in_and_out(fake_engine: Any) -> None:
    dead = _dead_url()

    async def run() -> None:
        async with fake_engine() as live:
            deps = _deps([dead, live.url], health_interval_s=0.05)

            async def until(condition: Any) -> None:
                deadline = time.monotonic() + 10
                while not condition():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)

            try:
                await deps.start()
                await deps.start()  # idempotent
                await until(lambda: not deps.pool.engine(dead).up)
                assert deps.pool.engine(live.url).up
                lease = deps.pool.lease(None)
                assert lease.engine.url == live.url
                lease.release()
                assert await deps.healthy()
                # An engine that fails its check leaves the rotation, forgetting its adapters.
                deps.pool.engine(live.url).loaded.add("kept")
                live.healthy = False
                await until(lambda: not deps.pool.engine(live.url).up)
                assert not deps.pool.engine(live.url).loaded
                assert not await deps.healthy()
                # Every engine down: they are tried anyway.
                lease = deps.pool.lease(None)
                lease.release()
                live.healthy = True
                await until(lambda: deps.pool.engine(live.url).up)
                assert _metric("coachforge_inference_engine_up", engine=live.url) == 1
            finally:
                await deps.close()
            assert deps.pool._task is None

    asyncio.run(run())


def test_an_engine_that_lost_its_adapters_loads_them_again(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as engine:
            deps = _deps([engine.url], max_loras=4)
            name = _seed(deps, f"lost-{secrets.token_hex(3)}")
            try:
                await _ask(deps, name)
                engine.loaded.clear()  # as after a restart: the pool still thinks it has the adapter
                assert (await _ask(deps, name)).engine == engine.url
                assert engine.loads == [name, name]
                events, _ = await service.stream(deps, TENANT, "/v1/completions", _body(name, stream=True))
                engine.loaded.clear()
                assert (await _lines(events))[-1].strip() == b"data: [DONE]"  # already streaming: unaffected
                events, _ = await service.stream(deps, TENANT, "/v1/completions", _body(name, stream=True))
                assert (await _lines(events))[-1].strip() == b"data: [DONE]"  # reloaded before the first byte
                assert engine.loads == [name, name, name]
                engine.refuse.add(name)
                engine.loaded.clear()
                with pytest.raises(Unavailable, match="refused to load"):  # only once: no loop
                    await _ask(deps, name)
            finally:
                await deps.close()

    asyncio.run(run())


def test_an_engine_that_dies_mid_stream_ends_it_with_the_error_body_and_leaves_the_rotation(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine(chunks=6) as dying, fake_engine() as other:
            deps = _deps([dying.url, other.url])
            base = _seed(deps, BASE, adapter=False)
            dying.die_after = 3
            errors = _metric("coachforge_inference_requests_total", tenant=TENANT, model=BASE, outcome="error")
            try:
                events, routed = await service.stream(deps, TENANT, "/v1/completions", _body(base, stream=True))
                assert routed.engine == dying.url
                lines = await _lines(events)
                # Bytes were sent already: no retry; the stream ends with the typed error's own body.
                assert len(lines) == 4
                assert isinstance(routed.error, EngineUnreachable)
                assert json.loads(lines[-1][6:]) == routed.error.to_body()
                assert json.loads(lines[-1][6:])["error"]["type"] == "server_error"
                assert "unreachable" in json.loads(lines[-1][6:])["error"]["message"]
                assert not deps.pool.engine(dying.url).up
                assert _metric("coachforge_inference_engine_up", engine=dying.url) == 0
                assert _metric("coachforge_inference_requests_total", tenant=TENANT, model=BASE,
                               outcome="error") == errors + 1
                assert (await _ask(deps, base)).engine == other.url  # out of rotation
            finally:
                await deps.close()
            assert [e.inflight for e in deps.pool.engines] == [0, 0]

    asyncio.run(run())


def test_an_error_event_from_the_engine_is_a_typed_error_too(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine(chunks=4) as engine:
            deps = _deps([engine.url])
            base = _seed(deps, BASE, adapter=False)
            engine.error_after = 2
            try:
                events, routed = await service.stream(deps, TENANT, "/v1/completions", _body(base, stream=True))
                lines = await _lines(events)
                assert len(lines) == 3 and routed.error is not None
                assert routed.error.http_status == 500 and routed.error.message == "engine failed mid-stream"
                assert json.loads(lines[-1][6:]) == routed.error.to_body()
                assert deps.pool.engine(engine.url).up  # it answered: still in rotation
            finally:
                await deps.close()

    asyncio.run(run())


def test_the_usage_chunk_is_passed_on_only_when_asked_and_every_stream_is_billed(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine(chunks=3) as engine:
            deps = _deps([engine.url])
            name = _seed(deps, f"usage-{secrets.token_hex(3)}")
            model = f"ft:{name}"
            tokens = _metric("coachforge_inference_tokens_total", tenant=TENANT, model=model, kind="completion",
                             purpose="app")
            try:
                events, routed = await service.stream(deps, TENANT, "/v1/chat/completions", {
                    "model": name, "messages": [{"role": "user", "content": "Hi"}], "stream": True})
                chunks = [json.loads(line[6:]) for line in await _lines(events) if line.startswith(b"data: {")]
                assert routed.headers()["x-coachforge-model"] == model
                assert [c["model"] for c in chunks] == [model] * 3 and all(c["choices"] for c in chunks)
                assert engine.bodies[-1]["stream_options"] == {  # asked anyway
                    "include_usage": True, "continuous_usage_stats": True}
                events, _ = await service.stream(deps, TENANT, "/v1/completions", _body(
                    name, stream=True, stream_options={"include_usage": True}))
                chunks = [json.loads(line[6:]) for line in await _lines(events) if line.startswith(b"data: {")]
                assert chunks[-1]["usage"]["completion_tokens"] == 3 and not chunks[-1]["choices"]
                assert chunks[-1]["model"] == model
                assert "server-timing" in routed.headers() and routed.engine_seconds > 0
            finally:
                await deps.close()
            assert _metric("coachforge_inference_tokens_total", tenant=TENANT, model=model,
                           kind="completion", purpose="app") == tokens + 6

    asyncio.run(run())


class _Publisher:
    """Keeps what would be published (the broker is not what this test is about)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any, str]] = []

    def publish(self, topic: str, message: Any, tenant_id: str, **_: Any) -> None:
        self.published.append((topic, message, tenant_id))


def test_the_purpose_labels_the_tokens_the_cost_and_the_usage_event(fake_engine: Any) -> None:
    """An evaluation (an eval run's sample or judge) is counted and billed apart from an app's
    request, streamed or not; a purpose that is neither is refused before routing."""
    async def run() -> None:
        async with fake_engine(chunks=3) as engine:
            deps = _deps([engine.url])
            publisher = _Publisher()
            deps.publisher = publisher  # type: ignore[assignment]
            name = _seed(deps, f"purpose-{secrets.token_hex(3)}")
            model = f"ft:{name}"
            chat = {"model": name, "messages": [{"role": "user", "content": "Hi"}]}

            def counts() -> dict[str, tuple[float, float, float]]:
                return {p: (_metric("coachforge_inference_tokens_total", tenant=TENANT, model=model, kind="prompt",
                                    purpose=p),
                            _metric("coachforge_inference_tokens_total", tenant=TENANT, model=model,
                                    kind="completion", purpose=p),
                            _metric("coachforge_inference_cost_usd_total", tenant=TENANT, model=model, purpose=p))
                        for p in ("app", "evaluation")}

            before = counts()
            try:
                _, routed = await service.complete(deps, TENANT, "/v1/chat/completions", chat)
                assert routed.purpose == "app"
                _, routed = await service.complete(deps, TENANT, "/v1/chat/completions", chat, purpose="evaluation")
                assert routed.purpose == "evaluation"
                events, routed = await service.stream(deps, TENANT, "/v1/chat/completions", {**chat, "stream": True},
                                                      purpose="evaluation")
                await _lines(events)
                _, routed = await service.complete(deps, TENANT, "/v1/chat/completions", chat, purpose="")
                assert routed.purpose == "app"  # "" is an app's request
                sent = len(engine.bodies)
                for bad in ("eval", "APP", "batch"):
                    with pytest.raises(InvalidArgument) as err:
                        await service.complete(deps, TENANT, "/v1/chat/completions", chat, purpose=bad)
                    assert err.value.param == "purpose"
                with pytest.raises(InvalidArgument) as err:
                    await service.stream(deps, TENANT, "/v1/chat/completions", {**chat, "stream": True},
                                         purpose="judge")
                assert err.value.param == "purpose"
                assert len(engine.bodies) == sent  # refused before the engine was asked
                assert all("purpose" not in b for b in engine.bodies)  # it is not the engine's business
            finally:
                await deps.close()
            after = counts()
            price = deps.settings.fine_tuned_price
            one_cost = (3 * price.input + 3 * price.output) / 1e6  # a FakeEngine answer: 3 prompt, 3 completion
            assert after["app"][:2] == (before["app"][0] + 6, before["app"][1] + 6)
            assert after["evaluation"][:2] == (before["evaluation"][0] + 6, before["evaluation"][1] + 6)
            assert after["evaluation"][2] - before["evaluation"][2] == pytest.approx(2 * one_cost)
            assert after["app"][2] - before["app"][2] == pytest.approx(2 * one_cost)
            recorded = [m for topic, m, tenant in publisher.published if topic == "usage.recorded" and tenant == TENANT]
            assert [(m.model, m.purpose, m.completion_tokens) for m in recorded] == [
                (model, "app", 3), (model, "evaluation", 3), (model, "evaluation", 3), (model, "app", 3)]

    asyncio.run(run())


def test_an_avatar_that_allows_it_falls_back_to_the_base_model(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as engine:
            deps = _deps([engine.url])
            broken = _seed(deps, f"broken-{secrets.token_hex(3)}", fallback="base")
            strict = _seed(deps, f"strict-{secrets.token_hex(3)}")
            engine.refuse.update({broken, strict})
            try:
                raw, routed = await service.complete(deps, TENANT, "/v1/completions", _body(broken))
                assert json.loads(raw)["model"] == BASE and routed.fallback_from == f"ft:{broken}"
                assert routed.headers()["x-coachforge-fallback"] == f"base; from=ft:{broken}"
                with pytest.raises(Unavailable):
                    await service.complete(deps, TENANT, "/v1/completions", _body(strict))
            finally:
                await deps.close()
            assert engine.bodies[-1]["model"] == BASE
            assert [e.inflight for e in deps.pool.engines] == [0] and not deps.pool.engines[0].adapters

    asyncio.run(run())


def test_bad_bodies_are_refused_before_routing(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as engine:
            deps = _deps([engine.url])
            _seed(deps, BASE, adapter=False)
            chat = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}]}
            cases = [
                ("/v1/chat/completions", {"model": BASE, "messages": []}, "messages"),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
                ("/v1/completions", {"model": BASE}, "prompt"),
                ("/v1/chat/completions", {**chat, "n": 0}, "n"),
                ("/v1/chat/completions", {**chat, "n": "2"}, "n"),
                ("/v1/chat/completions", {**chat, "stream": True, "stream_options": "usage"}, "stream_options"),
            ]
            unresolved = _metric("coachforge_inference_requests_total", tenant=TENANT, model="unresolved",
                                 outcome="error")
            try:
                for path, body, param in cases:
                    call = service.stream if body.get("stream") else service.complete
                    with pytest.raises(InvalidArgument) as err:
                        await call(deps, TENANT, path, body)
                    assert err.value.param == param, (path, body)
                raw, _ = await service.complete(deps, TENANT, "/v1/chat/completions", {**chat, "n": 1})
                assert json.loads(raw)["choices"][0]["message"]["content"]
            finally:
                await deps.close()
            assert [b["model"] for b in engine.bodies] == [BASE]  # only the good one reached the engine
            assert _metric("coachforge_inference_requests_total", tenant=TENANT, model="unresolved",
                           outcome="error") == unresolved + len(cases)

    asyncio.run(run())


def test_a_deleted_models_adapter_is_unloaded_when_its_event_arrives(broker: str, fake_engine: Any) -> None:
    ensure_topics(broker)
    publisher = EventPublisher(broker, "routing-test")

    async def run() -> None:
        async with fake_engine() as engine:
            deps = _deps([engine.url], kafka_bootstrap=broker)
            name = _seed(deps, f"deleted-{secrets.token_hex(3)}")
            try:
                await deps.start()
                assert await asyncio.to_thread(deps._listener.wait_ready, 30)
                await _ask(deps, name)
                assert engine.loaded == {name}
                await asyncio.to_thread(publisher.publish, "model.deleted", registry_pb2.ModelDeleted(
                    model_id=f"ft:{name}", adapter_name=name), TENANT)
                deadline = time.monotonic() + 30
                while name in engine.loaded:  # the listener's thread hands the unload to this loop
                    assert time.monotonic() < deadline, "the deleted model's adapter is still loaded"
                    await asyncio.sleep(0.05)
                assert deps.cached(TENANT, name) is None  # the tenant's resolutions were dropped too
                assert not deps.pool.engines[0].adapters and not deps.pool.engines[0].loaded
            finally:
                await deps.close()
            assert deps._listener is None

    try:
        asyncio.run(run())
    finally:
        publisher.close()
