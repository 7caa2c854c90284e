"""A value PostgreSQL refuses as data (text with a NUL character, a number beyond its column) is the
caller's mistake: a 400 naming the column where it can, the transaction rolled back, never a 500
(found by the API fuzzer on most routes that take a string)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.http import install_error_handlers

things = Table("things", MetaData(), Column("id", String(64), primary_key=True), Column("size", Integer))


@pytest.fixture
def pg(scratch_postgres: str) -> Iterator[Database]:
    db = Database(scratch_postgres)
    things.metadata.create_all(db.engine)
    try:
        yield db
    finally:
        db.dispose()


def _count(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(things)) or 0)


def test_nul_in_text_is_invalid_argument_naming_the_column(pg: Database) -> None:
    with pytest.raises(InvalidArgument) as refused, pg.session() as s:
        s.scalar(select(things).where(things.c.id == "a\x00b"))
    assert refused.value.param == "id" and "NUL" in refused.value.message
    with pytest.raises(InvalidArgument) as refused, pg.session() as s:
        s.execute(insert(things).values(id="fine", size=1))
        s.execute(insert(things).values(id="bad\x00", size=2))
    assert refused.value.param == "id"
    assert _count(pg) == 0  # nothing half-written


def test_number_beyond_its_column_is_invalid_argument(pg: Database) -> None:
    with pytest.raises(InvalidArgument) as refused, pg.session() as s:
        s.execute(insert(things).values(id="big", size=2**40))
    assert "out of range" in refused.value.message and refused.value.code == "invalid_value"
    assert _count(pg) == 0


def test_over_http_it_is_a_400_with_the_error_body(pg: Database) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/things/{thing_id}")
    def get_thing(request: Request, thing_id: str) -> dict[str, int]:
        with pg.session() as s:
            return {"found": len(s.execute(select(things).where(things.c.id == thing_id)).all())}

    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/things/plain").json() == {"found": 0}
    r = client.get("/things/a%00b")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "id" and r.json()["error"]["type"] == "invalid_request_error"
