"""Daily usage rows from usage.recorded events (real broker, real SQLite and PostgreSQL), exposed
at GET /v1/usage (tenant-scoped, filters, group_by) and gRPC GetUsage; evaluations (eval runs'
samples and judges) are rows of their own, apart from applications' requests."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from google.protobuf import timestamp_pb2

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_inference import api, usage
from coachforge_inference import grpc as inference_grpc
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_shared import migrate
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.events import EventConsumer, EventPublisher, encode, ensure_topics
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, wait_for_health
from coachforge_shared.http import install_error_handlers

FT = "ft:SmolLM2-135M-Instruct:acme:coach:1"
BASE = "SmolLM2-135M-Instruct"


def _tenants(db: Database) -> None:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    add_api_key(db, "acme", "cf-acme-key")
    add_api_key(db, "globex", "cf-globex-key")


def _event(tenant: str, model: str, prompt: int, completion: int, cost: float, avatar: str = "",
           day: str | None = None, purpose: str = "") -> bytes:
    env = encode("usage.recorded", inference_pb2.UsageRecorded(
        model=model, base_model=BASE, prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
        latency_seconds=0.1, avatar=avatar, purpose=purpose), tenant)
    if day:
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(datetime.fromisoformat(day + "T12:00:00").replace(tzinfo=UTC))
        env.occurred_at.CopyFrom(ts)
    return env.SerializeToString()


def _handler_only(db: Database) -> EventConsumer:
    consumer = EventConsumer.__new__(EventConsumer)  # handle() needs no broker connection
    consumer.group, consumer.handler, consumer.db = "usage-test", usage.on_usage_recorded, db
    return consumer


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'u.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "scratch_postgres")
    migrate.upgrade(url)
    database = Database(url)
    _tenants(database)
    yield database
    database.dispose()


def test_events_sum_into_daily_rows_once_each(any_db: Database) -> None:
    consumer = _handler_only(any_db)
    first = _event("acme", FT, 100, 20, 0.5, avatar="coach-anna", day="2026-11-20")
    assert consumer.handle(first)[0] == "handled"
    assert consumer.handle(first)[0] == "duplicate"  # redelivered: counted once
    consumer.handle(_event("acme", FT, 50, 10, 0.25, avatar="coach-anna", day="2026-11-20", purpose="app"))
    consumer.handle(_event("acme", FT, 7, 3, 0.125, day="2026-11-20"))  # same model, no avatar
    consumer.handle(_event("acme", BASE, 1, 1, 0.001, day="2026-11-21"))
    consumer.handle(_event("globex", BASE, 9, 9, 9.0, day="2026-11-21"))
    rows = usage.daily_usage(any_db, "acme", usage.make_query())
    assert rows == [
        {"date": "2026-11-20", "model": FT, "avatar": "", "purpose": "app", "messages": 1, "input_tokens": 7,
         "output_tokens": 3, "cost_usd": 0.125},
        {"date": "2026-11-20", "model": FT, "avatar": "coach-anna", "purpose": "app", "messages": 2,
         "input_tokens": 150, "output_tokens": 30, "cost_usd": 0.75},
        {"date": "2026-11-21", "model": BASE, "avatar": "", "purpose": "app", "messages": 1, "input_tokens": 1,
         "output_tokens": 1, "cost_usd": 0.001},
    ]
    by_day = usage.daily_usage(any_db, "acme", usage.make_query(group_by="day"))
    assert [(r["date"], r["messages"], r["input_tokens"]) for r in by_day] == [
        ("2026-11-20", 3, 157), ("2026-11-21", 1, 1)]
    only = usage.daily_usage(any_db, "acme", usage.make_query(start_date="2026-11-21", end_date="2026-11-21"))
    assert [r["model"] for r in only] == [BASE]
    assert [r["messages"] for r in usage.daily_usage(any_db, "acme", usage.make_query(avatar="coach-anna"))] == [2]
    assert usage.daily_usage(any_db, "acme", usage.make_query(model="nope")) == []


def test_evaluations_are_rows_of_their_own(any_db: Database) -> None:
    """An eval run's samples and judges (purpose "evaluation") of the same model, avatar and day as
    an app's requests are counted in a row of their own; filters and group_by take the purpose."""
    consumer = _handler_only(any_db)
    consumer.handle(_event("acme", FT, 100, 20, 0.5, avatar="coach-anna", day="2026-11-20"))
    consumer.handle(_event("acme", FT, 10, 2, 0.05, avatar="coach-anna", day="2026-11-20", purpose="evaluation"))
    consumer.handle(_event("acme", FT, 20, 4, 0.1, avatar="coach-anna", day="2026-11-20", purpose="evaluation"))
    consumer.handle(_event("acme", BASE, 30, 6, 0.01, day="2026-11-20", purpose="evaluation"))  # a judge
    consumer.handle(_event("globex", FT, 1, 1, 1.0, avatar="coach-anna", day="2026-11-20", purpose="evaluation"))
    rows = usage.daily_usage(any_db, "acme", usage.make_query())
    assert [(r["model"], r["avatar"], r["purpose"], r["messages"], r["input_tokens"], r["cost_usd"])
            for r in rows] == [
        (BASE, "", "evaluation", 1, 30, 0.01),
        (FT, "coach-anna", "app", 1, 100, 0.5),
        (FT, "coach-anna", "evaluation", 2, 30, 0.15),
    ]
    evaluation = usage.daily_usage(any_db, "acme", usage.make_query(purpose="evaluation"))
    assert [(r["model"], r["messages"]) for r in evaluation] == [(BASE, 1), (FT, 2)]
    app = usage.daily_usage(any_db, "acme", usage.make_query(purpose="app"))
    assert [(r["model"], r["messages"]) for r in app] == [(FT, 1)]
    by_purpose = usage.daily_usage(any_db, "acme", usage.make_query(group_by="purpose"))
    assert by_purpose == [
        {"date": "2026-11-20", "purpose": "app", "messages": 1, "input_tokens": 100, "output_tokens": 20,
         "cost_usd": 0.5},
        {"date": "2026-11-20", "purpose": "evaluation", "messages": 3, "input_tokens": 60, "output_tokens": 12,
         "cost_usd": 0.16},
    ]
    by_model = usage.daily_usage(any_db, "acme", usage.make_query(group_by="model,avatar"))  # the old split
    assert [(r["model"], r["avatar"], r["messages"]) for r in by_model] == [(BASE, "", 1), (FT, "coach-anna", 3)]
    assert "purpose" not in by_model[0]
    for bad in ("eval", "App"):
        with pytest.raises(InvalidArgument) as err:
            usage.make_query(purpose=bad)
        assert err.value.param == "purpose"


def _wait_rows(db: Database, tenant: str, messages: int, timeout: float = 60) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        rows = usage.daily_usage(db, tenant, usage.make_query())
        if sum(int(str(r["messages"])) for r in rows) >= messages:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"usage rows did not arrive: {rows}")


@pytest.fixture
def served(db: Database, tmp_path: Path) -> Iterator[InferenceDeps]:
    _tenants(db)
    deps = InferenceDeps(settings=InferenceSettings(engine_url="http://127.0.0.1:9"),
                         registry=InternalChannel("127.0.0.1:9", "internal"), db=db)
    yield deps
    deps.registry.close()


def test_consumer_over_the_broker_then_rest_and_grpc(broker: str, served: InferenceDeps) -> None:
    db = served.db
    assert db is not None
    ensure_topics(broker)
    consumer = EventConsumer(broker, "usage-it", ["usage.recorded"], usage.on_usage_recorded, db)
    consumer.start()
    publisher = EventPublisher(broker, "usage-test")
    try:
        for _ in range(3):
            publisher.publish("usage.recorded", inference_pb2.UsageRecorded(
                model=FT, base_model=BASE, prompt_tokens=10, completion_tokens=5, cost_usd=0.01,
                avatar="coach-anna"), "acme", key=FT)
        publisher.publish("usage.recorded", inference_pb2.UsageRecorded(
            model=FT, base_model=BASE, prompt_tokens=8, completion_tokens=1, cost_usd=0.02, avatar="coach-anna",
            purpose="evaluation"), "acme", key=FT)
        publisher.publish("usage.recorded", inference_pb2.UsageRecorded(
            model=BASE, base_model=BASE, prompt_tokens=4, completion_tokens=2, cost_usd=0.5), "globex")
        rows = _wait_rows(db, "acme", 4)
        _wait_rows(db, "globex", 1)
    finally:
        consumer.stop()
        publisher.close()
    assert [(r["model"], r["avatar"], r["purpose"], r["messages"], r["input_tokens"], r["output_tokens"])
            for r in rows] == [(FT, "coach-anna", "app", 3, 30, 15), (FT, "coach-anna", "evaluation", 1, 8, 1)]
    today = rows[0]["date"]

    app = FastAPI()
    app.state.authenticator = Authenticator(db, internal_token="internal")
    app.state.inference = served
    install_error_handlers(app)
    app.include_router(api.router)
    client = TestClient(app, raise_server_exceptions=False)
    acme = {"Authorization": "Bearer cf-acme-key"}
    body = client.get("/v1/usage", headers=acme).json()
    assert [(r["model"], r["purpose"], r["messages"]) for r in body["data"]] == [
        (FT, "app", 3), (FT, "evaluation", 1)]  # globex's row is not visible
    assert body["totals"]["messages"] == 4 and body["totals"]["input_tokens"] == 38
    body = client.get("/v1/usage", headers=acme, params={"purpose": "app"}).json()
    assert [(r["model"], r["purpose"], r["messages"]) for r in body["data"]] == [(FT, "app", 3)]
    assert body["totals"]["messages"] == 3 and body["totals"]["input_tokens"] == 30
    assert client.get("/v1/usage", headers=acme, params={"group_by": "day,purpose"}).json()["data"] == [
        {"date": today, "purpose": "app", "messages": 3, "input_tokens": 30, "output_tokens": 15, "cost_usd": 0.03},
        {"date": today, "purpose": "evaluation", "messages": 1, "input_tokens": 8, "output_tokens": 1,
         "cost_usd": 0.02}]
    assert client.get("/v1/usage", headers={"Authorization": "Bearer cf-globex-key"}).json()["data"][0][
        "model"] == BASE
    r = client.get("/v1/usage", headers=acme, params={"start_date": today, "end_date": today, "model": FT,
                                                     "avatar": "coach-anna", "purpose": "app", "group_by": "day"})
    assert r.status_code == 200 and r.json()["data"] == [
        {"date": today, "messages": 3, "input_tokens": 30, "output_tokens": 15, "cost_usd": 0.03}]
    assert client.get("/v1/usage", headers=acme, params={"avatar": "other"}).json()["data"] == []
    for params, param in (({"start_date": "yesterday"}, "start_date"), ({"end_date": "2026-13-01"}, "end_date"),
                          ({"start_date": "2026-11-22", "end_date": "2026-11-01"}, "start_date"),
                          ({"group_by": "user"}, "group_by"), ({"purpose": "judge"}, "purpose")):
        r = client.get("/v1/usage", headers=acme, params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert client.get("/v1/usage").status_code == 401

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = GrpcServerThread([inference_grpc.registration(served)], app.state.authenticator,
                              f"127.0.0.1:{port}", max_workers=4).start()
    try:
        wait_for_health(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            key = (("authorization", "Bearer cf-acme-key"),)
            got = stub.GetUsage(inference_pb2.GetUsageRequest(start_date=today, model=FT), metadata=key)
            assert [(x.date, x.model, x.avatar, x.purpose, x.messages, x.input_tokens) for x in got.rows] == [
                (today, FT, "coach-anna", "app", 3, 30), (today, FT, "coach-anna", "evaluation", 1, 8)]
            got = stub.GetUsage(inference_pb2.GetUsageRequest(purpose="evaluation"), metadata=key)
            assert [(x.purpose, x.messages) for x in got.rows] == [("evaluation", 1)]
            with pytest.raises(grpc.RpcError) as err:
                stub.GetUsage(inference_pb2.GetUsageRequest(start_date="soon"), metadata=key)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as err:
                stub.GetUsage(inference_pb2.GetUsageRequest(purpose="eval"), metadata=key)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert dict(err.value.trailing_metadata())["x-error-param"] == "purpose"
    finally:
        server.stop()
