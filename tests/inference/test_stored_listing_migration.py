"""The stored listing migration (d7f2a8b9c0e1) on SQLite and on PostgreSQL: metadata pairs kept before
it get their completion's tenant and list order and the listing index (with the table's constraint
names kept); on PostgreSQL a pair written without them (by the previous release) gets them too;
down again, the pairs are as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from coachforge_shared import migrate

BEFORE = "c6e1f7a8b9d0"
TABLE = "stored_completion_metadata"


def _completion(c, completion_id: str, tenant: str, created: int, created_at: str) -> None:  # type: ignore[no-untyped-def]
    c.execute(text(
        "INSERT INTO stored_completions (id, tenant_id, created, created_at, model, requested_model, avatar, variant, "
        "end_user, purpose, fallback_from, stream, metadata, messages, params, choices, latency_seconds, stored_at) "
        "VALUES (:id, :tenant, :created, :created_at, 'm', 'm', '', '', '', 'app', '', false, '{}', '[]', '{}', "
        "'[]', 0.5, :created_at)"), {"id": completion_id, "tenant": tenant, "created": created,
                                     "created_at": created_at})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_pairs_get_their_completions_tenant_and_order(backend: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url, BEFORE)
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            for tenant in ("acme", "globex"):
                c.execute(text("INSERT INTO tenants (id, name, created_at) VALUES (:t, :t, CURRENT_TIMESTAMP)"),
                          {"t": tenant})
            _completion(c, "chatcmpl-a", "acme", 1_700_000_000, "2023-11-14 22:13:20.250000+00:00")
            _completion(c, "chatcmpl-g", "globex", 1_700_000_005, "2023-11-14 22:13:25.500000+00:00")
            c.execute(text(f"INSERT INTO {TABLE} (completion_id, key, value) VALUES ('chatcmpl-a', 'source', 'app'), "
                           "('chatcmpl-a', 'athlete_id', 'ath-7'), ('chatcmpl-g', 'source', 'app')"))

        migrate.upgrade(url)
        with engine.connect() as c:
            rows = c.execute(text(f"SELECT completion_id, key, value, tenant_id, created FROM {TABLE} "
                                  "ORDER BY completion_id, key")).all()
            same_time = c.execute(text(f"SELECT count(*) FROM {TABLE} AS m JOIN stored_completions AS s "
                                       "ON s.id = m.completion_id WHERE m.created_at = s.created_at")).scalar()
        assert [tuple(r) for r in rows] == [("chatcmpl-a", "athlete_id", "ath-7", "acme", 1_700_000_000),
                                            ("chatcmpl-a", "source", "app", "acme", 1_700_000_000),
                                            ("chatcmpl-g", "source", "app", "globex", 1_700_000_005)]
        assert same_time == 3
        schema = inspect(engine)
        columns = {col["name"]: col["nullable"] for col in schema.get_columns(TABLE)}
        assert {k: columns[k] for k in ("tenant_id", "created", "created_at")} == {
            "tenant_id": False, "created": False, "created_at": False}
        indexes = {i["name"]: i["column_names"] for i in schema.get_indexes(TABLE)}
        assert indexes == {"ix_stored_completion_metadata_listing": [
            "tenant_id", "key", "value", "created", "created_at", "completion_id"]}
        pk = schema.get_pk_constraint(TABLE)
        assert (pk["name"], pk["constrained_columns"]) == ("pk_stored_completion_metadata", ["completion_id", "key"])
        (fk,) = schema.get_foreign_keys(TABLE)
        assert (fk["name"], fk["referred_table"], fk["options"].get("ondelete")) == (
            "fk_stored_completion_metadata_completion_id_stored_completions", "stored_completions", "CASCADE")

        if backend == "postgresql":  # a pair written as the previous release writes them (rolling upgrade)
            with engine.begin() as c:
                c.execute(text(f"INSERT INTO {TABLE} (completion_id, key, value) "
                               "VALUES ('chatcmpl-g', 'screen', 'week')"))
                assert tuple(c.execute(text(f"SELECT tenant_id, created FROM {TABLE} WHERE key = 'screen'")).one()) == (
                    "globex", 1_700_000_005)
                c.execute(text(f"DELETE FROM {TABLE} WHERE key = 'screen'"))

        migrate.downgrade(url, BEFORE)
        schema = inspect(engine)
        assert [col["name"] for col in schema.get_columns(TABLE)] == ["completion_id", "key", "value"]
        assert {i["name"] for i in schema.get_indexes(TABLE)} == {"ix_stored_completion_metadata_key_value"}
        with engine.connect() as c:
            assert c.execute(text(f"SELECT count(*) FROM {TABLE}")).scalar() == 3
            if backend == "postgresql":
                assert c.execute(text("SELECT count(*) FROM pg_proc WHERE proname = "
                                      "'stored_completion_metadata_copies'")).scalar() == 0
    finally:
        engine.dispose()
