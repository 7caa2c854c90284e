"""Billing exactly once (real broker, real database, the usage consumer): a request's usage event
has one id, minted once per request, so publishing it again (a retry, a replay, an outbox relay)
bills nothing more; a stream its client abandons is billed once, for the prompt and the tokens the
engine generated until then (its running count, taken out of the chunks the caller gets)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from coachforge.registry.v1 import registry_pb2
from coachforge_inference import service, usage
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, Resolution
from coachforge_inference.settings import InferenceSettings
from coachforge_inference.validation import CHAT
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, EventPublisher, ensure_topics
from coachforge_shared.grpc_server import InternalChannel

QUESTION = [{"role": "user", "content": "How long should my long run be?"}]


@pytest.fixture
def tenant(db: Database) -> str:
    name = f"billing-{secrets.token_hex(4)}"
    create_tenant(db, name)
    return name


@pytest.fixture
def publisher(broker: str, db: Database, tenant: str) -> Iterator[EventPublisher]:
    """A publisher, and the usage consumer (a group of the test's own) adding the tenant's events
    to the test's database (other tests' events on the shared broker are skipped)."""
    ensure_topics(broker)

    def only_ours(s: Any, env: Any, payload: Any) -> None:
        if env.tenant_id == tenant:
            usage.on_usage_recorded(s, env, payload)

    consumer = EventConsumer(broker, f"usage-{tenant}", ["usage.recorded"], only_ours, db)
    consumer.start()
    publisher = EventPublisher(broker, "billing-test")
    yield publisher
    publisher.close()
    consumer.stop()


def _rows_once(db: Database, tenant: str, messages: int, timeout: float = 60) -> dict[str, Any]:
    """The tenant's one usage row once it counts ``messages`` requests."""
    deadline = time.monotonic() + timeout
    while True:
        rows = usage.daily_usage(db, tenant, usage.make_query(group_by="model"))
        if rows and rows[0]["messages"] >= messages:
            (row,) = rows
            return row
        assert time.monotonic() < deadline, f"usage rows did not arrive: {rows}"
        time.sleep(0.05)


def test_a_requests_usage_published_twice_is_billed_once(db: Database, tenant: str,
                                                         publisher: EventPublisher) -> None:
    deps = InferenceDeps(settings=InferenceSettings(engine_url="http://127.0.0.1:9"),
                         registry=InternalChannel("127.0.0.1:9", "internal"), publisher=publisher)
    model = registry_pb2.Model(id=f"ft:base:{tenant}:coach:1", base_model="base", adapter_name="coach-1",
                               fallback="base")
    try:
        first = service.Routed(model, {})
        # The same request answered by the base model instead keeps its usage event id.
        assert service._fallback(tenant, first).usage_event_id == first.usage_event_id
        for _ in range(2):  # published twice (e.g. sent again after a broker hiccup)
            service.record_usage(deps, tenant, model, {"prompt_tokens": 10, "completion_tokens": 4},
                                 time.perf_counter(), event_id=first.usage_event_id)
        other = service.Routed(model, {})
        assert other.usage_event_id != first.usage_event_id
        service.record_usage(deps, tenant, model, {"prompt_tokens": 1, "completion_tokens": 1}, time.perf_counter(),
                             event_id=other.usage_event_id)
        # The other request was published last, on the same partition (keyed by model): once it is
        # counted, the repeated one has been seen too.
        row = _rows_once(db, tenant, 2)
    finally:
        deps.registry.close()
    assert (row["messages"], row["input_tokens"], row["output_tokens"]) == (2, 11, 5)


def test_an_abandoned_stream_is_billed_once_for_the_tokens_generated_until_then(
        db: Database, tenant: str, publisher: EventPublisher, fake_engine: Callable[..., Any]) -> None:
    async def run() -> None:
        async with fake_engine(chunks=50) as engine:
            deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                                 registry=InternalChannel("127.0.0.1:9", "internal"),
                                 engines=EnginePool([engine.url], timeout_s=10, max_loras=2, health_interval_s=0),
                                 publisher=publisher)
            base = registry_pb2.Model(id=engine.BASE, base_model=engine.BASE)
            deps._cache[(tenant, engine.BASE)] = (time.monotonic(), Resolution(base))
            try:
                events, routed = await service.stream(deps, tenant, CHAT, {
                    "model": engine.BASE, "messages": QUESTION, "stream": True,
                    "stream_options": {"include_usage": True}})
                received = []
                async for line in events:
                    if line.startswith(b"data: {"):
                        received.append(json.loads(line[6:]))
                        if len(received) == 2:
                            break
                # The client went away: the server closes the answer's generator (twice does no harm).
                await events.aclose()  # type: ignore[attr-defined]
                await events.aclose()  # type: ignore[attr-defined]
                assert [c["choices"][0]["delta"]["content"] for c in received] == ["t0", "t1"]
                assert all("usage" not in c for c in received), "the engine's running count is not passed on"
                assert routed.usage == {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2}
                assert [e.inflight for e in deps.pool.engines] == [0]  # the engine was released

                # A stream read to its end: the caller asked for the usage chunk, and gets only that one.
                events, finished = await service.stream(deps, tenant, CHAT, {
                    "model": engine.BASE, "messages": QUESTION, "stream": True,
                    "stream_options": {"include_usage": True}})
                chunks = [json.loads(line[6:]) async for line in events if line.startswith(b"data: {")]
                assert [c.get("usage") for c in chunks[:-1]] == [None] * 50
                assert chunks[-1]["usage"]["completion_tokens"] == 50 and not chunks[-1]["choices"]
                assert finished.usage_event_id != routed.usage_event_id
            finally:
                await deps.close()

    asyncio.run(run())
    row = _rows_once(db, tenant, 2)
    assert (row["messages"], row["input_tokens"], row["output_tokens"]) == (2, 3 + 3, 2 + 50)
