"""Every migration goes up and down on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from coachforge_shared import migrate

TABLES = {
    "tenants", "api_keys", "processed_events", "files", "file_reports", "dataset_versions", "dataset_version_files",
    "fine_tuning_jobs", "fine_tuning_job_events", "fine_tuning_job_checkpoints", "model_versions", "avatars",
    "avatar_changes", "coach_athletes", "coach_workouts", "coach_wellness", "coach_recommendations", "coach_changes",
    "usage_daily", "evals", "eval_runs", "eval_run_items", "stored_completions", "stored_completion_metadata",
    "stored_completion_policies",
    "completion_feedback", "completion_reviews", "coach_outcomes", "comparisons", "comparison_pairs",
    "comparison_votes", "retrain_policies", "retrain_runs", "outbox_events", "avatar_personas",
    "webhook_endpoints", "webhook_deliveries", "knowledge_bases", "knowledge_documents", "knowledge_chunks",
    "model_exports",
}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_downgrade_upgrade(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url)
    assert _tables(url) == TABLES
    migrate.downgrade(url)
    assert _tables(url) == set()
    migrate.upgrade(url)
    assert _tables(url) == TABLES


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_usage_rows_get_a_purpose_and_keep_their_totals_down_again(backend: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    """Rows from before purposes existed become "app" rows; going down, an evaluation row is added
    to the app row of the same tenant/day/model/avatar (or becomes it), so no usage is lost."""
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url, "a7c3e9d1f2b4")
    engine = create_engine(url)
    columns = "tenant_id, day, model, avatar, messages, input_tokens, output_tokens, cost_usd, updated_at"
    try:
        with engine.begin() as c:
            c.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', CURRENT_TIMESTAMP)"))
            c.execute(text(f"INSERT INTO usage_daily ({columns}) VALUES "
                           "('t', '2026-11-20', 'm', '', 2, 20, 4, 0.5, CURRENT_TIMESTAMP)"))
        migrate.upgrade(url)
        with engine.begin() as c:
            assert c.execute(text("SELECT purpose, messages FROM usage_daily")).all() == [("app", 2)]
            c.execute(text(f"INSERT INTO usage_daily ({columns}, purpose) VALUES "
                           "('t', '2026-11-20', 'm', '', 3, 30, 6, 0.25, CURRENT_TIMESTAMP, 'evaluation'), "
                           "('t', '2026-11-21', 'm', '', 1, 10, 1, 0.125, CURRENT_TIMESTAMP, 'evaluation')"))
        migrate.downgrade(url, "a7c3e9d1f2b4")
        with engine.begin() as c:
            rows = c.execute(text("SELECT day, messages, input_tokens, output_tokens, cost_usd FROM usage_daily "
                                  "ORDER BY day")).all()
        assert [(str(r[0]), *r[1:]) for r in rows] == [("2026-11-20", 5, 50, 10, 0.75), ("2026-11-21", 1, 10, 1, 0.125)]
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_recommendations_get_a_nullable_completion_id(backend: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")

    def columns() -> dict[str, bool]:
        engine = create_engine(url)
        try:
            return {c["name"]: c["nullable"] for c in inspect(engine).get_columns("coach_recommendations")}
        finally:
            engine.dispose()

    migrate.upgrade(url, "d1f6a2b3c4e5")
    assert "completion_id" not in columns()
    migrate.upgrade(url)
    assert columns()["completion_id"] is True
    migrate.downgrade(url, "d1f6a2b3c4e5")
    assert "completion_id" not in columns()
