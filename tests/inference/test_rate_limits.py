"""Tenants' rate limits and daily quotas (:mod:`coachforge_inference.limits`) on a migrated SQLite
database, with clocks the test moves: buckets refill over a minute, a request is admitted on its
estimate and charged what it used, the daily quota counts the usage rows plus what was served since,
and the 429s say which limit, when to retry and carry OpenAI's ``x-ratelimit-*`` headers."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest

from coachforge_inference.limits import RateLimiter, duration, estimate_tokens
from coachforge_inference.models import UsageDaily
from coachforge_inference.settings import InferenceSettings
from coachforge_shared import auth
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, RateLimited

CHAT = "/v1/chat/completions"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = datetime(2026, 12, 2, 23, 59, 0, tzinfo=UTC)

    def __call__(self) -> float:
        return self.now


def body(content: str = "x" * 40, max_tokens: int | None = 10, n: int | None = None) -> dict[str, object]:
    b: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    if n is not None:
        b["n"] = n
    return b


def limiter(db: Database, clock: Clock, **settings: object) -> RateLimiter:
    return RateLimiter(InferenceSettings(**settings), db, clock=clock, wall_clock=lambda: clock.wall)


def admit(rl: RateLimiter, tenant: str, b: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    return asyncio.run(rl.admit(tenant, CHAT, b or body()))


def test_estimate_counts_prompt_characters_framing_and_max_tokens_per_choice() -> None:
    assert estimate_tokens(CHAT, body("x" * 40, 10), 256) == 10 + 4 + 10
    assert estimate_tokens(CHAT, body("x" * 40, None), 256) == 10 + 4 + 256
    assert estimate_tokens(CHAT, body("x" * 40, 10, n=3), 256) == 10 + 4 + 30
    parts = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 8}]}],
             "max_completion_tokens": 5}
    assert estimate_tokens(CHAT, parts, 256) == 2 + 4 + 5
    assert estimate_tokens("/v1/completions", {"prompt": "z" * 12, "max_tokens": 1}, 256) == 3 + 1


def test_durations_are_written_as_openai_does() -> None:
    assert [duration(s) for s in (0.02, 1, 59.2, 60, 360, 3723)] == ["20ms", "1s", "1m0s", "1m0s", "6m0s",
                                                                    "1h2m3s"]


def test_no_limits_means_no_admission_and_no_headers(db: Database) -> None:
    auth.create_tenant(db, "free")
    rl = limiter(db, Clock())
    assert admit(rl, "free") is None


def test_requests_per_minute_refuse_the_next_request_until_the_bucket_refills(db: Database) -> None:
    auth.create_tenant(db, "acme")
    auth.set_tenant_limits(db, "acme", {"max_requests_per_1_minute": 2})
    clock = Clock()
    rl = limiter(db, clock)
    first = admit(rl, "acme")
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "30s"
    second = admit(rl, "acme")
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited) as refused:
        admit(rl, "acme")
    err = refused.value
    assert (err.http_status, err.type, err.code) == (429, "requests", "rate_limit_exceeded")
    assert err.retry_after_s == 30 and err.headers["x-ratelimit-remaining-requests"] == "0"
    assert "Limit 2" in err.message
    clock.now += 30  # half a minute refills one request
    assert admit(rl, "acme").headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_per_minute_admit_on_the_estimate_and_charge_what_was_used(db: Database) -> None:
    auth.create_tenant(db, "acme")
    auth.set_tenant_limits(db, "acme", {"max_tokens_per_1_minute": 100})
    clock = Clock()
    rl = limiter(db, clock)
    a = admit(rl, "acme", body("x" * 40, 50))  # 10 + 4 + 50 = 64 admitted
    assert a.estimate == 64 and a.headers["x-ratelimit-remaining-tokens"] == "36"
    with pytest.raises(RateLimited) as refused:
        admit(rl, "acme", body("x" * 40, 50))
    assert refused.value.type == "tokens" and "Requested 64" in refused.value.message
    rl.settle(a, 20, 0.0)  # it used 20: 44 come back
    rl.settle(a, 20, 0.0)  # once only
    b = admit(rl, "acme", body("x" * 40, 50))
    assert b.headers["x-ratelimit-remaining-tokens"] == "16"
    rl.settle(b, 0, 0.0)  # a request that failed is charged nothing
    with pytest.raises(RateLimited) as too_large:
        admit(rl, "acme", body("x" * 40, 500))
    assert "Request too large" in too_large.value.message and too_large.value.retry_after_s == 60


def test_daily_quotas_count_usage_rows_and_this_replica_and_renew_at_midnight(db: Database) -> None:
    auth.create_tenant(db, "acme")
    auth.set_tenant_limits(db, "acme", {"max_tokens_per_1_day": 1000, "max_cost_usd_per_1_day": 0.5})
    with db.session() as s:
        s.add(UsageDaily(tenant_id="acme", day=date(2026, 12, 2), model="m", input_tokens=900, output_tokens=50,
                         messages=3, cost_usd=0.1))
        s.add(UsageDaily(tenant_id="acme", day=date(2026, 12, 1), model="m", input_tokens=10**6, output_tokens=0,
                         messages=1, cost_usd=100.0))  # yesterday's do not count
    clock = Clock()
    rl = limiter(db, clock)
    a = admit(rl, "acme")
    rl.settle(a, 60, 0.001)  # 950 + 60 >= 1000
    with pytest.raises(RateLimited) as refused:
        admit(rl, "acme")
    err = refused.value
    assert (err.type, err.code) == ("insufficient_quota", "insufficient_quota")
    assert err.retry_after_s == 60  # 23:59:00 UTC: a minute to midnight
    clock.wall = datetime(2026, 12, 3, 0, 0, 1, tzinfo=UTC)  # a new day: read again, nothing used yet
    assert admit(rl, "acme") is not None


def test_tenant_limits_override_the_deployment_defaults_and_null_restores_them(db: Database) -> None:
    auth.create_tenant(db, "acme")
    clock = Clock()
    rl = limiter(db, clock, default_max_requests_per_1_minute=5, limits_cache_s=5.0)
    assert admit(rl, "acme").headers["x-ratelimit-limit-requests"] == "5"
    auth.set_tenant_limits(db, "acme", {"max_requests_per_1_minute": 0})  # 0: no limit for this tenant
    clock.now += 5  # the cache time
    assert admit(rl, "acme") is None
    auth.set_tenant_limits(db, "acme", {"max_requests_per_1_minute": None})
    rl.forget("acme")
    assert admit(rl, "acme").headers["x-ratelimit-limit-requests"] == "5"


def test_bad_limits_are_refused_naming_the_field(db: Database) -> None:
    auth.create_tenant(db, "acme")
    with pytest.raises(InvalidArgument) as negative:
        auth.set_tenant_limits(db, "acme", {"max_tokens_per_1_day": -1})
    assert negative.value.param == "max_tokens_per_1_day"
    with pytest.raises(InvalidArgument) as unknown:
        auth.set_tenant_limits(db, "acme", {"max_images_per_1_minute": 3})
    assert unknown.value.param == "max_images_per_1_minute"
    assert auth.tenant_limits(db, "acme")["max_tokens_per_1_day"] is None  # nothing half-written
