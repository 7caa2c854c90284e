"""Each tenant's rate limits and daily quotas on completions, with OpenAI's answers: a request over a
limit is refused with 429, ``Retry-After`` and the ``x-ratelimit-*`` headers, before it reaches an
engine; every admitted request's answer carries the same headers.

Limits (``max_requests_per_1_minute``, ``max_tokens_per_1_minute``, ``max_tokens_per_1_day``,
``max_cost_usd_per_1_day``) are the tenant's own (``POST /v1/tenants/{id}/limits``, ``coachforge
tenants limits``), else the deployment's defaults (``COACHFORGE_INFERENCE_DEFAULT_MAX_…``); 0 is no
limit. The per-minute limits are token buckets that refill over a minute, kept by each inference
replica (with N replicas behind a load balancer a tenant gets up to N times them; set the limits
accordingly). A request is admitted on its estimate (the prompt's characters / 4, plus
``max_tokens`` for each of its ``n`` choices) and charged what it used once answered. The daily
quotas count the tenant's usage of the UTC day from the usage rows (every replica's, evaluations
included), read again every ``limits_cache_s`` seconds, plus what this replica served since.

Only applications' requests are limited (purpose "app"); eval runs are not refused, but what they
cost counts toward the daily quotas. The request path reads limits from a cache: the database is
asked from a worker thread once per tenant per ``limits_cache_s``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import func, select

from coachforge_inference.metrics import RATE_LIMITED
from coachforge_inference.models import UsageDaily
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.db import Database
from coachforge_shared.errors import RateLimited
from coachforge_shared.logging import get_logger
from coachforge_shared.models import Tenant

log = get_logger("coachforge.inference.limits")

WINDOW_S = 60.0
"""The per-minute limits refill over this many seconds."""
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
"""A chat message's framing in the prompt estimate (role markers, separators)."""


@dataclass(frozen=True)
class Limits:
    """Limits in force for one tenant (0: none)."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    cost_usd_per_day: float = 0.0

    @property
    def any(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.tokens_per_day
                    or self.cost_usd_per_day)


def default_limits(settings: InferenceSettings) -> Limits:
    return Limits(settings.default_max_requests_per_1_minute, settings.default_max_tokens_per_1_minute,
                  settings.default_max_tokens_per_1_day, settings.default_max_cost_usd_per_1_day)


def tenant_limits(row: Tenant | None, settings: InferenceSettings) -> Limits:
    """The tenant's own limits where it has them, the deployment's defaults elsewhere."""
    default = default_limits(settings)
    if row is None:
        return default

    def pick(own: Any, fallback: Any) -> Any:
        return fallback if own is None else own

    return Limits(pick(row.max_requests_per_1_minute, default.requests_per_minute),
                  pick(row.max_tokens_per_1_minute, default.tokens_per_minute),
                  pick(row.max_tokens_per_1_day, default.tokens_per_day),
                  pick(row.max_cost_usd_per_1_day, default.cost_usd_per_day))


class Bucket:
    """A token bucket holding at most ``capacity``, refilled at ``capacity`` per minute; its level
    may go below zero when a request used more than it was admitted on (the debt is refilled first)."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(float(self.capacity), self.level + (now - self.at) * self.capacity / WINDOW_S)
        self.at = now

    def resize(self, capacity: int) -> None:
        self.level = min(float(capacity), self.level + capacity - self.capacity)
        self.capacity = capacity

    def wait_s(self, amount: float) -> float:
        """Seconds until ``amount`` is available."""
        return max(0.0, (amount - self.level) * WINDOW_S / self.capacity)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again (OpenAI's ``x-ratelimit-reset-*``)."""
        return self.wait_s(self.capacity)

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.level))


def duration(seconds: float) -> str:
    """``x-ratelimit-reset-*`` as OpenAI writes it: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def estimate_tokens(path: str, body: dict[str, Any], default_max_tokens: int) -> int:
    """What a request may use, before it runs: its prompt's characters / 4 (plus a little framing
    per message), and ``max_completion_tokens`` or ``max_tokens`` (else ``default_max_tokens``) for
    each of its ``n`` choices."""
    chars = 0
    framing = 0
    if path.endswith("/chat/completions"):
        for message in body.get("messages") or ():
            framing += TOKENS_PER_MESSAGE
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict)
                             and isinstance(p.get("text"), str))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            chars = len(prompt)
        elif isinstance(prompt, list):
            chars = sum(len(p) if isinstance(p, str) else CHARS_PER_TOKEN for p in prompt)
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    max_tokens = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else default_max_tokens
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return math.ceil(chars / CHARS_PER_TOKEN) + framing + max_tokens * choices


def _seconds_to_midnight(now: datetime) -> int:
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, math.ceil((tomorrow - now).total_seconds()))


@dataclass
class _Tenant:
    """What this replica knows of one tenant: its limits, buckets and the day's usage."""

    limits: Limits
    loaded_at: float
    day: date
    day_tokens: int = 0
    day_cost: float = 0.0
    """The day's usage in the usage rows when last read."""
    local_tokens: int = 0
    local_cost: float = 0.0
    """What this replica served since then."""
    requests: Bucket | None = None
    tokens: Bucket | None = None


@dataclass
class Admission:
    """An admitted request: what it was admitted on (charged back when it is settled) and the
    ``x-ratelimit-*`` headers of its answer."""

    tenant_id: str
    estimate: int
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class RateLimiter:
    """Admits or refuses requests by their tenant's limits, and charges them what they used. Safe to
    use from the event loop and worker threads (usage is settled from both)."""

    def __init__(self, settings: InferenceSettings, db: Database | None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.wall_clock = wall_clock
        self._tenants: dict[str, _Tenant] = {}
        self._lock = threading.Lock()

    # -- reading limits and the day's usage ---------------------------------------------------

    def _read(self, tenant_id: str, day: date) -> tuple[Limits, int, float]:
        """The tenant's limits and the day's usage so far (blocking)."""
        assert self.db is not None
        with self.db.session() as s:
            limits = tenant_limits(s.get(Tenant, tenant_id), self.settings)
            tokens, cost = 0, 0.0
            if limits.tokens_per_day or limits.cost_usd_per_day:
                row = s.execute(select(func.coalesce(func.sum(UsageDaily.input_tokens + UsageDaily.output_tokens), 0),
                                       func.coalesce(func.sum(UsageDaily.cost_usd), 0.0))
                                .where(UsageDaily.tenant_id == tenant_id, UsageDaily.day == day)).one()
                tokens, cost = int(row[0]), float(row[1])
        return limits, tokens, cost

    def refresh(self, tenant_id: str) -> _Tenant:
        """Read the tenant's limits and usage again (blocking: call it from a worker thread). A
        database that cannot be read keeps what was known (or the defaults): limits never fail a
        request for want of a database."""
        day = self.wall_clock().date()
        try:
            limits, tokens, cost = self._read(tenant_id, day) if self.db is not None else (
                default_limits(self.settings), 0, 0.0)
        except Exception as err:
            log.warning("tenant limits not read; keeping the last known", tenant=tenant_id, error=str(err))
            with self._lock:
                known = self._tenants.get(tenant_id)
                if known is not None:
                    known.loaded_at = self.clock()
                    return known
            limits, tokens, cost = default_limits(self.settings), 0, 0.0
        now = self.clock()
        with self._lock:
            state = self._tenants.get(tenant_id)
            if state is None:
                state = self._tenants[tenant_id] = _Tenant(limits=limits, loaded_at=now, day=day)
            state.limits, state.loaded_at = limits, now
            state.day, state.day_tokens, state.day_cost = day, tokens, cost
            state.local_tokens, state.local_cost = 0, 0.0
            state.requests = self._bucket(state.requests, limits.requests_per_minute, now)
            state.tokens = self._bucket(state.tokens, limits.tokens_per_minute, now)
            return state

    @staticmethod
    def _bucket(bucket: Bucket | None, capacity: int, now: float) -> Bucket | None:
        if not capacity:
            return None
        if bucket is None:
            return Bucket(capacity, now)
        bucket.refill(now)
        bucket.resize(capacity)
        return bucket

    async def _state(self, tenant_id: str) -> _Tenant:
        state = self._tenants.get(tenant_id)
        if state is not None and self.clock() - state.loaded_at < self.settings.limits_cache_s \
                and state.day == self.wall_clock().date():
            return state
        return await anyio.to_thread.run_sync(self.refresh, tenant_id)

    # -- the request path ------------------------------------------------------------------------

    async def admit(self, tenant_id: str, path: str, body: dict[str, Any]) -> Admission | None:
        """Admit a request of ``tenant_id`` or raise :class:`RateLimited`; ``None`` when the tenant
        has no limits (nothing to settle, no headers)."""
        state = await self._state(tenant_id)
        limits = state.limits
        if not limits.any:
            return None
        estimate = estimate_tokens(path, body, self.settings.limits_default_max_tokens) \
            if (limits.tokens_per_minute or limits.tokens_per_day) else 0
        now = self.clock()
        with self._lock:
            self._check_day(tenant_id, state)
            requests, tokens = state.requests, state.tokens
            if requests is not None:
                requests.refill(now)
            if tokens is not None:
                tokens.refill(now)
            headers = self._headers(requests, tokens)
            if requests is not None and requests.level < 1:
                self._refuse(tenant_id, "requests", f"Rate limit reached for requests per minute (RPM): Limit "
                             f"{requests.capacity}, Used {requests.capacity - requests.remaining}, Requested 1.",
                             requests.wait_s(1), headers)
            if tokens is not None:
                if estimate > tokens.capacity:
                    self._refuse(tenant_id, "tokens", f"Request too large for tokens per minute (TPM): Limit "
                                 f"{tokens.capacity}, Requested {estimate}. Reduce the prompt or max_tokens.",
                                 WINDOW_S, headers)
                if tokens.level < estimate:
                    self._refuse(tenant_id, "tokens", f"Rate limit reached for tokens per minute (TPM): Limit "
                                 f"{tokens.capacity}, Used {tokens.capacity - tokens.remaining}, Requested "
                                 f"{estimate}.", tokens.wait_s(estimate), headers)
            if requests is not None:
                requests.level -= 1
            if tokens is not None:
                tokens.level -= estimate
            return Admission(tenant_id, estimate, self._headers(requests, tokens))

    def _check_day(self, tenant_id: str, state: _Tenant) -> None:
        limits = state.limits
        tokens = state.day_tokens + state.local_tokens
        cost = state.day_cost + state.local_cost
        spent = None
        if limits.tokens_per_day and tokens >= limits.tokens_per_day:
            spent = f"{tokens} of {limits.tokens_per_day} tokens"
        elif limits.cost_usd_per_day and cost >= limits.cost_usd_per_day:
            spent = f"${cost:.4f} of ${limits.cost_usd_per_day:.4f}"
        if spent is not None:
            RATE_LIMITED.labels(tenant_id, "quota").inc()
            raise RateLimited(f"You exceeded your daily quota ({spent} used today, UTC); it renews at midnight UTC.",
                              kind="insufficient_quota", code="insufficient_quota",
                              retry_after_s=_seconds_to_midnight(self.wall_clock()))

    @staticmethod
    def _refuse(tenant_id: str, kind: str, message: str, wait_s: float, headers: dict[str, str]) -> None:
        RATE_LIMITED.labels(tenant_id, kind).inc()
        retry = max(1, math.ceil(wait_s))
        raise RateLimited(f"{message} Please try again in {duration(wait_s)}.", kind=kind,
                          code="rate_limit_exceeded", retry_after_s=retry, headers=headers)

    @staticmethod
    def _headers(requests: Bucket | None, tokens: Bucket | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if requests is not None:
            headers.update({"x-ratelimit-limit-requests": str(requests.capacity),
                            "x-ratelimit-remaining-requests": str(requests.remaining),
                            "x-ratelimit-reset-requests": duration(requests.reset_s())})
        if tokens is not None:
            headers.update({"x-ratelimit-limit-tokens": str(tokens.capacity),
                            "x-ratelimit-remaining-tokens": str(tokens.remaining),
                            "x-ratelimit-reset-tokens": duration(tokens.reset_s())})
        return headers

    def settle(self, admission: Admission | None, tokens: int, cost: float) -> None:
        """Charge an admitted request what it used (``tokens`` prompt + completion, ``cost`` US
        dollars; 0 for one that failed): the per-minute bucket gets back what it was admitted on
        beyond that, the day's count grows. Once per admission."""
        if admission is None or admission.settled:
            return
        admission.settled = True
        with self._lock:
            state = self._tenants.get(admission.tenant_id)
            if state is None:
                return
            if state.tokens is not None:
                state.tokens.level = min(float(state.tokens.capacity),
                                         state.tokens.level + admission.estimate - tokens)
            state.local_tokens += tokens
            state.local_cost += cost

    def forget(self, tenant_id: str) -> None:
        """Read the tenant's limits again on its next request (they changed here)."""
        with self._lock:
            self._tenants.pop(tenant_id, None)
