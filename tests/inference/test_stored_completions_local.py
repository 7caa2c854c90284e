"""Stored chat completions without the stack: the request path against a local server that answers
like a vLLM engine (what is published for ``store: true``, streamed or not; nothing for other
requests; ``store`` and ``metadata`` checked and kept from the engine), the ``completion.stored``
consumer (idempotent), and the REST API over its repository (filters, cursor pages, metadata
update, delete, feedback per rater, validation) on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coachforge.inference.v1 import inference_pb2
from coachforge.registry.v1 import registry_pb2
from coachforge_inference import api, service, stored
from coachforge_inference import grpc as inference_grpc
from coachforge_inference.models import CompletionFeedback, StoredCompletion, StoredCompletionMetadata
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, Resolution
from coachforge_inference.settings import InferenceSettings
from coachforge_inference.validation import check_metadata
from coachforge_shared import migrate
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, NotFound
from coachforge_shared.events import EventConsumer, encode
from coachforge_shared.grpc_server import InternalChannel
from coachforge_shared.http import install_error_handlers

TENANT = "acme"
BASE = "fake-base"
"""The base model a FakeEngine serves (``FakeEngine.BASE``, tests/inference/conftest.py)."""
CHAT = "/v1/chat/completions"


class _Publisher:
    """Keeps what would be published (the broker is not what these tests are about)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any, str, dict[str, Any]]] = []

    def publish(self, topic: str, message: Any, tenant_id: str, **kwargs: Any) -> str:
        self.published.append((topic, message, tenant_id, kwargs))
        return "evt"

    def stored(self) -> list[inference_pb2.CompletionStored]:
        return [m for topic, m, _, _ in self.published if topic == "completion.stored"]


def _engine_deps(url: str, publisher: _Publisher) -> InferenceDeps:
    deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                         registry=InternalChannel("127.0.0.1:9", "internal"),
                         engines=EnginePool([url], timeout_s=10, health_interval_s=0),
                         publisher=publisher)  # type: ignore[arg-type]
    deps._cache[(TENANT, BASE)] = (time.monotonic(), Resolution(registry_pb2.Model(id=BASE, base_model=BASE)))
    avatar = registry_pb2.Model(id=f"ft:{BASE}:acme:coach:1", base_model=BASE, adapter_name="coach",
                                adapter_uri="/adapters/coach", fallback="error")
    deps._cache[(TENANT, "coach-anna")] = (time.monotonic(), Resolution(avatar))
    return deps


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": BASE, "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Rest today?"}],
            "max_tokens": 3, "temperature": 0.2, **extra}


async def _lines(events: Any) -> list[bytes]:
    return [line async for line in events if line.strip()]


def test_store_publishes_the_answer_and_nothing_else_does(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine(chunks=3) as engine:
            publisher = _Publisher()
            deps = _engine_deps(engine.url, publisher)
            try:
                raw, routed = await service.complete(deps, TENANT, CHAT, _chat(user="athlete-7"))
                assert json.loads(raw)["choices"][0]["message"]["content"] == "t0t1t2"
                assert routed.store is None and publisher.published[-1][0] == "usage.recorded"
                assert "store" not in engine.bodies[-1] and "metadata" not in engine.bodies[-1]

                raw, routed = await service.complete(deps, TENANT, CHAT, _chat(
                    user="athlete-7", store=True, metadata={"app": "polarize", "screen": "week"}))
                answer = json.loads(raw)
                assert "store" not in engine.bodies[-1] and "metadata" not in engine.bodies[-1]
                assert engine.bodies[-1]["temperature"] == 0.2
                (event,) = publisher.stored()
                topic, _, tenant, kwargs = publisher.published[-1]
                assert topic == "completion.stored" and tenant == TENANT and kwargs["wait"] is False
                assert event.id == answer["id"] and event.created == answer["created"]
                assert (event.model, event.requested_model, event.avatar, event.variant, event.user) == (
                    BASE, BASE, "", "", "athlete-7")
                assert json.loads(event.metadata_json) == {"app": "polarize", "screen": "week"}
                assert json.loads(event.messages_json) == _chat()["messages"]
                assert json.loads(event.params_json) == {"max_tokens": 3, "temperature": 0.2}
                assert json.loads(event.choices_json) == [
                    {"index": 0, "message": {"role": "assistant", "content": "t0t1t2"}, "finish_reason": "length"}]
                assert event.usage.total_tokens == 6 and event.latency_seconds > 0
                assert not event.stream and event.purpose == "app"

                # store: false (metadata alone is checked, then dropped like store)
                await service.complete(deps, TENANT, CHAT, _chat(store=False, metadata={"a": "b"}))
                assert len(publisher.stored()) == 1 and "metadata" not in engine.bodies[-1]

                # an avatar: the answering model, the avatar and what was asked
                engine.loaded.add("coach")
                deps.pool.engines[0].adapters["coach"] = time.monotonic()  # loaded already
                await service.complete(deps, TENANT, CHAT, _chat(model="coach-anna", store=True))
                event = publisher.stored()[-1]
                assert (event.model, event.requested_model, event.avatar) == (
                    f"ft:{BASE}:acme:coach:1", "coach-anna", "coach-anna")
            finally:
                await deps.close()

    asyncio.run(run())


def test_a_stored_stream_is_added_up_and_published_at_its_end(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine(chunks=4) as engine:
            publisher = _Publisher()
            deps = _engine_deps(engine.url, publisher)
            try:
                events, routed = await service.stream(deps, TENANT, CHAT, _chat(stream=True))
                lines = await _lines(events)
                assert publisher.stored() == []
                events, routed = await service.stream(deps, TENANT, CHAT, _chat(
                    stream=True, store=True, metadata={"k": "v"}))
                stored_lines = await _lines(events)
                assert stored_lines == lines  # passed on unchanged (no usage chunk: not asked for)
                assert "store" not in engine.bodies[-1] and "metadata" not in engine.bodies[-1]
                (event,) = publisher.stored()
                assert event.id == "cmpl-fake" and event.stream
                assert json.loads(event.choices_json) == [
                    {"index": 0, "message": {"role": "assistant", "content": "t0t1t2t3"}, "finish_reason": "length"}]
                assert event.usage.completion_tokens == 4  # the usage chunk the caller did not ask for
                assert json.loads(event.params_json) == {"max_tokens": 3, "temperature": 0.2}

                engine.error_after = 2  # broken after it began: nothing is kept
                events, routed = await service.stream(deps, TENANT, CHAT, _chat(stream=True, store=True))
                await _lines(events)
                assert routed.error is not None and len(publisher.stored()) == 1

                engine.error_after = None  # the client goes away before the end: nothing is kept
                events, routed = await service.stream(deps, TENANT, CHAT, _chat(stream=True, store=True))
                await events.__anext__()
                await events.aclose()  # type: ignore[attr-defined]
                assert len(publisher.stored()) == 1
                assert [e.inflight for e in deps.pool.engines] == [0]
            finally:
                await deps.close()

    asyncio.run(run())


def test_store_and_metadata_are_checked_before_the_engine_is_asked(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as engine:
            publisher = _Publisher()
            deps = _engine_deps(engine.url, publisher)
            try:
                cases: list[tuple[str, dict[str, Any], str]] = [
                    (CHAT, _chat(store=True, metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
                    (CHAT, _chat(store=True, metadata={"k" * 65: "v"}), "metadata"),
                    (CHAT, _chat(store=True, metadata={"": "v"}), "metadata"),
                    (CHAT, _chat(store=True, metadata={"k": "v" * 513}), "metadata"),
                    (CHAT, _chat(store=True, metadata={"k": 1}), "metadata"),
                    (CHAT, _chat(store=True, metadata=["k"]), "metadata"),
                    (CHAT, _chat(metadata="k=v"), "metadata"),
                    (CHAT, _chat(store="yes"), "store"),
                    ("/v1/completions", {"model": BASE, "prompt": "x", "store": True}, "store"),
                ]
                for path, body, param in cases:
                    with pytest.raises(InvalidArgument) as err:
                        await service.complete(deps, TENANT, path, body)
                    assert err.value.param == param, body
                    with pytest.raises(InvalidArgument):
                        await service.stream(deps, TENANT, path, {**body, "stream": True})
                assert engine.bodies == [] and publisher.published == []
                assert check_metadata({f"k{i}": "v" * 512 for i in range(16)})  # the limits themselves pass
                assert check_metadata(None) == {}
            finally:
                await deps.close()

    asyncio.run(run())


def test_grpc_requests_ask_for_store_as_rest_does() -> None:
    request = inference_pb2.ChatCompletionRequest(
        model=BASE, messages=[inference_pb2.ChatMessage(role="user", content="x")], store=True,
        metadata={"app": "coach"})
    body = inference_grpc._body(request)
    assert body["store"] is True and body["metadata"] == {"app": "coach"}
    plain = inference_grpc._body(inference_pb2.ChatCompletionRequest(model=BASE))
    assert "store" not in plain and "metadata" not in plain


# --- the consumer and the API, on SQLite and PostgreSQL ---


def _tenants(db: Database) -> None:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    add_api_key(db, "acme", "cf-acme-key")
    add_api_key(db, "globex", "cf-globex-key")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "scratch_postgres")
    migrate.upgrade(url)
    database = Database(url)
    _tenants(database)
    yield database
    database.dispose()


def _event(completion_id: str, *, tenant: str = "acme", created: int = 1_700_000_000, model: str = BASE,
           requested: str = "", metadata: dict[str, str] | None = None, text: str = "Easy run.",
           messages: list[dict[str, Any]] | None = None) -> bytes:
    msg = inference_pb2.CompletionStored(
        id=completion_id, created=created, model=model, requested_model=requested or model,
        avatar=requested if requested.startswith("coach-") else "", user="athlete-1",
        metadata_json=json.dumps(metadata or {}),
        messages_json=json.dumps(messages or [{"role": "user", "content": "Run today?"}]),
        params_json=json.dumps({"temperature": 0}),
        choices_json=json.dumps([{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}]),
        usage=inference_pb2.Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8), latency_seconds=0.25)
    return encode("completion.stored", msg, tenant).SerializeToString()


def _consumer(db: Database) -> EventConsumer:
    consumer = EventConsumer.__new__(EventConsumer)  # handle() needs no broker connection
    consumer.group, consumer.handler, consumer.db = "stored-test", stored.on_completion_stored, db
    return consumer


def _count(db: Database, model: type) -> int:
    from sqlalchemy import func, select

    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_the_consumer_keeps_each_completion_once(any_db: Database) -> None:
    consumer = _consumer(any_db)
    raw = _event("chatcmpl-1", metadata={"app": "polarize"})
    assert consumer.handle(raw)[0] == "handled"
    assert consumer.handle(raw)[0] == "duplicate"  # redelivered
    assert consumer.handle(_event("chatcmpl-1", metadata={"app": "other"}))[0] == "handled"  # republished
    assert _count(any_db, StoredCompletion) == 1 and _count(any_db, StoredCompletionMetadata) == 1
    deps = _api_deps(any_db)
    got = stored.get_completion(deps, "acme", "chatcmpl-1")
    assert got["metadata"] == {"app": "polarize"} and got["choices"][0]["message"]["content"] == "Easy run."
    assert got["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert got["object"] == "chat.completion" and got["created"] == 1_700_000_000
    assert got["user"] == "athlete-1" and got["latency_ms"] == 250.0
    with pytest.raises(NotFound) as err:
        stored.get_completion(deps, "globex", "chatcmpl-1")  # another tenant's
    assert err.value.param == "completion_id"


def _api_deps(db: Database) -> InferenceDeps:
    return InferenceDeps(settings=InferenceSettings(engine_url="http://127.0.0.1:9"),
                         registry=InternalChannel("127.0.0.1:9", "internal"), db=db)


def test_lists_filter_and_page_in_order(any_db: Database) -> None:
    consumer = _consumer(any_db)
    for i in range(5):  # two share a second: the later published comes later
        consumer.handle(_event(f"chatcmpl-{i}", created=1_700_000_000 + min(i, 3), model=BASE if i % 2 else "ft:x",
                               requested="coach-anna" if i == 4 else "",
                               metadata={"app": "polarize", "n": str(i)} if i < 4 else {"app": "other"}))
    consumer.handle(_event("chatcmpl-g", tenant="globex", metadata={"app": "polarize"}))
    deps = _api_deps(any_db)

    def ids(**kwargs: Any) -> tuple[list[str], bool]:
        page = stored.list_completions(deps, "acme", **{"model": None, "metadata": {}, "after": None, "limit": 20,
                                                        "order": "asc", **kwargs})
        data = [c["id"] for c in page["data"]]
        assert page["object"] == "list" and page["first_id"] == (data[0] if data else None)
        assert page["last_id"] == (data[-1] if data else None)
        return data, page["has_more"]

    every = [f"chatcmpl-{i}" for i in range(5)]
    assert ids() == (every, False)
    assert ids(order="desc") == (every[::-1], False)
    assert ids(limit=2) == (every[:2], True)
    assert ids(limit=2, after="chatcmpl-1") == (every[2:4], True)
    assert ids(limit=2, after="chatcmpl-3") == (every[4:], False)
    assert ids(limit=2, after="chatcmpl-3", order="desc") == (["chatcmpl-2", "chatcmpl-1"], True)
    assert ids(metadata={"app": "polarize"}) == (every[:4], False)
    assert ids(metadata={"app": "polarize", "n": "2"}) == (["chatcmpl-2"], False)
    assert ids(metadata={"app": "nope"}) == ([], False)
    assert ids(model=BASE) == (["chatcmpl-1", "chatcmpl-3"], False)
    assert ids(model="coach-anna") == (["chatcmpl-4"], False)  # an avatar as requested
    with pytest.raises(NotFound) as err:
        ids(after="chatcmpl-g")  # another tenant's id is no cursor
    assert err.value.param == "after"


@pytest.fixture
def client(any_db: Database) -> TestClient:
    app = FastAPI()
    app.state.authenticator = Authenticator(any_db, internal_token="internal")
    app.state.inference = _api_deps(any_db)
    install_error_handlers(app)
    app.include_router(api.router)
    return TestClient(app, raise_server_exceptions=False)


ACME = {"Authorization": "Bearer cf-acme-key"}
GLOBEX = {"Authorization": "Bearer cf-globex-key"}


def test_rest_messages_metadata_and_delete(any_db: Database, client: TestClient) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Run?"},
                {"role": "assistant", "content": "Yes."},
                {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "tomorrow?"}]}]
    _consumer(any_db).handle(_event("chatcmpl-m", messages=messages, metadata={"a": "1"}))
    r = client.get("/v1/chat/completions/chatcmpl-m/messages", headers=ACME)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["id"] for m in body["data"]] == [f"chatcmpl-m-{i}" for i in range(4)] and not body["has_more"]
    assert body["data"][0] == {"id": "chatcmpl-m-0", "role": "system", "content": "Be brief.", "content_parts": None}
    assert body["data"][3]["content"] == "And tomorrow?" and len(body["data"][3]["content_parts"]) == 2
    r = client.get("/v1/chat/completions/chatcmpl-m/messages", headers=ACME,
                   params={"limit": 2, "after": "chatcmpl-m-0"})
    assert [m["id"] for m in r.json()["data"]] == ["chatcmpl-m-1", "chatcmpl-m-2"] and r.json()["has_more"]
    r = client.get("/v1/chat/completions/chatcmpl-m/messages", headers=ACME, params={"order": "desc", "limit": 1})
    assert [m["id"] for m in r.json()["data"]] == ["chatcmpl-m-3"]
    r = client.get("/v1/chat/completions/chatcmpl-m/messages", headers=ACME, params={"after": "chatcmpl-x-1"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "after"

    r = client.post("/v1/chat/completions/chatcmpl-m", headers=ACME, json={"metadata": {"b": "2"}})
    assert r.status_code == 200 and r.json()["metadata"] == {"b": "2"}
    assert client.get("/v1/chat/completions", headers=ACME, params={"metadata[b]": "2"}).json()["data"][0][
        "id"] == "chatcmpl-m"
    assert client.get("/v1/chat/completions", headers=ACME, params={"metadata[a]": "1"}).json()["data"] == []
    r = client.post("/v1/chat/completions/chatcmpl-m", headers=ACME, json={"metadata": None})
    assert r.status_code == 200 and r.json()["metadata"] == {}
    for body in ({"metadata": {"k": "v" * 513}}, {"metadata": {"k": 1}}, {"metadata": "x"}, {}):
        r = client.post("/v1/chat/completions/chatcmpl-m", headers=ACME, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "metadata", (body, r.text)
    for params, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "up"}, "order"),
                          ({"after": "nope"}, "after")):
        r = client.get("/v1/chat/completions", headers=ACME, params=params)
        assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text

    client.post("/v1/chat/completions/chatcmpl-m/feedback", headers=ACME, json={"rating": 4})
    for method in ("GET", "DELETE"):
        r = client.request(method, "/v1/chat/completions/chatcmpl-m", headers=GLOBEX)
        assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"
    r = client.delete("/v1/chat/completions/chatcmpl-m", headers=ACME)
    assert r.json() == {"id": "chatcmpl-m", "object": "chat.completion.deleted", "deleted": True}
    assert _count(any_db, CompletionFeedback) == 0 and _count(any_db, StoredCompletionMetadata) == 0
    for path in ("", "/messages", "/feedback"):
        r = client.get(f"/v1/chat/completions/chatcmpl-m{path}", headers=ACME)
        assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"
    assert client.delete("/v1/chat/completions/chatcmpl-m", headers=ACME).status_code == 404


def test_feedback_one_row_per_rater_with_a_summary(any_db: Database, client: TestClient) -> None:
    _consumer(any_db).handle(_event("chatcmpl-f"))
    url = "/v1/chat/completions/chatcmpl-f/feedback"
    r = client.post(url, headers=ACME, json={"rating": 2, "comment": "too long"})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["rater"].startswith("api-key:") and first["rating"] == 2 and first["gold"] is False
    assert first["object"] == "chat.completion.feedback" and first["completion_id"] == "chatcmpl-f"
    r = client.post(url, headers=ACME, json={"gold": True, "correction": "Easy 30 minutes."})
    again = r.json()  # the same rater: replaced (rating and comment gone)
    assert again["id"] == first["id"] and again["rating"] is None and again["comment"] is None
    assert again["gold"] is True and again["correction"] == "Easy 30 minutes."
    client.post(url, headers=ACME, json={"rating": 5, "rater": "coach-maria"})
    client.post(url, headers=ACME, json={"rating": 4, "rater": "coach-tom", "gold": True})
    listed = client.get(url, headers=ACME).json()
    assert [f["rater"] for f in listed["data"]] == [first["rater"], "coach-maria", "coach-tom"]
    assert listed["has_more"] is False
    summary = client.get("/v1/chat/completions/chatcmpl-f", headers=ACME).json()["feedback"]
    assert summary == {"count": 3, "mean_rating": 4.5, "gold_count": 2, "has_correction": True}
    assert client.get("/v1/chat/completions", headers=ACME).json()["data"][0]["feedback"] == summary
    assert _count(any_db, CompletionFeedback) == 3

    for body, param in (({}, "rating"), ({"comment": "meh"}, "rating"), ({"gold": False}, "rating"),
                        ({"rating": 0}, "rating"), ({"rating": 6}, "rating"), ({"rating": "5"}, "rating"),
                        ({"rating": 4.5}, "rating"), ({"rating": True}, "rating"), ({"gold": "yes"}, "gold"),
                        ({"correction": ""}, "correction"), ({"rating": 3, "rater": ""}, "rater"),
                        ({"rating": 3, "stars": 3}, "stars")):
        r = client.post(url, headers=ACME, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    r = client.post(url, headers=ACME, content=b"[1]")
    assert r.status_code == 400
    r = client.post("/v1/chat/completions/chatcmpl-nope/feedback", headers=ACME, json={"rating": 3})
    assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"
    r = client.post(url, headers=GLOBEX, json={"rating": 3})
    assert r.status_code == 404
    assert client.get(url, headers=GLOBEX).status_code == 404
    assert client.get(url).status_code == 401


def test_filtered_lists_are_the_full_list_matching_in_order(any_db: Database) -> None:
    """A list with metadata pairs (one or two, common or rare, with a model or not) walked page by
    page in either order is the tenant's full list, kept to the completions that match, in the same
    order (several completions share a second); the pairs carry their completion's tenant and
    order, also after a metadata update; another tenant's pairs never match."""
    from sqlalchemy import select

    consumer = _consumer(any_db)
    for i in range(24):
        metadata = {"source": "eval" if i % 4 == 0 else "app", "screen": ("week", "day", "plan")[i % 3]}
        if i % 5 == 0:
            metadata["athlete_id"] = "ath-7"
        consumer.handle(_event(f"chatcmpl-{i:02d}", created=1_700_000_000 + i // 3, model=BASE if i % 2 else "ft:x",
                               metadata=metadata))
    consumer.handle(_event("chatcmpl-g", tenant="globex", metadata={"source": "app", "screen": "week"}))
    deps = _api_deps(any_db)
    stored.update_completion(deps, "acme", "chatcmpl-01", {"source": "eval", "screen": "week", "athlete_id": "ath-7"})
    with any_db.session() as s:
        row = s.get(StoredCompletion, "chatcmpl-01")
        assert row is not None
        m = StoredCompletionMetadata
        pairs = s.scalars(select(m).where(m.completion_id == row.id)).all()
        assert len(pairs) == 3 and {(p.tenant_id, p.created, p.created_at) for p in pairs} == {
            ("acme", row.created, row.created_at)}
    every = stored.list_completions(deps, "acme", model=None, metadata={}, after=None, limit=100, order="asc")["data"]
    assert len(every) == 24

    def walk(model: str | None, metadata: dict[str, str], order: str) -> list[str]:
        got: list[str] = []
        after = None
        while True:
            page = stored.list_completions(deps, "acme", model=model, metadata=metadata, after=after, limit=3,
                                           order=order)
            got += [c["id"] for c in page["data"]]
            if not page["has_more"]:
                return got
            after = page["last_id"]

    for metadata in ({"source": "app"}, {"source": "eval", "screen": "week"}, {"athlete_id": "ath-7", "source": "app"},
                     {"screen": "day", "athlete_id": "ath-7"}, {"source": "web"}):
        for model in (None, BASE):
            want = [c["id"] for c in every if (model is None or c["model"] == model)
                    and all(c["metadata"].get(k) == v for k, v in metadata.items())]
            assert walk(model, metadata, "asc") == want
            assert walk(model, metadata, "desc") == want[::-1]
