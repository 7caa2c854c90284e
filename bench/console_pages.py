"""Server time of each console page with 1,000 fine-tuning jobs and 10,000 stored completions.

Starts the all-in-one stack (its own data dir and free ports) on a scratch PostgreSQL database,
loads one tenant with ``--jobs`` finished fine-tuning jobs (each with its events and two
checkpoints), ``--completions`` stored completions (written by the ``completion.stored`` consumer's
own handler, metadata included), feedback on every tenth of them through the REST API (so the
review queue has its summaries), 60 days of daily usage over four models and a few avatars and
comparisons; then signs in to the console as that tenant's key and requests every page
``--repeats`` times, one at a time, and prints p50/p95/max per page and whether each p95 meets
the goal (200 ms).

The time is measured by this client on the same host, from sending the request to the last
byte of the page (so it includes the loopback hop and the console's in-process calls of the
API: everything the server does for the page, and a little more).

    .venv/bin/python bench/console_pages.py [--jobs 1000] [--completions 10000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import random
import re
import secrets
import socket
import statistics
import tempfile
import time
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import insert, select

from coachforge.inference.v1 import inference_pb2
from coachforge_inference.models import UsageDaily
from coachforge_inference.stored import TOPIC, on_completion_stored
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_launcher.settings import StackSettings
from coachforge_launcher.stack import Stack
from coachforge_shared.auth import hash_key
from coachforge_shared.db import Database
from coachforge_shared.events import encode
from coachforge_shared.models import ApiKey
from coachforge_shared.settings import PlatformSettings
from coachforge_trainer.models import Job, JobCheckpoint, JobEvent

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
GOAL_MS = 200.0
STATUSES = (("succeeded", 85), ("failed", 10), ("cancelled", 5))


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def load_jobs(db: Database, tenant: str, count: int, rng: random.Random) -> str:
    """``count`` finished jobs with 8 events and 2 checkpoints each; returns the newest job's id."""
    now = datetime.now(UTC)
    jobs, events, checkpoints = [], [], []
    statuses = [s for s, w in STATUSES for _ in range(w)]
    for i in range(count):
        job_id = f"ftjob-bench{i:06d}{secrets.token_hex(4)}"
        created = now - timedelta(minutes=10 * (count - i))
        status = rng.choice(statuses)
        suffix = f"bench{i % 20}"
        jobs.append({"id": job_id, "tenant_id": tenant, "model": BASE_MODEL_ID, "status": status,
                     "training_file": f"file-bench{i:06d}", "validation_file": None, "suffix": suffix,
                     "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0, "seed": i,
                     "fine_tuned_model": f"ft:{BASE_MODEL_ID}:{tenant}:{suffix}:{job_id[-8:]}"
                     if status == "succeeded" else None,
                     "trained_tokens": 12_000 + i, "device": "cpu", "attempts": 1, "queued_at": created,
                     "created_at": created, "started_at": created + timedelta(seconds=5),
                     "finished_at": created + timedelta(minutes=4), "estimated_tokens": 12_000,
                     "estimated_seconds": 240.0, "estimated_cost_usd": 0.04, "valid_loss": 1.2,
                     "error_code": "training_error" if status == "failed" else None,
                     "error_message": "The training run stopped." if status == "failed" else None})
        for n in range(8):
            events.append({"id": f"ftevent-{secrets.token_hex(12)}", "job_id": job_id, "level": "info",
                           "type": "metrics" if n % 2 else "message",
                           "message": f"Step {n + 1}/8: training loss={3.5 - n * 0.3:.4f}",
                           "data_json": f'{{"step": {n + 1}, "total_steps": 8, "train_loss": {3.5 - n * 0.3}}}',
                           "created_at": created + timedelta(seconds=10 + n * 30)})
        for n in (4, 8):
            checkpoints.append({"id": f"ftckpt-{secrets.token_hex(12)}", "job_id": job_id, "step": n,
                                "epoch": n / 4, "train_loss": 3.0 - n * 0.2, "valid_loss": 2.5 - n * 0.1,
                                "path": f"checkpoints/{job_id}/step-{n}",
                                "created_at": created + timedelta(seconds=10 + n * 30)})
    with db.session() as s:
        s.execute(insert(Job), jobs)
        s.execute(insert(JobEvent), events)
        s.execute(insert(JobCheckpoint), checkpoints)
    return str(jobs[-1]["id"])


def load_completions(db: Database, tenant: str, count: int, rng: random.Random) -> list[str]:
    """``count`` stored completions through the consumer's handler; returns their ids."""
    ids = []
    models = (BASE_MODEL_ID, f"ft:{BASE_MODEL_ID}:{tenant}:coach:v1", f"ft:{BASE_MODEL_ID}:{tenant}:coach:v2")
    for start in range(0, count, 500):
        with db.session() as s:
            for i in range(start, min(count, start + 500)):
                ident = f"chatcmpl-bench{i:06d}{secrets.token_hex(6)}"
                ids.append(ident)
                question = f"Athlete {i % 300}: CTL {40 + i % 50}, ATL {45 + i % 40}, slept {5 + i % 4} h. Plan?"
                event = inference_pb2.CompletionStored(
                    id=ident, created=int(time.time()) - (count - i) * 30, model=rng.choice(models),
                    requested_model="coach", avatar="coach", variant="active", user=f"athlete-{i % 300}",
                    metadata_json=f'{{"athlete_id": "a{i % 300}", "source": "app", "screen": "week"}}',
                    messages_json=f'[{{"role": "system", "content": "You are a coach."}}, '
                                  f'{{"role": "user", "content": "{question}"}}]',
                    params_json='{"temperature": 0.2}',
                    choices_json='[{"index": 0, "message": {"role": "assistant", "content": '
                                 '"{\\"operations\\": [], \\"reason\\": \\"Keep the week as planned.\\"}"}, '
                                 '"finish_reason": "stop"}]',
                    latency_seconds=0.4, purpose="app")
                event.usage.CopyFrom(inference_pb2.Usage(prompt_tokens=120, completion_tokens=30,
                                                         total_tokens=150))
                on_completion_stored(s, encode(TOPIC, event, tenant), event)
    return ids


def load_usage(db: Database, tenant: str, rng: random.Random) -> None:
    today = date.today()
    rows = []
    for day in range(60):
        for model, avatar in ((BASE_MODEL_ID, ""), (BASE_MODEL_ID, "coach"),
                              (f"ft:{BASE_MODEL_ID}:{tenant}:coach:v1", "coach"),
                              (f"ft:{BASE_MODEL_ID}:{tenant}:coach:v2", "arena")):
            messages = rng.randint(50, 500)
            rows.append({"tenant_id": tenant, "day": today - timedelta(days=day), "model": model,
                         "avatar": avatar, "purpose": "app", "messages": messages,
                         "input_tokens": messages * 120, "output_tokens": messages * 30,
                         "cost_usd": messages * 0.00002})
    with db.session() as s:
        s.execute(insert(UsageDaily), rows)


def time_pages(console: str, key: str, pages: dict[str, str], repeats: int) -> dict[str, list[float]]:
    with httpx.Client(base_url=console, timeout=60, follow_redirects=False) as client:
        form = client.get("/console/sign-in").text
        token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', form)
        assert token, "no CSRF token on the sign-in page"
        signed = client.post("/console/sign-in", data={"api_key": key, "csrf_token": token.group(1),
                                                       "next": "/console/"})
        assert signed.status_code == 303, f"sign-in answered {signed.status_code}"
        for path in pages.values():  # warm-up, and every page must render
            r = client.get(path)
            assert r.status_code == 200, f"{path} answered {r.status_code}"
        times: dict[str, list[float]] = {name: [] for name in pages}
        for _ in range(repeats):
            for name, path in pages.items():
                t0 = time.perf_counter()
                r = client.get(path)
                r.read()
                times[name].append(time.perf_counter() - t0)
                assert r.status_code == 200, f"{path} answered {r.status_code}"
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="finished fine-tuning jobs (default 1000)")
    parser.add_argument("--completions", type=int, default=10_000, help="stored completions (default 10000)")
    parser.add_argument("--repeats", type=int, default=30, help="requests per page (default 30)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    name = f"coachforge_bench_console_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    key = "cf-bench-" + secrets.token_hex(16)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            platform = PlatformSettings(data_dir=Path(tmp), database_url=url, api_key=key)
            settings = StackSettings(http_port=free_port(), grpc_port=free_port(), engine_port=free_port(),
                                     broker_port=free_port(), worker_metrics_port=free_port(),
                                     metrics_port=free_port())
            with Stack(platform, settings) as stack:
                db = Database(url)
                with db.session() as s:
                    tenant = s.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key)))
                assert tenant, "the stack's key has no tenant"
                t0 = time.perf_counter()
                job_id = load_jobs(db, tenant, args.jobs, rng)
                completion_ids = load_completions(db, tenant, args.completions, rng)
                load_usage(db, tenant, rng)
                db.dispose()
                api = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
                for i, ident in enumerate(completion_ids[::10]):
                    body: dict[str, Any] = {"rating": 1 + i % 5, "rater": f"coach-{i % 3}",
                                            "gold": i % 5 == 4}
                    if i % 5 == 0:
                        body["correction"] = '{"operations": [], "reason": "Rest today."}'
                    api.post(f"/chat/completions/{ident}/feedback", json=body).raise_for_status()
                for avatar in ("coach", "arena"):
                    api.post("/avatars", json={"name": avatar, "model": BASE_MODEL_ID}).raise_for_status()
                comparison = api.post("/comparisons", json={
                    "name": "bench", "models": [BASE_MODEL_ID, "coach"],
                    "prompts": [[{"role": "user", "content": f"Plan for day {n}?"}] for n in range(3)],
                    "sampling": {"max_completion_tokens": 4}})
                comparison.raise_for_status()
                print(f"loaded {args.jobs} jobs, {args.completions} stored completions "
                      f"({len(completion_ids[::10])} with feedback), 60 days of usage in "
                      f"{time.perf_counter() - t0:.0f} s")
                console = stack.base_url.removesuffix("/v1")
                pages = {
                    "Overview": "/console/", "Datasets": "/console/datasets", "Jobs": "/console/jobs",
                    "Jobs (live table)": "/console/jobs/table", "Job": f"/console/jobs/{job_id}",
                    "Models": "/console/models", "Avatars": "/console/avatars", "Avatar": "/console/avatars/coach",
                    "Evaluations": "/console/evals", "Arena": "/console/arena",
                    "Feedback": "/console/feedback", "Completion": f"/console/feedback/{completion_ids[-1]}",
                    "Usage": "/console/usage", "Usage CSV": "/console/usage.csv", "Coach": "/console/coach",
                }
                times = time_pages(console, key, pages, args.repeats)
        print(f"\n{args.repeats} requests per page, one at a time (ms, measured by the client on the same host)")
        print(f"{'page':<20} {'p50':>7} {'p95':>7} {'max':>7}  goal p95 <= {GOAL_MS:.0f} ms")
        worst = 0.0
        for page, values in times.items():
            p95 = pct(values, 95) * 1e3
            worst = max(worst, p95)
            print(f"{page:<20} {statistics.median(values) * 1e3:7.1f} {p95:7.1f} {max(values) * 1e3:7.1f}  "
                  f"{'met' if p95 <= GOAL_MS else 'NOT met'}")
        print(f"worst p95: {worst:.1f} ms ({'met' if worst <= GOAL_MS else 'NOT met'})")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
