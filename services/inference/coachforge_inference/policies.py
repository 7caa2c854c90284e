"""Each tenant's stored chat completion policy: whether chat completions are kept when a request
does not say ``store`` (``store_by_default``; an avatar's own ``store`` comes first), how long they
are kept (``retention_days``, 0 = forever; see :mod:`coachforge_inference.retention`) and whether
personal data is replaced before they are kept (``scrub_pii``, applied by the ``completion.stored``
consumer). ``GET``/``PUT /v1/chat/completions/settings``.

The request path reads a policy only for a chat completion that does not say ``store`` and only
through :class:`PolicyCache` (a few seconds per tenant; a ``PUT`` replaces this replica's entry at
once, other replicas see it when theirs expires): never a database query per request.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy.orm import Session

from coachforge_inference import repository
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.errors import InvalidArgument, Unavailable
from coachforge_shared.ids import to_unix
from coachforge_shared.logging import get_logger

if TYPE_CHECKING:
    from coachforge_inference.service import InferenceDeps

log = get_logger("coachforge.inference.policies")

STORE_BY_DEFAULT = False
SCRUB_PII = True
MAX_RETENTION_DAYS = 36_500
FIELDS = ("store_by_default", "retention_days", "scrub_pii")


@dataclass(frozen=True)
class Policy:
    """A tenant's stored completion policy (``updated_at`` None: the defaults, never set)."""

    store_by_default: bool
    retention_days: int
    scrub_pii: bool
    updated_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """As ``GET /v1/chat/completions/settings`` shows it."""
        return {"object": "chat.completion.settings", "store_by_default": self.store_by_default,
                "retention_days": self.retention_days, "scrub_pii": self.scrub_pii,
                "updated_at": to_unix(self.updated_at) if self.updated_at else None}


def default_policy(settings: InferenceSettings) -> Policy:
    """What a tenant without a policy gets: store on request only, the deployment's retention, scrub."""
    return Policy(STORE_BY_DEFAULT, settings.stored_retention_days, SCRUB_PII)


def read(s: Session, settings: InferenceSettings, tenant_id: str) -> Policy:
    """The tenant's policy from the database (the defaults when it has none)."""
    row = repository.policy(s, tenant_id)
    if row is None:
        return default_policy(settings)
    return Policy(row.store_by_default, row.retention_days, row.scrub_pii, row.updated_at)


def scrubs(s: Session, tenant_id: str) -> bool:
    """Whether the tenant's stored completions are scrubbed of personal data (no policy: yes)."""
    row = repository.policy(s, tenant_id)
    return SCRUB_PII if row is None else row.scrub_pii


class PolicyCache:
    """Tenants' policies for the request path, each kept ``ttl_s`` seconds; thread-safe. A fetch
    that started before :meth:`set` (a PUT) does not overwrite what it set."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Policy]] = {}
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: str) -> Policy | None:
        """The cached policy if still fresh."""
        hit = self._entries.get(tenant_id)
        if hit is None or time.monotonic() - hit[0] >= self.ttl_s:
            return None
        return hit[1]

    def generation(self, tenant_id: str) -> int:
        with self._lock:
            return self._generation.get(tenant_id, 0)

    def fetched(self, tenant_id: str, policy: Policy, generation: int, at: float) -> None:
        """Keep a policy read at ``at`` (monotonic), unless :meth:`set` or :meth:`drop` ran since ``generation``."""
        with self._lock:
            if self._generation.get(tenant_id, 0) == generation:
                self._entries[tenant_id] = (at, policy)

    def set(self, tenant_id: str, policy: Policy) -> None:
        """The tenant's policy just changed here: keep the new one (fetches in flight are ignored)."""
        with self._lock:
            self._generation[tenant_id] = self._generation.get(tenant_id, 0) + 1
            self._entries[tenant_id] = (time.monotonic(), policy)

    def drop(self, tenant_id: str) -> None:
        with self._lock:
            self._generation[tenant_id] = self._generation.get(tenant_id, 0) + 1
            self._entries.pop(tenant_id, None)


def _fetch(deps: InferenceDeps, tenant_id: str) -> Policy:
    """Read the policy (blocking: from a worker thread) and cache it. A database that cannot be read
    gives the defaults for a while: storing must never fail a request."""
    cache = deps.policy_cache
    generation, at = cache.generation(tenant_id), time.monotonic()
    try:
        assert deps.db is not None
        with deps.db.session() as s:
            policy = read(s, deps.settings, tenant_id)
    except Exception as err:
        log.warning("stored completion policy not read; using the defaults", tenant=tenant_id, error=str(err))
        policy = default_policy(deps.settings)
    cache.fetched(tenant_id, policy, generation, at)
    return policy


async def current(deps: InferenceDeps, tenant_id: str) -> Policy:
    """The tenant's policy for a request: from the cache (no thread hop), else read once from a
    worker thread (the defaults without a database)."""
    if deps.db is None:
        return default_policy(deps.settings)
    hit = deps.policy_cache.get(tenant_id)
    if hit is not None:
        return hit
    return await anyio.to_thread.run_sync(_fetch, deps, tenant_id)


# --- the REST API's logic ---


def _db(deps: InferenceDeps) -> Any:
    if deps.db is None:
        raise Unavailable("stored completions are not kept by this deployment")
    return deps.db


def get_settings(deps: InferenceDeps, tenant_id: str) -> dict[str, Any]:
    with _db(deps).session() as s:
        return read(s, deps.settings, tenant_id).to_json()


def put_settings(deps: InferenceDeps, tenant_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change the fields of the tenant's policy named in ``changes`` (the others keep their value,
    or the default for a tenant that had none); this replica's cache gets the new policy at once."""
    for key, value in changes.items():
        if key not in FIELDS:
            raise InvalidArgument(f"Unknown setting {key!r}; expected {', '.join(FIELDS)}.", param=key)
        if key == "retention_days":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RETENTION_DAYS:
                raise InvalidArgument(f"retention_days must be an integer from 0 (keep forever) to "
                                      f"{MAX_RETENTION_DAYS}, got {value!r}", param=key)
        elif not isinstance(value, bool):
            raise InvalidArgument(f"{key} must be a boolean, got {value!r}", param=key)
    with _db(deps).session() as s:
        if changes:
            defaults = asdict(default_policy(deps.settings))
            defaults.pop("updated_at")
            repository.upsert_policy(s, tenant_id, defaults, changes)
            s.expire_all()
        policy = read(s, deps.settings, tenant_id)
    deps.policy_cache.set(tenant_id, policy)
    return policy.to_json()
