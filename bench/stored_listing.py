"""Listing stored chat completions by metadata at a million rows, on PostgreSQL.

Creates a scratch database on the machine's PostgreSQL server, migrates it to head (Alembic, as
the services do), bulk-loads ``--rows`` stored completions with COPY (their metadata pairs and a
little feedback too) across three tenants of unequal size, runs ``VACUUM ANALYZE`` (what autovacuum
leaves behind in steady state), then times the service's own listing function
(``coachforge_inference.stored.list_completions``, what ``GET /v1/chat/completions`` calls: the
session, the list query, the feedback summaries and the serialization) for a mix of queries:

* no filter; one metadata pair that is selective (an athlete id), unselective (``source=app``, 80%)
  or rare (``source=eval``, 5%); two pairs (athlete + source, two unselective ones, two whose
  intersection is rare); a pair that matches nothing;
* ``model`` (the base model, 40%; an avatar alias, 3%; an avatar with an athlete);
* ``after`` cursors anywhere in a result set (deep pages), with and without a metadata filter;

each in both orders and with limit 20 and 100. It prints p50/p95/max per kind of query and over
all, and whether the overall p95 meets the goal (50 ms). The scratch database is dropped at the
end unless ``--keep`` (then ``--database`` reuses it: no load, migrated to ``--revision``). The
listing code needs the schema at head; an earlier ``--revision`` (e.g. ``c6e1f7a8b9d0``, before the
listing indexes) only loads or migrates, so that a later run up to head times that migration on
the same rows:

    .venv/bin/python bench/stored_listing.py --revision c6e1f7a8b9d0 --keep    # prints --database URL
    .venv/bin/python bench/stored_listing.py --database URL                    # migrates, then times

Metadata per completion: ``athlete_id`` (tens of thousands per tenant, some athletes far busier
than others), ``source`` (app/web/eval), ``screen`` (10 values), ``app_version`` (12), ``locale``
(6, half the rows) and ``session`` (unique, a third of the rows): 4.8 pairs on average.

    .venv/bin/python bench/stored_listing.py [--rows 1000000] [--repeats 12] [--keep] [--explain]
                                             [--database postgresql+psycopg://…] [--revision head]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import secrets
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event

from coachforge_inference import stored
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_shared import migrate
from coachforge_shared.db import Database
from coachforge_shared.grpc_server import InternalChannel

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
GOAL_MS = 50.0
BASE = "SmolLM2-135M-Instruct"

TENANTS = (("bench-acme", 0.70, 20_000), ("bench-polar", 0.25, 8_000), ("bench-tiny", 0.05, 1_000))
"""(tenant id, share of the rows, athletes)."""

MODELS = (  # (model that answered, model or avatar asked for, avatar, weight)
    (BASE, BASE, "", 40),
    (f"ft:{BASE}:t:coach-anna:v3", "coach-anna", "coach-anna", 30),
    (f"ft:{BASE}:t:coach-ben:v1", "coach-ben", "coach-ben", 20),
    (f"ft:{BASE}:t:coach-ben:v2", f"ft:{BASE}:t:coach-ben:v2", "", 7),
    (f"ft:{BASE}:t:coach-cleo:v1", "coach-cleo", "coach-cleo", 3),
)
SOURCES = (("app", 80), ("web", 15), ("eval", 5))
SCREENS = ("week", "day", "chat", "plan", "race", "recovery", "sleep", "nutrition", "strength", "settings")
VERSIONS = tuple(f"4.{i}.0" for i in range(12))
LOCALES = ("en", "de", "fr", "es", "it", "nl")
SYSTEMS = (
    "You are Anna, a concise endurance coach. Answer with a JSON plan change when asked.",
    "You are Polarize, a friendly training assistant for runners and cyclists. Answer briefly.",
    "You are Ben, a cycling coach who explains training load in plain words.",
)
QUESTIONS = (
    "My legs are sore after yesterday's intervals and I slept 6 hours. Should I still do the tempo run?",
    "CTL 62, ATL 78, TSB -16. Is it safe to add a long ride on Saturday?",
    "I have a 10k race in 12 days. How should I taper this week?",
    "Swap Thursday's threshold session for something easier, I feel a cold coming.",
    "How many recovery days do I need after a marathon?",
)
ANSWERS = (
    "Take it easy today: swap the tempo run for 40 minutes at an easy pace and keep Thursday as planned.",
    "Your form is low (TSB -16). Keep Saturday's ride at 2 hours in zone 2 and skip the extra hour.",
    "Keep the intensity, cut the volume by a third, and rest completely two days before the race.",
    '{"changes": [{"day": "thursday", "action": "replace", "workout": "easy_run_45min"}]}',
    "Plan about one easy day per 10 km raced, so two to three weeks before hard sessions again.",
)

COMPLETION_COLUMNS = ("id", "tenant_id", "created", "created_at", "model", "requested_model", "avatar", "variant",
                      "end_user", "purpose", "fallback_from", "stream", "metadata", "messages", "params", "choices",
                      "prompt_tokens", "completion_tokens", "total_tokens", "latency_seconds", "stored_at")
FEEDBACK_COLUMNS = ("id", "completion_id", "tenant_id", "rater", "rating", "gold", "correction", "comment",
                    "created_at", "updated_at")
BATCH = 20_000
SAMPLES = 4_000
"""Completions remembered while loading (reservoir sample), to pick athletes and cursors that exist."""


@dataclass
class Sample:
    id: str
    tenant: str
    model: str
    requested_model: str
    metadata: dict[str, str]


@dataclass
class Loaded:
    rows: int
    samples: list[Sample] = field(default_factory=list)


def _weighted(rng: random.Random, items: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """A lookup list: one entry per unit of weight (the weight is each item's last field)."""
    return [item for item in items for _ in range(item[-1])]


def _copy_text(value: Any) -> str:
    """``value`` as JSON, escaped for COPY's text format (where a backslash escapes)."""
    return json.dumps(value, separators=(",", ":")).replace("\\", "\\\\")


def generate(rows: int, seed: int, out: queue.Queue[Any], samples: list[Sample], copies: bool) -> None:
    """Put batches of COPY text (completions, metadata pairs, feedback) on ``out``, then None
    (``copies``: each pair with its completion's tenant, created and created_at, as the schema
    since the listing indexes keeps them)."""
    rng = random.Random(seed)
    models = _weighted(rng, MODELS)
    sources = [s for s, w in SOURCES for _ in range(w)]
    tenants = [t for t, share, _ in TENANTS for _ in range(round(share * 100))]
    athletes = {t: n for t, _, n in TENANTS}
    messages = [_copy_text([{"role": "system", "content": s}, {"role": "user", "content": q}])
                for s in SYSTEMS for q in QUESTIONS]
    choices = [_copy_text([{"index": 0, "message": {"role": "assistant", "content": a}, "finish_reason": "stop"}])
               for a in ANSWERS]
    params = '{"temperature":0.7,"max_tokens":256}'
    end = time.time()
    start = end - 180 * 86400  # half a year of traffic
    step = (end - start) / rows
    seen = 0
    try:
        for first in range(0, rows, BATCH):
            comp: list[str] = []
            meta: list[str] = []
            feedback: list[str] = []
            for i in range(first, min(rows, first + BATCH)):
                cid = f"chatcmpl-{rng.getrandbits(128):032x}"
                tenant = rng.choice(tenants)
                model, requested, avatar, _ = rng.choice(models)
                ts = start + (i + rng.random()) * step
                at = datetime.fromtimestamp(ts, UTC).isoformat(sep=" ")
                pairs = {"athlete_id": f"ath-{int(athletes[tenant] * rng.random() ** 2):05d}",
                         "source": rng.choice(sources), "screen": rng.choice(SCREENS),
                         "app_version": VERSIONS[min(11, int(12 * rng.random() ** 0.5))]}
                if rng.random() < 0.5:
                    pairs["locale"] = rng.choice(LOCALES)
                if rng.random() < 0.3:
                    pairs["session"] = f"s-{rng.getrandbits(64):016x}"
                metadata = "{" + ",".join(f'"{k}":"{v}"' for k, v in pairs.items()) + "}"
                prompt, completion = 80 + rng.randrange(400), 20 + rng.randrange(200)
                comp.append("\t".join((
                    cid, tenant, str(int(ts)), at, model, requested, avatar, "", pairs["athlete_id"], "app", "",
                    "f" if rng.random() < 0.7 else "t", metadata, rng.choice(messages), params,
                    rng.choice(choices), str(prompt), str(completion), str(prompt + completion),
                    f"{0.2 + rng.random() * 2:.3f}", at)))
                tail = f"\t{tenant}\t{int(ts)}\t{at}" if copies else ""
                meta.extend(f"{cid}\t{k}\t{v}{tail}" for k, v in pairs.items())
                if rng.random() < 0.02:
                    feedback.append("\t".join((f"fb-{rng.getrandbits(64):016x}", cid, tenant, "coach-maria",
                                               str(rng.randint(1, 5)), "t" if rng.random() < 0.3 else "f",
                                               r"\N", r"\N", at, at)))
                seen += 1
                sample = Sample(cid, tenant, model, requested, pairs)
                if len(samples) < SAMPLES:
                    samples.append(sample)
                elif (j := rng.randrange(seen)) < SAMPLES:
                    samples[j] = sample
            out.put(("\n".join(comp) + "\n", "\n".join(meta) + "\n",
                     "\n".join(feedback) + "\n" if feedback else "", len(comp)))
    finally:
        out.put(None)


def _copy(cur: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], data: str) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        copy.write(data)


def load(url: str, rows: int, seed: int) -> Loaded:
    """COPY ``rows`` stored completions (and their pairs and feedback) into the migrated database;
    the rows are made in a thread while the server takes the previous batch."""
    loaded = Loaded(rows)
    batches: queue.Queue[Any] = queue.Queue(maxsize=4)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'stored_completion_metadata' "
                    "AND column_name = 'tenant_id'")
        copies = cur.fetchone() is not None
        pair_columns = ("completion_id", "key", "value", *(("tenant_id", "created", "created_at") if copies else ()))
        maker = threading.Thread(target=generate, args=(rows, seed, batches, loaded.samples, copies), daemon=True)
        cur.execute("SET synchronous_commit = off")
        try:  # the pairs are made consistent with their completions: skip the per-row foreign key checks
            cur.execute("SET session_replication_role = replica")
        except psycopg.Error:
            conn.rollback()
        now = datetime.now(UTC)
        cur.executemany("INSERT INTO tenants (id, name, created_at) VALUES (%s, %s, %s)",
                        [(t, t, now) for t, _, _ in TENANTS])
        conn.commit()
        maker.start()
        done, t0, marks = 0, time.perf_counter(), 0
        while (batch := batches.get()) is not None:
            completions, pairs, feedback, n = batch
            _copy(cur, "stored_completions", COMPLETION_COLUMNS, completions)
            _copy(cur, "stored_completion_metadata", pair_columns, pairs)
            if feedback:
                _copy(cur, "completion_feedback", FEEDBACK_COLUMNS, feedback)
            conn.commit()
            done += n
            if done * 10 // rows > marks or done == rows:
                marks = done * 10 // rows
                elapsed = time.perf_counter() - t0
                print(f"  loaded {done:>9,} / {rows:,} completions  {done / elapsed:8,.0f}/s  "
                      f"eta {(rows - done) / (done / elapsed):5.0f} s", flush=True)
    maker.join()
    return loaded


def samples_from_database(url: str, seed: int) -> list[Sample]:
    """For a database loaded before (``--database``): a random sample of its completions."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, tenant_id, model, requested_model, metadata::text FROM stored_completions "
            "TABLESAMPLE SYSTEM (1) REPEATABLE (%s) LIMIT %s", (seed, SAMPLES)).fetchall()
    return [Sample(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


@dataclass(frozen=True)
class Query:
    kind: str
    tenant: str
    model: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    after: str | None = None


def queries(samples: list[Sample], rng: random.Random, repeats: int) -> list[Query]:
    """``repeats`` queries of each kind, on the big tenant (athletes and cursors picked among
    completions that exist)."""
    big = [s for s in samples if s.tenant == TENANTS[0][0]]
    app = [s for s in big if s.metadata["source"] == "app"]
    anna = [s for s in big if s.requested_model == "coach-anna"]
    tenant = TENANTS[0][0]
    kinds: dict[str, Any] = {
        "no filter": lambda: Query("no filter", tenant),
        "1 pair, selective (athlete)": lambda: Query(
            "1 pair, selective (athlete)", tenant, metadata={"athlete_id": rng.choice(big).metadata["athlete_id"]}),
        "1 pair, unselective (source=app)": lambda: Query(
            "1 pair, unselective (source=app)", tenant, metadata={"source": "app"}),
        "1 pair, rare (source=eval)": lambda: Query("1 pair, rare (source=eval)", tenant, metadata={"source": "eval"}),
        "1 pair, no match": lambda: Query("1 pair, no match", tenant, metadata={"athlete_id": "ath-none"}),
        "2 pairs, athlete + source": lambda: Query(
            "2 pairs, athlete + source", tenant,
            metadata={"athlete_id": rng.choice(big).metadata["athlete_id"], "source": "app"}),
        "2 pairs, unselective": lambda: Query(
            "2 pairs, unselective", tenant, metadata={"source": "app", "screen": rng.choice(SCREENS)}),
        "2 pairs, rare together": lambda: Query(
            "2 pairs, rare together", tenant, metadata={"source": "eval", "app_version": VERSIONS[0]}),
        "model, common (base)": lambda: Query("model, common (base)", tenant, model=BASE),
        "model, rare (avatar)": lambda: Query("model, rare (avatar)", tenant, model="coach-cleo"),
        "model + athlete": lambda: Query(
            "model + athlete", tenant, model="coach-anna",
            metadata={"athlete_id": rng.choice(anna).metadata["athlete_id"]}),
        "after, deep, no filter": lambda: Query("after, deep, no filter", tenant, after=rng.choice(big).id),
        "after, deep, source=app": lambda: Query(
            "after, deep, source=app", tenant, metadata={"source": "app"}, after=rng.choice(app).id),
        "after, deep, 2 pairs": lambda: (lambda s: Query(
            "after, deep, 2 pairs", tenant, metadata={"source": "app", "screen": s.metadata["screen"]},
            after=s.id))(rng.choice(app)),
    }
    return [make() for make in kinds.values() for _ in range(repeats)]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def run_queries(db: Database, deps: InferenceDeps, plan: list[Query], explain: bool) -> dict[str, list[float]]:
    """Time every query in ``plan`` (each in both orders, limit 20 and 100, interleaved); per kind,
    the milliseconds of each call."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    times: dict[str, list[float]] = {}
    slowest: dict[str, tuple[float, list[tuple[str, Any]]]] = {}
    variants = [(20, "asc"), (100, "desc"), (100, "asc"), (20, "desc")]
    for i, q in enumerate(plan):
        for limit, order in (variants[i % 4], variants[(i + 2) % 4]):
            statements.clear()
            t = time.perf_counter()
            page = stored.list_completions(deps, q.tenant, model=q.model, metadata=q.metadata, after=q.after,
                                           limit=limit, order=order)
            ms = (time.perf_counter() - t) * 1e3
            assert page["object"] == "list" and len(page["data"]) <= limit
            times.setdefault(q.kind, []).append(ms)
            if ms > slowest.get(q.kind, (-1.0, []))[0]:
                slowest[q.kind] = (ms, list(statements))
    event.remove(db.engine, "before_cursor_execute", capture)
    if explain:
        for kind, (ms, stmts) in slowest.items():
            main = next((s for s in stmts if "FROM stored_completions" in s[0] and "LIMIT" in s[0]), None)
            if main is None:
                continue
            with db.engine.connect() as conn:
                plan_rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + main[0], main[1]).all()
            print(f"\n--- {kind}: slowest call {ms:.1f} ms; its list query:")
            print("\n".join(r[0] for r in plan_rows))
    return times


def migrate_to(url: str, revision: str) -> float:
    """Migrate to ``revision`` (up, or down from a later one); seconds it took."""
    t = time.perf_counter()
    try:
        migrate.upgrade(url, revision)
    except CommandError:
        migrate.downgrade(url, revision)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--rows", type=int, default=1_000_000, help="stored completions to load (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=12,
                        help="queries of each kind (each run twice: two of asc/desc x limit 20/100; default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated rows and queries")
    parser.add_argument("--admin-url", default=ADMIN_URL,
                        help=f"a PostgreSQL server's maintenance database, to create the scratch one (default "
                             f"{ADMIN_URL})")
    parser.add_argument("--database", default=None,
                        help="time an existing database kept by an earlier --keep run (SQLAlchemy URL) instead "
                             "of creating and loading one")
    parser.add_argument("--revision", default="head",
                        help="migrate to this Alembic revision (default head; an earlier one goes down from a "
                             "later one) and time the listing only at head (c6e1f7a8b9d0: the schema before the "
                             "listing indexes, to time their migration later with --database)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (prints its URL)")
    parser.add_argument("--explain", action="store_true",
                        help="print EXPLAIN ANALYZE of the slowest call of each kind")
    args = parser.parse_args()

    created = None
    url = args.database
    if url is None:
        created = f"coachforge_bench_{secrets.token_hex(4)}"
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{created}"')
        base, _, _ = args.admin_url.rpartition("/")
        url = base.replace("postgresql://", "postgresql+psycopg://", 1) + "/" + created
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    db = None
    try:
        print(f"database {url}", flush=True)
        seconds = migrate_to(url, args.revision)
        print(f"migrated to {args.revision} in {seconds:.1f} s", flush=True)
        if created:
            print(f"loading {args.rows:,} stored completions (COPY, batches of {BATCH:,})", flush=True)
            t = time.perf_counter()
            samples = load(plain, args.rows, args.seed).samples
            print(f"loaded in {time.perf_counter() - t:.0f} s", flush=True)
        else:
            samples = samples_from_database(plain, args.seed)
        t = time.perf_counter()
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) stored_completions, stored_completion_metadata, completion_feedback")
            counts = conn.execute("SELECT (SELECT count(*) FROM stored_completions), "
                                  "(SELECT count(*) FROM stored_completion_metadata)").fetchone()
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
        assert counts is not None and size is not None
        print(f"VACUUM ANALYZE in {time.perf_counter() - t:.0f} s; {counts[0]:,} completions, {counts[1]:,} "
              f"metadata pairs, {size[0]} on disk", flush=True)

        head = ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()
        if args.revision not in ("head", head):
            print(f"at revision {args.revision}: not timed (the listing needs the schema at head, {head})")
            return
        db = Database(url)
        deps = InferenceDeps(settings=InferenceSettings(), registry=InternalChannel("127.0.0.1:9", "bench"),
                             engines=EnginePool(), db=db)
        rng = random.Random(args.seed)
        run_queries(db, deps, queries(samples, rng, 1), explain=False)  # warm-up: pool, caches, statements
        load_before = os.getloadavg()[0]
        times = run_queries(db, deps, queries(samples, rng, args.repeats), args.explain)
        every = [ms for values in times.values() for ms in values]
        print(f"\nlist_completions on tenant {TENANTS[0][0]} ({TENANTS[0][1]:.0%} of the rows), "
              f"{len(every)} calls; ms per call (session, list query, feedback summaries, serialization); "
              f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs:")
        print(f"{'query':<36} {'calls':>5} {'p50':>8} {'p95':>8} {'max':>8}")
        for kind, values in times.items():
            print(f"{kind:<36} {len(values):>5} {pct(values, 50):8.1f} {pct(values, 95):8.1f} {max(values):8.1f}")
        p95 = pct(every, 95)
        print(f"{'all':<36} {len(every):>5} {pct(every, 50):8.1f} {p95:8.1f} {max(every):8.1f}")
        worst = max(times, key=lambda k: pct(times[k], 95))
        print(f"\ngoal p95 <= {GOAL_MS:.0f} ms: {'met' if p95 <= GOAL_MS else 'MISSED'} (overall p95 {p95:.1f} ms; "
              f"worst kind: {worst}, p95 {pct(times[worst], 95):.1f} ms)")
    finally:
        if db is not None:
            db.dispose()
        if created and not args.keep:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)')
            print(f"dropped {created}")
        elif created:
            print(f"kept: --database {url}")


if __name__ == "__main__":
    main()
