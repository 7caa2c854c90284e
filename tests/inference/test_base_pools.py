"""Several base models, each with its engine pool: a request for a base model, or for a model
fine-tuned on it, goes to that base's engines (its adapter is loaded there and nowhere else), a
fallback answers from the same base's pool, a base without a pool of its own goes to the default
pool, and readiness needs every pool. Engines are :class:`FakeEngine` servers (tests/inference/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from coachforge.registry.v1 import registry_pb2
from coachforge_inference import service
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, Resolution
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.grpc_server import InternalChannel

TENANT = "pools-test"
FIRST, SECOND = "fake-base", "second-base"


def _deps(default_url: str, second_url: str) -> InferenceDeps:
    return InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                         registry=InternalChannel("127.0.0.1:9", "internal"),
                         engines=EnginePool([default_url], timeout_s=10, health_interval_s=0),
                         pools={SECOND: EnginePool([second_url], timeout_s=10, health_interval_s=0, name=SECOND)})


def _seed(deps: InferenceDeps, name: str, base: str, adapter: bool, fallback: str = "") -> str:
    model = (registry_pb2.Model(id=f"ft:{base}:{name}", base_model=base, adapter_name=name, fallback=fallback,
                                adapter_uri=f"file:///adapters/{name}", lora_rank=8) if adapter
             else registry_pb2.Model(id=base, base_model=base))
    deps._cache[(TENANT, name)] = (time.monotonic(), Resolution(model))
    return name


async def _ask(deps: InferenceDeps, name: str) -> service.Routed:
    raw, routed = await service.complete(deps, TENANT, "/v1/chat/completions",
                                         {"model": name, "messages": [{"role": "user", "content": "Hi"}],
                                          "max_tokens": 2})
    assert json.loads(raw)["model"] == routed.model.id
    return routed


def test_requests_and_adapters_go_to_their_base_models_pool(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as first, fake_engine() as second:
            second.BASE = SECOND  # this engine serves the second base model
            deps = _deps(first.url, second.url)
            try:
                on_second = await _ask(deps, _seed(deps, SECOND, SECOND, adapter=False))
                on_first = await _ask(deps, _seed(deps, FIRST, FIRST, adapter=False))
                tuned_second = await _ask(deps, _seed(deps, "coach-b", SECOND, adapter=True))
                tuned_first = await _ask(deps, _seed(deps, "coach-a", FIRST, adapter=True))
                assert await deps.healthy()
                second.healthy = False
                assert not await deps.healthy()  # readiness needs an engine of every base
            finally:
                await deps.close()
            assert (on_second.engine, tuned_second.engine) == (second.url, second.url)
            assert (on_first.engine, tuned_first.engine) == (first.url, first.url)
            assert second.loaded == {"coach-b"} and first.loaded == {"coach-a"}
            assert [b["model"] for b in second.bodies] == [SECOND, "coach-b"]
            assert [b["model"] for b in first.bodies] == [FIRST, "coach-a"]

    asyncio.run(run())


def test_a_fallback_answers_from_the_same_bases_pool(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as first, fake_engine() as second:
            second.BASE = SECOND
            second.refuse.add("broken-b")  # its adapter cannot be loaded
            deps = _deps(first.url, second.url)
            try:
                routed = await _ask(deps, _seed(deps, "broken-b", SECOND, adapter=True, fallback="base"))
            finally:
                await deps.close()
            assert routed.fallback_from == f"ft:{SECOND}:broken-b" and routed.model.id == SECOND
            assert routed.engine == second.url and first.bodies == []

    asyncio.run(run())


def test_pools_come_from_settings(monkeypatch: Any) -> None:
    monkeypatch.setenv("COACHFORGE_INFERENCE_ENGINE_URL", "http://default:8000")
    monkeypatch.setenv("COACHFORGE_INFERENCE_ENGINE_POOLS", json.dumps(
        {SECOND: {"urls": ["http://b1:8000", "http://b2:8000/"]}, "third": {"service": "engines-c.ns.svc:8000"}}))
    deps = InferenceDeps(settings=InferenceSettings(), registry=InternalChannel("127.0.0.1:9", "internal"))
    assert [e.url for e in deps.pool.engines] == ["http://default:8000"]
    assert [e.url for e in deps.pools[SECOND].engines] == ["http://b1:8000", "http://b2:8000"]
    assert deps.pools["third"].service == "engines-c.ns.svc:8000" and deps.pools["third"].engines == []
    assert deps.pool_for(registry_pb2.Model(id="ft:x", base_model=SECOND)) is deps.pools[SECOND]
    assert deps.pool_for(registry_pb2.Model(id="unknown-base", base_model="unknown-base")) is deps.pool
