"""Engine settings (one URL, a list, a headless service) and how the pool is made from them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coachforge_inference.pool import EnginePool, resolve_service
from coachforge_inference.service import InferenceDeps, candidate_bucket
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.grpc_server import InternalChannel


def test_engine_urls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COACHFORGE_INFERENCE_ENGINE_URLS", "http://a:8000, http://b:8000/")
    assert InferenceSettings().engine_urls == ["http://a:8000", "http://b:8000/"]
    monkeypatch.setenv("COACHFORGE_INFERENCE_ENGINE_URLS", '["http://c:8000"]')
    assert InferenceSettings().engine_urls == ["http://c:8000"]
    monkeypatch.delenv("COACHFORGE_INFERENCE_ENGINE_URLS")
    assert InferenceSettings().engine_urls == []


def test_pool_from_settings(tmp_path: Path) -> None:
    one = EnginePool.from_settings(InferenceSettings(engine_url="http://127.0.0.1:8100/"))
    assert [e.url for e in one.engines] == ["http://127.0.0.1:8100"]
    assert one.adapters is None  # no cache directory: local adapters only
    many = EnginePool.from_settings(InferenceSettings(engine_urls=["http://a:1", "http://b:2/"], engine_max_loras=3),
                                    tmp_path / "given")
    assert [e.url for e in many.engines] == ["http://a:1", "http://b:2"] and many.max_loras == 3
    assert many.adapters is not None and many.adapters.cache_dir == tmp_path / "given"
    configured = EnginePool.from_settings(InferenceSettings(adapter_cache_dir=tmp_path / "set"))
    assert configured.adapters is not None and configured.adapters.cache_dir == tmp_path / "set"
    # Only a headless service: its addresses are the engines (found at start).
    assert EnginePool.from_settings(InferenceSettings(engine_service="localhost:8123")).engines == []


def test_inference_deps_build_the_pool_from_settings(tmp_path: Path) -> None:
    registry = InternalChannel("127.0.0.1:9", "internal")
    deps = InferenceDeps(settings=InferenceSettings(engine_urls=["http://a:1"]), registry=registry,
                         adapter_cache_dir=tmp_path)
    assert [e.url for e in deps.pool.engines] == ["http://a:1"]
    assert deps.pool.adapters is not None and deps.pool.adapters.cache_dir == tmp_path
    given = EnginePool(["http://b:2"])
    assert InferenceDeps(settings=InferenceSettings(), registry=registry, engines=given).pool is given
    registry.close()


def test_headless_service_addresses_become_engines() -> None:
    async def run() -> None:
        assert "http://127.0.0.1:8123" in await resolve_service("localhost:8123")
        pool = EnginePool(service="localhost:8123", health_interval_s=0)
        await pool.start()
        assert "http://127.0.0.1:8123" in [e.url for e in pool.engines]
        pool.service = "nonexistent.invalid:8123"
        await pool.discover()  # an unresolvable name keeps the engines it had
        assert pool.engines
        pool.service = "127.0.0.1:8124"  # the addresses changed (pods replaced): old engines leave
        await pool.discover()
        assert [e.url for e in pool.engines] == ["http://127.0.0.1:8124"]
        static = EnginePool(["http://127.0.0.1:9000"], service="127.0.0.1:8125", health_interval_s=0)
        await static.discover()  # configured engines stay beside the discovered ones
        assert [e.url for e in static.engines] == ["http://127.0.0.1:9000", "http://127.0.0.1:8125"]
        await pool.close()
        await static.close()

    asyncio.run(run())


def test_candidate_buckets_are_stable_and_spread() -> None:
    buckets = [candidate_bucket("t", "coach", f"user-{i}") for i in range(2000)]
    assert buckets == [candidate_bucket("t", "coach", f"user-{i}") for i in range(2000)]
    assert all(0 <= b < 100 for b in buckets)
    assert 800 < sum(b < 50 for b in buckets) < 1200
    assert candidate_bucket("t", "coach", "x") != candidate_bucket("t", "other", "x") or \
        candidate_bucket("u", "coach", "x") != candidate_bucket("t", "coach", "x")
