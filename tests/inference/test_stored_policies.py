"""Stored completion policies without the stack: which requests are stored (the request's own
``store``, else the avatar's, else the tenant's ``store_by_default``; read through the in-process
cache, never a database query per request), the avatar's setting carried from the registry into
the resolution cache, ``GET``/``PUT /v1/chat/completions/settings``, PII scrubbing in the
``completion.stored`` consumer, and the retention purge, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import event, func, select

from coachforge.inference.v1 import inference_pb2
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_inference import api, policies, retention, service, stored
from coachforge_inference.models import (
    CompletionFeedback,
    StoredCompletion,
    StoredCompletionMetadata,
    StoredCompletionPolicy,
)
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, Resolution
from coachforge_inference.settings import InferenceSettings
from coachforge_shared import migrate
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, encode
from coachforge_shared.grpc_server import InternalChannel
from coachforge_shared.http import install_error_handlers
from coachforge_shared.ids import utcnow

TENANT = "acme"
BASE = "fake-base"
"""The base model a FakeEngine serves (``FakeEngine.BASE``, tests/inference/conftest.py)."""
CHAT = "/v1/chat/completions"
ACME = {"Authorization": "Bearer cf-acme-key"}
GLOBEX = {"Authorization": "Bearer cf-globex-key"}


class _Publisher:
    """Keeps what would be published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any, str, dict[str, Any]]] = []

    def publish(self, topic: str, message: Any, tenant_id: str, **kwargs: Any) -> str:
        self.published.append((topic, message, tenant_id, kwargs))
        return "evt"

    def stored(self) -> list[inference_pb2.CompletionStored]:
        return [m for topic, m, _, _ in self.published if topic == "completion.stored"]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _tenants(db: Database, *names: str) -> None:
    for tenant in names or ("acme", "globex"):
        create_tenant(db, tenant)
    if not names:
        add_api_key(db, "acme", "cf-acme-key")
        add_api_key(db, "globex", "cf-globex-key")


class _Queries:
    """Counts the SQL statements a database runs while active."""

    def __init__(self, db: Database) -> None:
        self.db, self.count = db, 0

    def _seen(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> _Queries:
        event.listen(self.db.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.db.engine, "before_cursor_execute", self._seen)


# --- which requests are stored ---


def _avatar(store: bool | None) -> Resolution:
    model = registry_pb2.Model(id=f"ft:{BASE}:acme:coach:1", base_model=BASE, adapter_name="coach",
                               adapter_uri="/adapters/coach", fallback="error")
    return Resolution(model, store=store)


def _engine_deps(url: str, publisher: _Publisher, db: Database | None) -> InferenceDeps:
    deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600, stored_policy_cache_s=3600,
                                                    limits_cache_s=3600),
                         registry=InternalChannel("127.0.0.1:9", "internal"),
                         engines=EnginePool([url], timeout_s=10, health_interval_s=0),
                         publisher=publisher, db=db)  # type: ignore[arg-type]
    if db is not None:
        deps.limiter.refresh(TENANT)  # the tenant's rate limits (none), read before the queries are counted
    now = time.monotonic()
    deps._cache[(TENANT, BASE)] = (now, Resolution(registry_pb2.Model(id=BASE, base_model=BASE)))
    for name, store in (("follows", None), ("keeps", True), ("skips", False)):
        deps._cache[(TENANT, name)] = (now, _avatar(store))
    return deps


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": BASE, "messages": [{"role": "user", "content": "Rest today?"}], "max_tokens": 3, **extra}


def test_request_then_avatar_then_tenant_decide_and_the_policy_is_cached(db: Database, fake_engine: Any) -> None:
    _tenants(db, TENANT)

    async def run() -> None:
        async with fake_engine(chunks=2) as engine:
            publisher = _Publisher()
            deps = _engine_deps(engine.url, publisher, db)
            engine.loaded.add("coach")
            deps.pool.engines[0].adapters["coach"] = time.monotonic()  # loaded already

            async def kept(model: str = BASE, path: str = CHAT, purpose: str = "app", **extra: Any) -> bool:
                before = len(publisher.stored())
                body = _chat(model=model, **extra) if path == CHAT else {"model": model, "prompt": "x", **extra}
                if extra.get("stream"):
                    events, _ = await service.stream(deps, TENANT, path, body, purpose=purpose)
                    assert [line async for line in events]
                else:
                    await service.complete(deps, TENANT, path, body, purpose=purpose)
                return len(publisher.stored()) > before

            try:
                with _Queries(db) as queries:  # no policy cached yet: read once, then from the cache
                    assert not await kept()  # the tenant's default: not stored
                    assert not await kept()
                    assert not await kept("follows")
                assert queries.count == 1
                assert await kept("keeps") and not await kept("skips")  # the avatar's own setting
                assert await kept(store=True) and await kept("skips", store=True)  # the request's own
                assert not await kept("keeps", store=False)

                policies.put_settings(deps, TENANT, {"store_by_default": True})  # this replica: at once
                with _Queries(db) as queries:
                    assert await kept() and await kept("follows") and await kept("keeps")
                    assert await kept(store=None)  # null says nothing
                    assert await kept(stream=True)
                    assert not await kept("skips") and not await kept(store=False)
                    assert not await kept("keeps", store=False, stream=True)
                    # only an application's chat completions are stored by default
                    assert not await kept(path="/v1/completions")
                    assert not await kept(purpose="evaluation")
                    assert await kept(purpose="evaluation", store=True)
                assert queries.count == 0

                # stored by default, with the request's metadata
                assert await kept("follows", metadata={"screen": "week"})
                last = publisher.stored()[-1]
                assert json.loads(last.metadata_json) == {"screen": "week"} and last.avatar == "follows"
                assert "store" not in engine.bodies[-1] and "metadata" not in engine.bodies[-1]

                # another replica's change is seen once the cached policy expires
                with db.session() as s:
                    s.get(StoredCompletionPolicy, TENANT).store_by_default = False  # type: ignore[union-attr]
                assert await kept()
                deps.policy_cache.ttl_s = 0
                assert not await kept()
            finally:
                await deps.close()

    asyncio.run(run())


def test_without_a_database_only_requests_and_avatars_store(fake_engine: Any) -> None:
    async def run() -> None:
        async with fake_engine() as engine:
            publisher = _Publisher()
            deps = _engine_deps(engine.url, publisher, None)
            engine.loaded.add("coach")
            deps.pool.engines[0].adapters["coach"] = time.monotonic()
            try:
                await service.complete(deps, TENANT, CHAT, _chat())
                await service.complete(deps, TENANT, CHAT, _chat(model="follows"))
                assert publisher.stored() == []
                await service.complete(deps, TENANT, CHAT, _chat(model="keeps"))
                assert len(publisher.stored()) == 1
            finally:
                await deps.close()

    asyncio.run(run())


class _Registry(registry_pb2_grpc.RegistryServiceServicer):
    """Avatars that keep, skip or follow the tenant; "ab" has a candidate."""

    MODEL = registry_pb2.Model(id="ft:m", base_model=BASE, adapter_name="m", adapter_uri="/adapters/m")

    def GetModel(self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext) -> registry_pb2.Model:
        model = registry_pb2.Model()
        model.CopyFrom(self.MODEL)
        if request.model_id != "ft:m":
            model.fallback = "error"  # an avatar
        return model

    def GetAvatar(self, request: registry_pb2.GetAvatarRequest, context: grpc.ServicerContext) -> registry_pb2.Avatar:
        avatar = registry_pb2.Avatar(name=request.name, active_model="ft:m", fallback="error")
        if request.name in ("keeps", "ab"):
            avatar.store = True
        elif request.name == "skips":
            avatar.store = False
        if request.name == "ab":
            avatar.candidate_model, avatar.candidate_share = "ft:m", 50
        return avatar


def test_the_avatar_setting_comes_with_its_cached_resolution() -> None:
    registry = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(_Registry(), registry)
    port = registry.add_insecure_port("127.0.0.1:0")
    registry.start()
    deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600, engine_url="http://127.0.0.1:9"),
                         registry=InternalChannel(f"127.0.0.1:{port}", "internal"))
    try:
        got = {name: deps._fetch(TENANT, name) for name in ("keeps", "skips", "follows", "ab", "ft:m")}
        assert {name: r.store for name, r in got.items()} == {
            "keeps": True, "skips": False, "follows": None, "ab": True, "ft:m": None}
        assert got["ab"].candidate is not None and got["ab"].share == 50
        assert deps.cached(TENANT, "skips") is got["skips"]
        assert deps.invalidate(TENANT) == 5  # an avatar change (model.avatar_updated) drops them
    finally:
        deps.registry.close()
        registry.stop(None)


# --- the policy API, the consumer and the purge, on SQLite and PostgreSQL ---


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "scratch_postgres")
    migrate.upgrade(url)
    database = Database(url)
    _tenants(database)
    yield database
    database.dispose()


def _api_deps(db: Database, **settings: Any) -> InferenceDeps:
    return InferenceDeps(settings=InferenceSettings(engine_url="http://127.0.0.1:9", **settings),
                         registry=InternalChannel("127.0.0.1:9", "internal"), db=db)


def _client(deps: InferenceDeps) -> TestClient:
    assert deps.db is not None
    app = FastAPI()
    app.state.authenticator = Authenticator(deps.db, internal_token="internal")
    app.state.inference = deps
    install_error_handlers(app)
    app.include_router(api.router)
    return TestClient(app, raise_server_exceptions=False)


def test_settings_api_defaults_partial_updates_and_validation(any_db: Database) -> None:
    deps = _api_deps(any_db, stored_retention_days=14)
    client = _client(deps)
    url = "/v1/chat/completions/settings"
    defaults = {"object": "chat.completion.settings", "store_by_default": False, "retention_days": 14,
                "scrub_pii": True, "updated_at": None}
    r = client.get(url, headers=ACME)
    assert r.status_code == 200, r.text
    assert r.json() == defaults

    r = client.put(url, headers=ACME, json={"store_by_default": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["store_by_default"], body["retention_days"], body["scrub_pii"]) == (True, 14, True)
    assert abs(body["updated_at"] - time.time()) < 60
    cached = deps.policy_cache.get(TENANT)
    assert cached is not None and cached.store_by_default  # this replica's cache has it at once
    r = client.put(url, headers=ACME, json={"retention_days": 0, "scrub_pii": False})
    assert (r.json()["store_by_default"], r.json()["retention_days"], r.json()["scrub_pii"]) == (True, 0, False)
    assert client.put(url, headers=ACME, json={}).json() == r.json()  # nothing to change
    assert client.get(url, headers=ACME).json() == r.json()
    assert client.get(url, headers=GLOBEX).json() == defaults  # another tenant's
    with any_db.session() as s:
        assert s.scalar(select(func.count()).select_from(StoredCompletionPolicy)) == 1

    for bad, param in (({"retention_days": -1}, "retention_days"), ({"retention_days": "7"}, "retention_days"),
                       ({"retention_days": 7.5}, "retention_days"), ({"retention_days": True}, "retention_days"),
                       ({"retention_days": 36_501}, "retention_days"), ({"retention_days": None}, "retention_days"),
                       ({"store_by_default": "yes"}, "store_by_default"), ({"store_by_default": 1}, "store_by_default"),
                       ({"store_by_default": None}, "store_by_default"), ({"scrub_pii": "false"}, "scrub_pii"),
                       ({"scrub_pii": True, "keep_forever": True}, "keep_forever")):
        r = client.put(url, headers=ACME, json=bad)
        assert r.status_code == 400, (bad, r.text)
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", (bad, error)
    assert client.put(url, headers=ACME, content=b"[1]").status_code == 400
    assert client.get(url, headers=ACME).json()["retention_days"] == 0  # nothing changed
    assert client.get(url).status_code == 401 and client.put(url, json={}).status_code == 401
    # the completion routes still answer for completion ids
    r = client.get("/v1/chat/completions/chatcmpl-nope", headers=ACME)
    assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"


def _event(completion_id: str, *, tenant: str = "acme", created: int = 1_700_000_000,
           metadata: dict[str, str] | None = None, messages: list[Any] | None = None,
           text: str = "Easy run.") -> bytes:
    msg = inference_pb2.CompletionStored(
        id=completion_id, created=created, model=BASE, requested_model=BASE, user="athlete-1",
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


def test_the_consumer_scrubs_personal_data_unless_the_tenant_opted_out(any_db: Database) -> None:
    deps = _api_deps(any_db)
    consumer = _consumer(any_db)
    image = "data:image/png;base64,iVBORw0KGgo/+4412345678"
    messages = [{"role": "system", "content": "Coach of anna@example.com"},
                {"role": "user", "content": [{"type": "text", "text": "Call me on +44 20 7946 0958"},
                                             {"type": "image_url", "image_url": {"url": image}}]}]
    answer = "Sure, see https://plans.example/week?token=s3cr3t or mail coach@example.org"
    metadata = {"athlete": "anna@example.com", "screen": "week"}

    def scrubbed(tenant: str) -> float:
        return _metric("coachforge_inference_stored_completions_scrubbed_total", tenant=tenant)

    before = scrubbed("acme")
    raw = _event("chatcmpl-p", messages=messages, text=answer, metadata=metadata)
    assert consumer.handle(raw)[0] == "handled"
    assert consumer.handle(raw)[0] == "duplicate"
    consumer.handle(_event("chatcmpl-clean"))  # nothing to replace: not counted
    assert scrubbed("acme") == before + 1
    got = stored.get_completion(deps, "acme", "chatcmpl-p")
    assert got["choices"][0]["message"]["content"] == "Sure, see [URL] or mail [EMAIL]"
    assert got["metadata"] == {"athlete": "[EMAIL]", "screen": "week"}
    kept = stored.list_messages(deps, "acme", "chatcmpl-p", after=None, limit=10, order="asc")["data"]
    assert kept[0]["content"] == "Coach of [EMAIL]"
    assert kept[1]["content_parts"][0]["text"] == "Call me on [PHONE]"
    assert kept[1]["content_parts"][1]["image_url"]["url"] == image  # inline data is no text
    page = stored.list_completions(deps, "acme", model=None, metadata={"athlete": "[EMAIL]"}, after=None,
                                   limit=10, order="asc")
    assert [c["id"] for c in page["data"]] == ["chatcmpl-p"]  # the filter pairs are the scrubbed ones too

    policies.put_settings(deps, "globex", {"scrub_pii": False})
    before = scrubbed("globex")
    consumer.handle(_event("chatcmpl-raw", tenant="globex", messages=messages, text=answer, metadata=metadata))
    got = stored.get_completion(deps, "globex", "chatcmpl-raw")
    assert got["choices"][0]["message"]["content"] == answer and got["metadata"] == metadata
    assert scrubbed("globex") == before


def _count(db: Database, model: type, tenant: str | None = None) -> int:
    with db.session() as s:
        q = select(func.count()).select_from(model)
        if tenant is not None:
            q = q.where(model.tenant_id == tenant)  # type: ignore[attr-defined]
        return int(s.scalar(q) or 0)


def test_the_purge_deletes_what_is_past_each_tenants_retention(any_db: Database) -> None:
    create_tenant(any_db, "initech")
    deps = _api_deps(any_db, stored_retention_days=30, stored_purge_batch=2)
    policies.put_settings(deps, "globex", {"retention_days": 0})  # kept forever
    policies.put_settings(deps, "initech", {"retention_days": 7})
    consumer = _consumer(any_db)
    now = utcnow()

    def days_ago(days: float) -> int:
        return int((now - timedelta(days=days)).timestamp())

    old = [f"chatcmpl-old{i}" for i in range(5)]
    for i, ident in enumerate(old):  # acme: the default retention (30 days)
        consumer.handle(_event(ident, created=days_ago(40 + i), metadata={"n": str(i)}))
    for ident in ("chatcmpl-new1", "chatcmpl-new2"):
        consumer.handle(_event(ident, created=days_ago(10), metadata={"n": "new"}))
    consumer.handle(_event("chatcmpl-g", tenant="globex", created=days_ago(400), metadata={"n": "g"}))
    consumer.handle(_event("chatcmpl-i-old", tenant="initech", created=days_ago(8)))
    consumer.handle(_event("chatcmpl-i-new", tenant="initech", created=days_ago(6)))
    for ident in (old[0], old[3], "chatcmpl-new1"):
        stored.post_feedback(deps, "acme", ident, {"rating": 4, "gold": True}, "coach-maria")
    stored.post_feedback(deps, "acme", old[0], {"rating": 2}, "coach-tom")
    stored.post_feedback(deps, "globex", "chatcmpl-g", {"rating": 5}, "coach-maria")

    before = _metric("coachforge_inference_stored_completions_purged_total", tenant="acme")
    assert retention.purge_expired(deps, now=now) == 6
    assert _metric("coachforge_inference_stored_completions_purged_total", tenant="acme") == before + 5
    with any_db.session() as s:
        left = sorted(s.scalars(select(StoredCompletion.id)))
        assert left == ["chatcmpl-g", "chatcmpl-i-new", "chatcmpl-new1", "chatcmpl-new2"]
        assert sorted(s.scalars(select(StoredCompletionMetadata.completion_id))) == [
            "chatcmpl-g", "chatcmpl-new1", "chatcmpl-new2"]
        assert sorted(s.scalars(select(CompletionFeedback.completion_id))) == ["chatcmpl-g", "chatcmpl-new1"]
    assert retention.purge_expired(deps, now=now) == 0  # nothing left to do: idempotent
    # later on, the newer ones expire too; a tenant that keeps forever keeps
    assert retention.purge_expired(deps, now=now + timedelta(days=25)) == 3
    assert _count(any_db, StoredCompletion) == 1 and _count(any_db, CompletionFeedback) == 1


def test_replicas_purging_at_once_delete_each_row_once(any_db: Database) -> None:
    deps = _api_deps(any_db, stored_retention_days=1, stored_purge_batch=3)
    consumer = _consumer(any_db)
    created = int((utcnow() - timedelta(days=2)).timestamp())
    for i in range(40):
        consumer.handle(_event(f"chatcmpl-{i:02d}", created=created, metadata={"i": str(i)}))
        if i % 4 == 0:
            stored.post_feedback(deps, "acme", f"chatcmpl-{i:02d}", {"rating": 3}, "r")
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def replica() -> None:
        start.wait()
        try:
            results.append(retention.purge_expired(deps))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and sum(results) == 40
    for model in (StoredCompletion, StoredCompletionMetadata, CompletionFeedback):
        assert _count(any_db, model) == 0


def test_the_purger_runs_soon_after_the_start_and_stops(db: Database) -> None:
    _tenants(db)
    deps = _api_deps(db, stored_retention_days=1, stored_purge_interval_s=3600)
    consumer = _consumer(db)
    consumer.handle(_event("chatcmpl-old", created=int((utcnow() - timedelta(days=3)).timestamp())))
    consumer.handle(_event("chatcmpl-new", created=int(utcnow().timestamp())))
    assert retention.Purger(deps).first_wait_s <= 20  # soon, not after a whole interval
    purger = retention.Purger(deps, first_pass_s=0.05)
    purger.start()
    try:
        deadline = time.monotonic() + 30
        while _count(db, StoredCompletion) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert purger.running
    finally:
        purger.stop()
    assert not purger.running
    with db.session() as s:
        assert list(s.scalars(select(StoredCompletion.id))) == ["chatcmpl-new"]
