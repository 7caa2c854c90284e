"""Engine settings (one URL, a list, a headless service) and how the pool is made from them."""

from __future__ import annotations

import pytest

from coachforge_inference.engine import Engine
from coachforge_inference.pool import EnginePool, resolve_service
from coachforge_inference.service import candidate_bucket
from coachforge_inference.settings import InferenceSettings


def test_engine_urls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COACHFORGE_INFERENCE_ENGINE_URLS", "http://a:8000, http://b:8000/")
    assert InferenceSettings().engine_urls == ["http://a:8000", "http://b:8000/"]
    monkeypatch.setenv("COACHFORGE_INFERENCE_ENGINE_URLS", '["http://c:8000"]')
    assert InferenceSettings().engine_urls == ["http://c:8000"]
    monkeypatch.delenv("COACHFORGE_INFERENCE_ENGINE_URLS")
    assert InferenceSettings().engine_urls == []


def test_pool_from_settings_reuses_the_given_engine() -> None:
    one = Engine("http://127.0.0.1:8100", 5)
    pool = EnginePool.from_settings(InferenceSettings(engine_url="http://127.0.0.1:8100/"), one)
    assert pool.engines == [one] and one.guard is pool.guard
    many = EnginePool.from_settings(InferenceSettings(engine_urls=["http://a:1", "http://b:2/"], engine_max_loras=3),
                                    one)
    assert [e.base_url for e in many.engines] == ["http://a:1", "http://b:2"]
    assert all(e.max_loras == 3 for e in many.engines)
    for p in (pool, many):
        p.close()


def test_headless_service_addresses_become_engines() -> None:
    assert "http://127.0.0.1:8123" in resolve_service("localhost:8123")
    pool = EnginePool(service="localhost:8123", health_interval_s=0)
    assert "http://127.0.0.1:8123" in [e.base_url for e in pool.engines]
    pool.service = "nonexistent.invalid:8123"
    pool.discover()  # an unresolvable name keeps the engines it had
    assert pool.engines
    pool.service = "127.0.0.1:8124"  # the addresses changed (pods replaced): old engines leave
    pool.discover()
    assert [e.base_url for e in pool.engines] == ["http://127.0.0.1:8124"]
    pool.close()


def test_candidate_buckets_are_stable_and_spread() -> None:
    buckets = [candidate_bucket("t", "coach", f"user-{i}") for i in range(2000)]
    assert buckets == [candidate_bucket("t", "coach", f"user-{i}") for i in range(2000)]
    assert all(0 <= b < 100 for b in buckets)
    assert 800 < sum(b < 50 for b in buckets) < 1200
    assert candidate_bucket("t", "coach", "x") != candidate_bucket("t", "other", "x") or \
        candidate_bucket("u", "coach", "x") != candidate_bucket("t", "coach", "x")


def test_an_engine_given_without_urls_is_the_pool() -> None:
    given = Engine("http://127.0.0.1:9", 5)
    pool = EnginePool.from_settings(InferenceSettings(), given)
    assert pool.engines == [given]
    pool.close()
