"""The Authenticator's short cache of valid API keys: hits skip the database, a revoked key stops
working once its entry expires, unknown keys are never cached, the cache stays bounded."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from coachforge_shared.auth import Authenticator, add_api_key, create_tenant, hash_key
from coachforge_shared.db import Database
from coachforge_shared.errors import Unauthenticated
from coachforge_shared.ids import utcnow
from coachforge_shared.models import ApiKey


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(db: Database, clock: Clock) -> Authenticator:
    create_tenant(db, "acme")
    for i in range(3):
        add_api_key(db, "acme", f"cf-key-{i}")
    return Authenticator(db, "internal", key_cache_s=5, key_cache_size=2, clock=clock)


def _revoke(db: Database, key: str) -> None:
    with db.session() as s:
        s.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=utcnow()))


def test_revocation_is_seen_once_the_entry_expires(auth: Authenticator, clock: Clock) -> None:
    first = auth.authenticate("Bearer cf-key-0", None, None)
    _revoke(auth.db, "cf-key-0")
    clock.now += 4.9
    assert auth.authenticate("Bearer cf-key-0", None, None) == first  # still within the TTL
    clock.now += 0.2
    with pytest.raises(Unauthenticated):
        auth.authenticate("Bearer cf-key-0", None, None)
    with pytest.raises(Unauthenticated):  # and the refusal is not cached as a success later
        auth.authenticate("Bearer cf-key-0", None, None)


def test_unknown_keys_are_not_cached_and_the_cache_is_bounded(auth: Authenticator, clock: Clock) -> None:
    with pytest.raises(Unauthenticated):
        auth.authenticate("Bearer cf-nope", None, None)
    add_api_key(auth.db, "acme", "cf-nope")  # created after a failed try: works at once
    assert auth.authenticate("Bearer cf-nope", None, None).tenant_id == "acme"
    for i in range(3):
        auth.authenticate(f"Bearer cf-key-{i}", None, None)
    assert len(auth._keys) == 2
    _revoke(auth.db, "cf-key-0")  # evicted as the oldest entry: the database answers again
    with pytest.raises(Unauthenticated):
        auth.authenticate("Bearer cf-key-0", None, None)


def test_disabled_cache_and_forget(db: Database, clock: Clock) -> None:
    create_tenant(db, "acme")
    add_api_key(db, "acme", "cf-key")
    uncached = Authenticator(db, "internal", key_cache_s=0, clock=clock)
    cached = Authenticator(db, "internal", clock=clock)
    assert uncached.authenticate("Bearer cf-key", None, None).tenant_id == "acme"
    assert cached.authenticate("Bearer cf-key", None, None).tenant_id == "acme"
    _revoke(db, "cf-key")
    with pytest.raises(Unauthenticated):
        uncached.authenticate("Bearer cf-key", None, None)
    cached.forget_keys()
    with pytest.raises(Unauthenticated):
        cached.authenticate("Bearer cf-key", None, None)
