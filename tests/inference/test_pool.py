"""The engine pool against real vLLM CPU engines (the stack's and a second one with --max-loras 2)
and a dead URL: routing to the engine that holds an adapter, least-recently-used unloading, one
load for a burst of first requests, a dead engine taken out of rotation with the request retried,
an engine that lost its adapters (restart) reloading on demand."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from coachforge.registry.v1 import registry_pb2
from coachforge_inference import service
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, Resolution
from coachforge_inference.settings import InferenceSettings
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.errors import Unavailable
from coachforge_shared.grpc_server import InternalChannel

pytestmark = pytest.mark.stack

TENANT = "pool-test"


def _dead_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _deps(stack, urls: list[str], max_loras: int = 2, health_interval_s: float = 0) -> InferenceDeps:  # type: ignore[no-untyped-def]
    # The stack's engine requires its key; the second engine, started without one, ignores it.
    pool = EnginePool(urls, timeout_s=120, max_loras=max_loras, health_interval_s=health_interval_s,
                      api_key=stack.engine_api_key)
    return InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                         registry=InternalChannel(stack.grpc_target, stack.internal_token), engines=pool)


def _seed(deps: InferenceDeps, name: str, adapter: Path | None) -> str:
    """A resolution in the cache (the registry is not what these tests are about)."""
    if adapter is None:
        model = registry_pb2.Model(id=BASE_MODEL_ID, base_model=BASE_MODEL_ID)
    else:
        model = registry_pb2.Model(id=f"ft:{name}", base_model=BASE_MODEL_ID, adapter_name=name,
                                   adapter_uri=str(adapter), lora_rank=8)
    deps._cache[(TENANT, name)] = (time.monotonic(), Resolution(model))
    return name


def _body(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "prompt": "Rest day:", "max_tokens": 2, "temperature": 0, **extra}


async def _ask(deps: InferenceDeps, model: str) -> service.Routed:
    raw, routed = await service.complete(deps, TENANT, "/v1/completions", _body(model))
    assert json.loads(raw)["choices"][0]["text"] is not None
    return routed


ENGINE_HEADERS: dict[str, str] = {}
"""Headers of a direct call to an engine: the stack's engine key (set by the ``engines`` fixture)."""


def _on_engine(url: str) -> set[str]:
    found = httpx.get(f"{url}/v1/models", headers=ENGINE_HEADERS, timeout=10).json()["data"]
    return {m["id"] for m in found} - {BASE_MODEL_ID}


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def engines(stack, stack_engine_url: str, second_engine: str) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    ENGINE_HEADERS["Authorization"] = f"Bearer {stack.engine_api_key}"
    yield stack_engine_url, second_engine


def test_routing_prefers_the_holder_then_the_least_loaded(stack, engines: tuple[str, str],  # type: ignore[no-untyped-def]
                                                          lora_adapters: list[Path]) -> None:
    first, second = engines
    deps = _deps(stack, [first, second])
    tag = secrets.token_hex(3)
    a, b = _seed(deps, f"route-{tag}-a", lora_adapters[0]), _seed(deps, f"route-{tag}-b", lora_adapters[1])

    async def run() -> list[str]:
        try:
            return [(await _ask(deps, m)).engine for m in (a, b, a, b, a)]
        finally:
            await deps.close()

    used = asyncio.run(run())
    # a lands on the first engine; b on the other (no request in flight, fewer adapters); then each
    # stays where it is loaded.
    assert used == [first, second, first, second, first]
    assert a in _on_engine(first) and a not in _on_engine(second)
    assert b in _on_engine(second) and b not in _on_engine(first)
    assert [e.inflight for e in deps.pool.engines] == [0, 0]


def test_least_recently_used_adapter_is_unloaded_beyond_max_loras(stack, engines: tuple[str, str],  # type: ignore[no-untyped-def]
                                                                   lora_adapters: list[Path]) -> None:
    _, second = engines
    deps = _deps(stack, [second], max_loras=2)
    tag = secrets.token_hex(3)
    names = [_seed(deps, f"lru-{tag}-{i}", lora_adapters[i]) for i in range(3)]
    evicted = _metric("coachforge_inference_adapter_evictions_total", engine=second, outcome="unloaded")

    async def run() -> None:
        try:
            for m in (names[0], names[1], names[0]):  # names[1] is now the least recently used
                await _ask(deps, m)
            assert _on_engine(second) >= {names[0], names[1]}
            await _ask(deps, names[2])
            assert names[1] not in _on_engine(second) and {names[0], names[2]} <= _on_engine(second)
            await _ask(deps, names[1])  # loaded again; names[0] is the oldest now
            assert {names[1], names[2]} <= _on_engine(second) and names[0] not in _on_engine(second)
        finally:
            await deps.close()

    asyncio.run(run())
    assert _metric("coachforge_inference_adapter_evictions_total", engine=second,
                   outcome="unloaded") == evicted + 2
    assert list(deps.pool.engines[0].adapters) == [names[2], names[1]]


def test_a_burst_of_first_requests_loads_the_adapter_once(stack, engines: tuple[str, str],  # type: ignore[no-untyped-def]
                                                          lora_adapters: list[Path]) -> None:
    first, second = engines
    deps = _deps(stack, [first, second], max_loras=4)
    name = _seed(deps, f"burst-{secrets.token_hex(3)}", lora_adapters[3])
    loads = {u: _metric("coachforge_inference_adapter_loads_total", engine=u, outcome="loaded")
             for u in (first, second)}

    async def run() -> list[service.Routed]:
        try:
            return list(await asyncio.gather(*(_ask(deps, name) for _ in range(8))))
        finally:
            await deps.close()

    routed = asyncio.run(run())
    assert len({r.engine for r in routed}) == 1
    delta = sum(_metric("coachforge_inference_adapter_loads_total", engine=u, outcome="loaded") - loads[u]
                for u in (first, second))
    assert delta == 1
    assert sum(name in _on_engine(u) for u in (first, second)) == 1


def test_a_dead_engine_leaves_the_rotation_and_requests_are_retried(stack, engines: tuple[str, str],  # type: ignore[no-untyped-def]
                                                                     lora_adapters: list[Path]) -> None:
    first, _ = engines
    dead = _dead_url()
    deps = _deps(stack, [dead, first])
    base = _seed(deps, BASE_MODEL_ID, None)
    adapter = _seed(deps, f"retry-{secrets.token_hex(3)}", lora_adapters[4])
    retries = _metric("coachforge_inference_retries_total", engine=dead)

    async def run() -> None:
        try:
            routed = await _ask(deps, base)  # the dead engine is tried first (nothing in flight anywhere)
            assert routed.engine == first
            assert _metric("coachforge_inference_retries_total", engine=dead) == retries + 1
            assert _metric("coachforge_inference_engine_up", engine=dead) == 0
            assert (await _ask(deps, adapter)).engine == first  # out of rotation: no second retry
            assert _metric("coachforge_inference_retries_total", engine=dead) == retries + 1
            # Streaming: a stream whose engine cannot be reached before its first byte is retried too.
            deps.pool.engine(dead).up = True
            events, routed = await service.stream(deps, TENANT, "/v1/completions", _body(base, stream=True))
            lines = [line async for line in events if line.strip()]
            assert routed.engine == first and lines[-1].strip() == b"data: [DONE]"
            assert _metric("coachforge_inference_retries_total", engine=dead) == retries + 2
        finally:
            await deps.close()
        assert [e.inflight for e in deps.pool.engines] == [0, 0]

        # Nothing reachable: a clean 503, no hang.
        only_dead = _deps(stack, [dead, _dead_url()])
        _seed(only_dead, BASE_MODEL_ID, None)
        try:
            with pytest.raises(Unavailable):
                await service.complete(only_dead, TENANT, "/v1/completions", _body(BASE_MODEL_ID))
        finally:
            await only_dead.close()

        # The health checks alone (a task on this loop) take a dead engine out of rotation (and put a
        # live one in).
        watched = EnginePool([dead, first], health_interval_s=0.2)
        await watched.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and watched.engine(dead).up:
                await asyncio.sleep(0.1)
            assert not watched.engine(dead).up and watched.engine(first).up
            lease = watched.lease(None)
            assert lease.engine.url == first
            lease.release()
        finally:
            await watched.close()

    asyncio.run(run())


def test_an_engine_that_lost_its_adapters_loads_them_again(stack, engines: tuple[str, str],  # type: ignore[no-untyped-def]
                                                           lora_adapters: list[Path]) -> None:
    _, second = engines
    deps = _deps(stack, [second], max_loras=4)
    name = _seed(deps, f"lost-{secrets.token_hex(3)}", lora_adapters[2])

    async def run() -> None:
        try:
            await _ask(deps, name)
            # As after a restart: the engine no longer knows the adapter, the pool still thinks it does.
            r = httpx.post(f"{second}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)
            assert r.status_code == 200, r.text
            assert (await _ask(deps, name)).engine == second
            assert name in _on_engine(second)
        finally:
            await deps.close()

    asyncio.run(run())


def test_an_engine_that_dies_mid_stream_ends_it_cleanly_and_leaves_the_rotation(  # type: ignore[no-untyped-def]
        stack, engines: tuple[str, str], second_engine_process: tuple[str, subprocess.Popen[bytes]]) -> None:
    """Runs last: it kills the second engine (its whole process group) while a stream is running."""
    first, second = engines
    proc = second_engine_process[1]
    deps = _deps(stack, [second, first])
    base = _seed(deps, BASE_MODEL_ID, None)

    async def run() -> None:
        try:
            events, routed = await service.stream(deps, TENANT, "/v1/completions", _body(
                base, stream=True, max_tokens=400, ignore_eos=True))
            assert routed.engine == second
            lines: list[bytes] = []
            async for line in events:
                if line.strip():
                    lines.append(line)
                if len(lines) == 3:
                    os.killpg(proc.pid, signal.SIGKILL)
            # Bytes were sent already: no retry, the stream ends with the typed error's own body.
            error = json.loads(lines[-1][6:])
            assert isinstance(routed.error, Unavailable) and error == routed.error.to_body()
            assert error["error"]["type"] == "server_error" and "unreachable" in error["error"]["message"], error
            assert not deps.pool.engine(second).up
            assert _metric("coachforge_inference_engine_up", engine=second) == 0
            assert (await _ask(deps, base)).engine == first  # out of rotation
        finally:
            await deps.close()

    asyncio.run(run())
    assert [e.inflight for e in deps.pool.engines] == [0, 0]
