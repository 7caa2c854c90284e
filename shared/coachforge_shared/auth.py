"""API keys (stored hashed) that belong to a tenant, their scopes, and the caller's identity.

REST and gRPC callers present ``Authorization: Bearer <key>``. Services calling each other
present the internal token plus the tenant they act for (``x-coachforge-tenant``); only the gRPC
listener accepts it (the public REST port ignores those headers).

A key has scopes: ``read`` (list and retrieve, chat and completions), ``write`` (upload, train,
activate, change or delete anything) and ``admin`` (manage API keys; on the operator's tenant,
tenants too). Keys are ``cf-sk-`` followed by 43 random URL-safe characters (32 random bytes),
shown once when created and stored as their SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.models import ApiKey, Tenant

KEY_PREFIX = "cf-sk-"
"""What every generated API key starts with (easy to recognise in a leaked log or a secret scanner)."""
MIN_KEY_LENGTH = 32
"""The shortest API key accepted from configuration (``COACHFORGE_API_KEY``)."""
MAX_CREDENTIAL_LENGTH = 512
"""A presented key or token longer than this is refused without being hashed."""
TENANT_HEADER = "x-coachforge-tenant"
INTERNAL_HEADER = "x-coachforge-internal-token"

READ, WRITE, ADMIN = "read", "write", "admin"
SCOPES = (READ, WRITE, ADMIN)
ALL_SCOPES = frozenset(SCOPES)
DEFAULT_KEY_SCOPES = (READ, WRITE)
"""The scopes of a key created without naming any."""
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""A tenant id: lower-case letters, digits, ``-`` and ``_`` (it appears in model ids and URLs)."""
_CREDENTIAL = re.compile(r"^[\x21-\x7e]+$")
"""A presented key or token: printable ASCII without spaces (anything else cannot be one)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, through an API key or as an internal service, with its scopes."""

    tenant_id: str
    internal: bool = False
    key_id: str | None = None
    scopes: frozenset[str] = field(default=ALL_SCOPES)

    @property
    def actor(self) -> str:
        """Who did it, for audit rows: the API key's id, or the internal caller."""
        return f"api-key:{self.key_id}" if self.key_id else "internal"

    def require(self, scope: str) -> None:
        """Raise :class:`PermissionDenied` naming ``scope`` unless the caller has it."""
        if scope not in self.scopes:
            held = ", ".join(s for s in SCOPES if s in self.scopes) or "none"
            raise PermissionDenied(f"This API key lacks the '{scope}' scope, which this request needs "
                                   f"(its scopes: {held}).", code="missing_scope")


_current: ContextVar[Principal | None] = ContextVar("coachforge_principal", default=None)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    """A new API key: the prefix and 32 random bytes (URL-safe base64)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_configured_key(key: str, setting: str = "COACHFORGE_API_KEY") -> str:
    """``key`` if it is long enough to be a secret; else a :class:`ValueError` saying how to get one."""
    if len(key) < MIN_KEY_LENGTH or not _CREDENTIAL.match(key):
        raise ValueError(f"{setting} must be at least {MIN_KEY_LENGTH} printable characters without spaces "
                         f"(it has {len(key)}); leave it unset to have one generated, or make one with "
                         "python -c 'import secrets; print(\"cf-sk-\" + secrets.token_urlsafe(32))'")
    return key


def parse_scopes(scopes: str | Iterable[str], param: str = "scopes") -> tuple[str, ...]:
    """Scopes given as ``"read,write"`` or a list, checked and in canonical order."""
    items = [s.strip() for s in (scopes.split(",") if isinstance(scopes, str) else scopes)]
    items = [s for s in items if s]
    unknown = [s for s in items if s not in SCOPES]
    if unknown:
        raise InvalidArgument(f"Unknown scope(s) {', '.join(map(repr, unknown))}; scopes are "
                              f"{', '.join(SCOPES)}.", param=param, code="invalid_value")
    if not items:
        raise InvalidArgument(f"Give at least one scope ({', '.join(SCOPES)}).", param=param, code="invalid_value")
    return tuple(s for s in SCOPES if s in items)


def _scopes_of(row: ApiKey) -> frozenset[str]:
    return frozenset(s for s in (row.scopes or "").split(",") if s in ALL_SCOPES)


def _epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def tenant_dict(row: Tenant) -> dict[str, Any]:
    return {"id": row.id, "object": "tenant", "name": row.name, "created_at": _epoch(row.created_at)}


def key_dict(row: ApiKey) -> dict[str, Any]:
    """An API key as the API and the CLI show it: never the key, only its first characters."""
    return {"id": row.id, "object": "api_key", "tenant": row.tenant_id, "name": row.name,
            "prefix": row.prefix, "scopes": [s for s in SCOPES if s in _scopes_of(row)],
            "created_at": _epoch(row.created_at), "last_used_at": _epoch(row.last_used_at),
            "revoked_at": _epoch(row.revoked_at)}


def create_tenant(db: Database, tenant_id: str, name: str | None = None) -> None:
    """Make sure tenant ``tenant_id`` exists (start-up bootstrap; idempotent)."""
    with db.session() as s:
        if s.get(Tenant, tenant_id) is None:
            s.add(Tenant(id=tenant_id, name=name or tenant_id))


def new_tenant(db: Database, tenant_id: str, name: str | None = None) -> dict[str, Any]:
    """Create tenant ``tenant_id``; :class:`Conflict` if it exists, :class:`InvalidArgument` for a bad id."""
    if not TENANT_ID.match(tenant_id):
        raise InvalidArgument("A tenant id is 1-63 lower-case letters, digits, '-' or '_', starting with a letter "
                              "or digit.", param="id", code="invalid_value")
    with db.session() as s:
        if s.get(Tenant, tenant_id) is not None:
            raise Conflict(f"Tenant {tenant_id!r} already exists.", param="id", code="tenant_exists")
        row = Tenant(id=tenant_id, name=(name or tenant_id)[:200], created_at=utcnow())
        s.add(row)
        s.flush()
        return tenant_dict(row)


def list_tenants(db: Database) -> list[dict[str, Any]]:
    with db.session() as s:
        return [tenant_dict(t) for t in s.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id))]


LIMIT_FIELDS = ("max_requests_per_1_minute", "max_tokens_per_1_minute", "max_tokens_per_1_day",
                "max_cost_usd_per_1_day")
"""A tenant's limits on inference (requests and tokens per minute, tokens and US dollars per UTC day);
``None``: the deployment's default, 0: no limit."""


def limits_dict(row: Tenant) -> dict[str, Any]:
    """A tenant's own limits as the API and the CLI show them (``None``: the deployment's default)."""
    return {"object": "tenant.limits", "tenant": row.id, **{f: getattr(row, f) for f in LIMIT_FIELDS},
            "updated_at": _epoch(row.limits_updated_at)}


def tenant_limits(db: Database, tenant_id: str) -> dict[str, Any]:
    """Tenant ``tenant_id``'s limits; :class:`NotFound` if there is no such tenant."""
    with db.session() as s:
        row = s.get(Tenant, tenant_id)
        if row is None:
            raise NotFound(f"No tenant {tenant_id!r}.", param="tenant", code="tenant_not_found")
        return limits_dict(row)


def set_tenant_limits(db: Database, tenant_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change some of tenant ``tenant_id``'s limits (a field set to ``None`` goes back to the default);
    negative values are refused naming the field."""
    for name, value in changes.items():
        if name not in LIMIT_FIELDS:
            raise InvalidArgument(f"Unknown limit {name!r}; expected one of {', '.join(LIMIT_FIELDS)}.", param=name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise InvalidArgument(f"{name} must be a number of at least 0 (0: no limit) or null (the default).",
                                  param=name, code="invalid_value")
    with db.session() as s:
        row = s.get(Tenant, tenant_id)
        if row is None:
            raise NotFound(f"No tenant {tenant_id!r}.", param="tenant", code="tenant_not_found")
        for name, value in changes.items():
            setattr(row, name, value if value is None or name == "max_cost_usd_per_1_day" else int(value))
        row.limits_updated_at = utcnow()
        s.flush()
        return limits_dict(row)


def add_api_key(db: Database, tenant_id: str, key: str, name: str = "",
                scopes: Iterable[str] = SCOPES) -> None:
    """Store ``key`` (hashed) for ``tenant_id``; a key already stored is left as it is."""
    digest = hash_key(key)
    with db.session() as s:
        if s.scalar(select(ApiKey).where(ApiKey.key_hash == digest)) is None:
            s.add(ApiKey(id=new_id("key"), tenant_id=tenant_id, key_hash=digest, prefix=key[:8], name=name,
                         scopes=",".join(parse_scopes(scopes))))


def create_api_key(db: Database, tenant_id: str, *, name: str = "",
                   scopes: str | Iterable[str] = DEFAULT_KEY_SCOPES) -> tuple[dict[str, Any], str]:
    """A new random key for ``tenant_id`` (which must exist): its description and the key itself,
    which is not stored and cannot be shown again."""
    checked = parse_scopes(scopes)
    if len(name) > 200:
        raise InvalidArgument("A key name is at most 200 characters.", param="name", code="invalid_value")
    key = generate_key()
    with db.session() as s:
        if s.get(Tenant, tenant_id) is None:
            raise NotFound(f"No tenant {tenant_id!r}.", param="tenant", code="tenant_not_found")
        row = ApiKey(id=new_id("key"), tenant_id=tenant_id, key_hash=hash_key(key), prefix=key[:10], name=name,
                     scopes=",".join(checked), created_at=utcnow())
        s.add(row)
        s.flush()
        return key_dict(row), key


def list_api_keys(db: Database, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Keys of ``tenant_id`` (``None``: every tenant's), oldest first, revoked ones included."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    with db.session() as s:
        return [key_dict(k) for k in s.scalars(query)]


def revoke_api_key(db: Database, key_id: str, tenant_id: str | None = None) -> dict[str, Any]:
    """Revoke key ``key_id`` (of ``tenant_id``, when given: another tenant's key is not found);
    revoking a revoked key changes nothing."""
    with db.session() as s:
        row = s.get(ApiKey, key_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            raise NotFound(f"No API key {key_id!r}.", param="key_id", code="key_not_found")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        s.flush()
        return key_dict(row)


LAST_USED_EVERY = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per key (not once per request)."""


class Authenticator:
    """Resolves credentials to a :class:`Principal`.

    A valid API key is remembered for ``key_cache_s`` seconds (keyed by its hash, at most
    ``key_cache_size`` keys), so hot paths skip the database. A key revoked through this
    authenticator (:meth:`forget_key`, as the admin API does) stops working at once in this process;
    one revoked elsewhere (another process, the CLI) within ``key_cache_s``. Unknown or revoked keys
    are never cached. ``0`` disables the cache."""

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
        """Drop every cached key."""
        with self._keys_lock:
            self._keys.clear()

    def forget_key(self, key_id: str) -> None:
        """Drop the cached entry of key ``key_id`` (right after revoking it: it stops working at once)."""
        with self._keys_lock:
            for digest in [d for d, (_, p) in self._keys.items() if p.key_id == key_id]:
                del self._keys[digest]

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
            principal = Principal(tenant_id=row.tenant_id, key_id=row.id, scopes=_scopes_of(row))
            now = utcnow()
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
                s.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
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
        request that can never authenticate (bytes that cannot be a key or token included)."""
        if internal is not None:
            if len(internal) > MAX_CREDENTIAL_LENGTH or not _CREDENTIAL.match(internal) or not hmac.compare_digest(
                    internal.encode(), self.internal_token.encode()):
                raise Unauthenticated("Invalid internal token.", code="invalid_api_key")
            if not tenant or len(tenant) > 64 or not _CREDENTIAL.match(tenant):
                raise Unauthenticated(f"Internal calls must name a tenant in {TENANT_HEADER}.")
            return Principal(tenant_id=tenant, internal=True)
        if not authorization:
            raise Unauthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("Malformed Authorization header; expected 'Bearer <key>'.", code="invalid_api_key")
        if len(key) > MAX_CREDENTIAL_LENGTH or not _CREDENTIAL.match(key):
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        return hash_key(key)


GRPC_READ_METHODS = re.compile(r"^(Get|List|Check|Compare|Summarize|Next|Validate|Export|Stream|Recommend|"
                               r"CreateChatCompletion$|CreateCompletion$|Search$)")
"""gRPC methods an API key with the ``read`` scope may call (the rest need ``write``)."""


def grpc_scope(method: str) -> str:
    """The scope a gRPC method (``/pkg.Service/Method``) needs from an API key."""
    name = method.rsplit("/", 1)[-1]
    return READ if GRPC_READ_METHODS.match(name) else WRITE


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
