"""API keys (stored hashed) that belong to a tenant, and the caller's identity.

REST and gRPC callers present ``Authorization: Bearer <key>``. Services calling each other
present the internal token plus the tenant they act for (``x-coachforge-tenant``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from coachforge_shared.db import Database
from coachforge_shared.errors import Unauthenticated
from coachforge_shared.ids import new_id
from coachforge_shared.models import ApiKey, Tenant

KEY_PREFIX = "cf-"
TENANT_HEADER = "x-coachforge-tenant"
INTERNAL_HEADER = "x-coachforge-internal-token"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, through an API key or as an internal service."""

    tenant_id: str
    internal: bool = False
    key_id: str | None = None

    @property
    def actor(self) -> str:
        """Who did it, for audit rows: the API key's id, or the internal caller."""
        return f"api-key:{self.key_id}" if self.key_id else "internal"


_current: ContextVar[Principal | None] = ContextVar("coachforge_principal", default=None)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_tenant(db: Database, tenant_id: str, name: str | None = None) -> None:
    with db.session() as s:
        if s.get(Tenant, tenant_id) is None:
            s.add(Tenant(id=tenant_id, name=name or tenant_id))


def add_api_key(db: Database, tenant_id: str, key: str, name: str = "") -> None:
    """Store ``key`` (hashed) for ``tenant_id``; a key already stored is left as it is."""
    digest = hash_key(key)
    with db.session() as s:
        if s.scalar(select(ApiKey).where(ApiKey.key_hash == digest)) is None:
            s.add(ApiKey(id=new_id("key"), tenant_id=tenant_id, key_hash=digest, prefix=key[:8], name=name))


class Authenticator:
    """Resolves credentials to a :class:`Principal`.

    A valid API key is remembered for ``key_cache_s`` seconds (keyed by its hash, at most
    ``key_cache_size`` keys), so hot paths skip the database; a revoked key therefore stops
    working within ``key_cache_s``. Unknown or revoked keys are never cached. ``0`` disables it."""

    def __init__(self, db: Database, internal_token: str, *, key_cache_s: float = 5.0,
                 key_cache_size: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.internal_token = internal_token
        self.key_cache_s = key_cache_s
        self.key_cache_size = key_cache_size
        self._clock = clock
        self._keys: dict[str, tuple[float, Principal]] = {}
        self._keys_lock = threading.Lock()

    def _cached(self, digest: str) -> Principal | None:
        if self.key_cache_s <= 0:
            return None
        with self._keys_lock:
            hit = self._keys.get(digest)
            if hit is None:
                return None
            if self._clock() - hit[0] >= self.key_cache_s:
                del self._keys[digest]
                return None
            return hit[1]

    def _remember(self, digest: str, principal: Principal) -> None:
        if self.key_cache_s <= 0:
            return
        with self._keys_lock:
            if len(self._keys) >= self.key_cache_size:
                self._keys.pop(next(iter(self._keys)))  # the oldest entry (insertion order)
            self._keys[digest] = (self._clock(), principal)

    def forget_keys(self) -> None:
        """Drop every cached key (e.g. right after revoking one in this process)."""
        with self._keys_lock:
            self._keys.clear()

    def authenticate(self, authorization: str | None, internal: str | None, tenant: str | None) -> Principal:
        """The caller of a request with these headers; raises :class:`Unauthenticated`."""
        found = self._principal_or_digest(authorization, internal, tenant)
        if isinstance(found, Principal):
            return found
        principal = self._cached(found)
        if principal is not None:
            return principal
        with self.db.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == found))
            if row is None or row.revoked_at is not None:
                raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
            principal = Principal(tenant_id=row.tenant_id, key_id=row.id)
        self._remember(found, principal)
        return principal

    def authenticate_cached(self, authorization: str | None, internal: str | None,
                            tenant: str | None) -> Principal | None:
        """:meth:`authenticate` without the database: the caller, or ``None`` when its API key must
        be looked up (not cached); cheap enough for an event loop. Raises for a bad request."""
        found = self._principal_or_digest(authorization, internal, tenant)
        return found if isinstance(found, Principal) else self._cached(found)

    def _principal_or_digest(self, authorization: str | None, internal: str | None,
                             tenant: str | None) -> Principal | str:
        """The caller of an internal call, or the digest of the API key to look up; raises for a
        request that can never authenticate."""
        if internal is not None:
            if not hmac.compare_digest(internal, self.internal_token):
                raise Unauthenticated("Invalid internal token.", code="invalid_api_key")
            if not tenant:
                raise Unauthenticated(f"Internal calls must name a tenant in {TENANT_HEADER}.")
            return Principal(tenant_id=tenant, internal=True)
        if not authorization:
            raise Unauthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("Malformed Authorization header; expected 'Bearer <key>'.", code="invalid_api_key")
        return hash_key(key.strip())


def set_principal(principal: Principal | None) -> object:
    return _current.set(principal)


def reset_principal(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def current_principal() -> Principal:
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("Not authenticated.")
    return principal


def read_or_create_secret(path: Path, given: str | None, make: Callable[[], str] = generate_key) -> tuple[str, bool]:
    """Return ``given`` if set, else the secret stored at ``path``, creating it (mode 0600) on first use.

    The flag says whether a new secret was created."""
    if given:
        return given, False
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = make()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(secret + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return secret, True
