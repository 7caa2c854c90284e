"""The comparison sources migration on SQLite and PostgreSQL: comparisons get a nullable source and
canceled_at, and pairs a rank — pairs from before it draw theirs (each voter's order is computed
from it) — and going down removes the three columns; no pair or vote is lost either way (SQLite
alters the tables in place instead of rebuilding them, which would cascade-delete)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from coachforge_shared import migrate

BEFORE, REVISION = "f3b8c4d5e6a7", "a4c9d5e6f7b8"
RANK_MODULUS = 2_147_483_647


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_pairs_get_a_rank_and_comparisons_a_source(backend: str, tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url, BEFORE)
    engine = create_engine(url)

    def columns(table: str) -> dict[str, bool]:
        return {c["name"]: c["nullable"] for c in inspect(engine).get_columns(table)}

    try:
        with engine.begin() as c:
            c.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO evals (id, tenant_id, name, data_source_config, testing_criteria, metadata, "
                           "created_at) VALUES ('e', 't', 'hidden', '{}', '[]', '{}', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO comparisons (id, tenant_id, eval_id, name, models, run_ids, prompt_count, "
                           "salt, metadata, created_at) VALUES ('cmp', 't', 'e', 'a vs b', '[\"a\", \"b\"]', '[]', "
                           "40, 's', '{}', CURRENT_TIMESTAMP)"))
            for i in range(40):
                c.execute(text("INSERT INTO comparison_pairs (id, comparison_id, prompt_index, model_a, model_b) "
                               f"VALUES ('p{i}', 'cmp', {i}, 'a', 'b')"))
            c.execute(text("INSERT INTO comparison_votes (id, comparison_id, pair_id, voter, left_model, "
                           "winner_model, created_at) VALUES ('v', 'cmp', 'p0', 'ann', 'a', 'b', CURRENT_TIMESTAMP)"))
        migrate.upgrade(url, REVISION)
        assert columns("comparison_pairs")["rank"] is False
        assert (columns("comparisons")["source"], columns("comparisons")["canceled_at"]) == (True, True)
        with engine.begin() as c:
            ranks = [r[0] for r in c.execute(text("SELECT rank FROM comparison_pairs"))]
            assert c.execute(text("SELECT source, canceled_at FROM comparisons")).all() == [(None, None)]
            assert c.execute(text("SELECT count(*) FROM comparison_votes")).scalar() == 1
        assert len(ranks) == 40 and all(0 <= r < RANK_MODULUS for r in ranks) and len(set(ranks)) > 30
        migrate.downgrade(url, BEFORE)
        assert "rank" not in columns("comparison_pairs")
        assert not {"source", "canceled_at"} & set(columns("comparisons"))
        with engine.begin() as c:
            assert c.execute(text("SELECT count(*) FROM comparison_pairs")).scalar() == 40
            assert c.execute(text("SELECT count(*) FROM comparison_votes")).scalar() == 1
    finally:
        engine.dispose()
