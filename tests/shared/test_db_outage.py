"""A database outage is a 503 with ``Retry-After`` (gRPC: UNAVAILABLE), never a 500, and the
process heals by itself when the database is back: a real PostgreSQL database made to refuse
connections, a FastAPI app with the shared error handlers and a real gRPC server."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from coachforge_shared import runtime
from coachforge_shared.auth import INTERNAL_HEADER, TENANT_HEADER, Authenticator
from coachforge_shared.db import RETRY_AFTER_S, Database, OutageBackoff, is_outage
from coachforge_shared.grpc_server import GrpcServerThread, ServiceRegistration
from coachforge_shared.http import install_error_handlers
from coachforge_shared.settings import PlatformSettings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TOKEN = "internal-test-token"
METHOD = "/cf.test.Db/Now"


def _now(db: Database) -> str:
    with db.session() as s:
        return str(s.execute(text("SELECT now()")).scalar_one())


def _app(db: Database) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/now")
    def now(request: Request) -> dict[str, str]:
        return {"now": _now(request.app.state.db)}

    app.state.db = db
    return app


def _grpc_server(db: Database) -> tuple[GrpcServerThread, str]:
    def now(request: bytes, context: Any) -> bytes:
        return _now(db).encode()

    handler = grpc.method_handlers_generic_handler("cf.test.Db", {"Now": grpc.unary_unary_rpc_method_handler(now)})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"
    server = GrpcServerThread([ServiceRegistration("cf.test.Db", None, lambda _s, srv: srv.add_generic_rpc_handlers(
        (handler,)))], Authenticator(db, internal_token=TOKEN), target, max_workers=2).start()
    return server, target


def _allow_connections(name: str, allowed: bool) -> None:
    """Make the database accept connections again, or refuse new ones and end those it has."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


@pytest.fixture
def pg(scratch_postgres: str) -> Iterator[tuple[Database, str]]:
    db = Database(scratch_postgres)
    name = scratch_postgres.rsplit("/", 1)[1]
    try:
        yield db, name
    finally:
        _allow_connections(name, True)
        db.dispose()


def test_an_outage_is_a_503_with_retry_after_and_the_next_request_after_it_succeeds(
        pg: tuple[Database, str]) -> None:
    db, name = pg
    client = TestClient(_app(db), raise_server_exceptions=False)
    server, target = _grpc_server(db)
    process = runtime.Process(PlatformSettings(), runtime.Wiring(PlatformSettings(), db, None, TOKEN),  # type: ignore[arg-type]
                              [], "127.0.0.1:1", {})
    meta = ((INTERNAL_HEADER, TOKEN), (TENANT_HEADER, "acme"))
    try:
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary(METHOD)
            assert client.get("/v1/now").status_code == 200  # the pool holds a live connection now
            assert call(b"", metadata=meta, timeout=10)
            assert process._database() is True

            _allow_connections(name, False)
            r = client.get("/v1/now")
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == str(RETRY_AFTER_S)
            error = r.json()["error"]
            assert error["type"] == "server_error" and error["code"] == "database_unavailable"
            assert "database" in error["message"] and "Traceback" not in r.text
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", metadata=meta, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert process._database() is False  # /ready says the database is down

            _allow_connections(name, True)  # nothing is restarted: the pool reconnects
            assert client.get("/v1/now").status_code == 200
            assert call(b"", metadata=meta, timeout=10)
            assert process._database() is True
    finally:
        server.stop()


def _operational(orig: Exception) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, orig)


def test_outages_are_told_from_bugs() -> None:
    assert is_outage(_operational(psycopg.OperationalError("connection refused")))
    assert is_outage(_operational(psycopg.OperationalError("FATAL: sorry, too many clients already")))
    assert is_outage(sa_exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached"))
    assert is_outage(_operational(sqlite3.OperationalError("database is locked")))
    assert not is_outage(_operational(sqlite3.OperationalError("no such table: things")))  # a bug: 500
    assert not is_outage(sa_exc.IntegrityError("INSERT", {}, psycopg.IntegrityError("duplicate key")))
    assert not is_outage(ValueError("nope"))


def test_a_background_loop_backs_off_during_an_outage_and_recovers() -> None:
    backoff = OutageBackoff("test-loop", max_wait_s=8)
    assert backoff.wait(1) == 1
    for expected in (2, 4, 8, 8):
        backoff.failed(_operational(psycopg.OperationalError("connection refused")))
        assert backoff.wait(1) == expected
    backoff.failed(ValueError("a bug"))  # logged with its traceback; not an outage
    assert backoff.outage_failures == 4
    backoff.succeeded()
    assert backoff.outage_failures == 0 and backoff.wait(1) == 1
