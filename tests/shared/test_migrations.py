"""Every migration goes up and down on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from coachforge_shared import migrate

TABLES = {
    "tenants", "api_keys", "processed_events", "files", "file_reports", "dataset_versions", "dataset_version_files",
    "fine_tuning_jobs", "fine_tuning_job_events", "fine_tuning_job_checkpoints", "model_versions", "avatars",
    "avatar_changes", "coach_athletes", "coach_workouts", "coach_wellness", "coach_recommendations", "coach_changes",
    "usage_daily", "evals", "eval_runs", "eval_run_items",
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
