"""SQLAlchemy 2.0 engine and sessions (SQLite by default, PostgreSQL via ``DATABASE_URL``).

Every service declares its tables on :class:`Base`; Alembic (``migrations/``) owns the schema.

Database outages (:func:`is_outage`) are not bugs: requests answer 503 with ``Retry-After``
(:func:`unavailable`, applied by the two error mappings) and background loops wait and retry
(:class:`OutageBackoff`); the pool replaces dead connections, so nothing needs a restart.

A value the database refuses as data (PostgreSQL's text with a NUL character, a number out of its
column's range) came from the caller: :meth:`Database.session` raises it as
:class:`~coachforge_shared.errors.InvalidArgument` (:func:`refused_value`), a 400, not a 500.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from coachforge_shared.errors import InvalidArgument, Unavailable
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.db")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            from datetime import UTC

            value = value.replace(tzinfo=UTC)
        return value  # type: ignore[no-any-return]


CONNECT_TIMEOUT_S = 5
"""Seconds a new PostgreSQL connection may take to open."""


def make_engine(url: str) -> Engine:
    """An engine with sane defaults: WAL + busy timeout on SQLite (several processes share the file)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # pool_pre_ping: a connection the server closed (restart, failover) is replaced before use, so
    # the process heals by itself when the database is back. connect_timeout: a database host that
    # does not answer fails a request (503) and the readiness check within seconds instead of
    # hanging the thread on the operating system's TCP timeout.
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


RETRY_AFTER_S = 5
"""What a request refused during a database outage is told to wait (HTTP ``Retry-After``)."""

OUTAGE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError)
"""The SQLAlchemy errors an outage shows up as (which of them are one: :func:`is_outage`)."""
#: SQLite reports bugs (no such table, syntax errors) as OperationalError too: only these are outages.
_SQLITE_OUTAGES = ("database is locked", "database table is locked", "unable to open database",
                   "disk i/o error", "database or disk is full")


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` says the database cannot be reached or cannot serve right now (refused or
    dropped connections, too many connections, a pool with no connection to spare, a locked SQLite
    file), as opposed to a bug or a constraint: retrying later is expected to succeed."""
    if not isinstance(err, OUTAGE_ERRORS):
        return False
    orig = getattr(err, "orig", None)
    if isinstance(orig, sqlite3.Error):
        return any(text in str(orig).lower() for text in _SQLITE_OUTAGES)
    return True


class _OutageNotes:
    """Logs request-path database outages at most once every ``every_s`` seconds per process, so
    that an outage is one line in the log, not one per refused request."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._last = float("-inf")
        self._refused = 0
        self._lock = threading.Lock()

    def note(self, err: BaseException) -> None:
        with self._lock:
            self._refused += 1
            now = time.monotonic()
            if now - self._last < self.every_s:
                return
            self._last, refused, self._refused = now, self._refused, 0
        log.warning("database unavailable; requests answered 503", refused=refused, error=_describe(err))


_notes = _OutageNotes()


def _describe(err: BaseException) -> str:
    """The driver's error in one short line (its first), for the log."""
    orig = getattr(err, "orig", None) or err
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}"[:300]


def unavailable(err: BaseException) -> Unavailable:
    """The typed error a request answers with when the database is out (:func:`is_outage`): HTTP 503
    with ``Retry-After``, gRPC UNAVAILABLE. The driver's message (hosts, users) stays in the log."""
    _notes.note(err)
    return Unavailable("The database is unavailable right now; retry shortly.", code="database_unavailable",
                       retry_after_s=RETRY_AFTER_S)


class OutageBackoff:
    """How a background loop (sweeper, retrier, relay) lives through a database outage: it logs the
    outage once when it begins and once when it ends (not a traceback every pass), and waits longer
    between passes while it lasts (its interval, doubling up to ``max_wait_s``). Other errors are
    logged with their traceback every time, as bugs should be. The loop itself never exits on them.

    Use: ``try: one_pass() except Exception as err: backoff.failed(err) else: backoff.succeeded()``,
    then wait ``backoff.wait(interval)`` seconds."""

    def __init__(self, name: str, max_wait_s: float = 60.0) -> None:
        self.name = name
        self.max_wait_s = max_wait_s
        self.outage_failures = 0
        """Passes in a row that failed because the database was out (0: none now)."""

    def failed(self, err: BaseException, what: str = "background pass failed") -> None:
        if is_outage(err):
            if self.outage_failures == 0:
                log.warning("database unavailable; retrying until it is back", loop=self.name, error=_describe(err))
            self.outage_failures += 1
            return
        log.error(what, loop=self.name, exc_info=err)

    def succeeded(self) -> None:
        if self.outage_failures:
            log.info("database available again", loop=self.name, failed_passes=self.outage_failures)
            self.outage_failures = 0

    def wait(self, interval: float) -> float:
        """The pause before the next pass: ``interval``, or longer during an outage."""
        if not self.outage_failures:
            return interval
        return float(min(interval * 2 ** min(self.outage_failures, 16), max(self.max_wait_s, interval)))


_BOUND_SUFFIX = re.compile(r"_\d+$")


def _refused_param(params: Any) -> str | None:
    """The column a bound value with a NUL character was meant for (``name``, ``id`` of ``id_1``)."""
    rows = params if isinstance(params, list | tuple) else [params]
    for row in rows:
        if isinstance(row, dict):
            for key, value in row.items():
                if isinstance(value, str) and "\x00" in value:
                    return _BOUND_SUFFIX.sub("", str(key))
    return None


def refused_value(err: sa_exc.DataError) -> InvalidArgument:
    """The typed error of a value the database refused as data (``err``): the driver's reason, and
    the column where it can be told."""
    reason = _describe(err).split(": ", 1)[-1]
    return InvalidArgument(f"A value in the request is refused by the database: {reason}.",
                           param=_refused_param(err.params), code="invalid_value")


class Database:
    """Owns one engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error. A value the
        database refused as data is raised as :class:`InvalidArgument` (:func:`refused_value`)."""
        try:
            with self._factory() as session, session.begin():
                yield session
        except sa_exc.DataError as err:
            raise refused_value(err) from err

    def dispose(self) -> None:
        self.engine.dispose()
