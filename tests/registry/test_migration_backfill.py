"""The registry_versions migration numbers the versions that existed before it, per line."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from coachforge_shared import migrate

BEFORE = "c0ac4d7e9f10"


def test_existing_versions_are_numbered_per_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, BEFORE)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('acme', 'acme', '2026-01-01')"))
            for i, (model_id, created) in enumerate([("ft:B:acme:coach:a", "2026-01-01"),
                                                     ("ft:B:acme:other:b", "2026-01-02"),
                                                     ("ft:B:acme:coach:c", "2026-01-03")]):
                conn.execute(text(
                    "INSERT INTO model_versions (id, tenant_id, model_id, base_model, adapter_uri, lora_rank, "
                    "target_modules_json, job_id, status, created_at) VALUES "
                    "(:id, 'acme', :m, 'B', '/a', 8, '[]', :j, 'active', :c)"),
                    {"id": f"mv-{i}", "m": model_id, "j": f"job-{i}", "c": created})
        migrate.upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT model_id, suffix, version FROM model_versions ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("ft:B:acme:coach:a", "coach", 1), ("ft:B:acme:other:b", "other", 1),
                                            ("ft:B:acme:coach:c", "coach", 2)]
        migrate.downgrade(url, BEFORE)
    finally:
        engine.dispose()
