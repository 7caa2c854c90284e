"""The stack's PostgreSQL database refusing every connection for ``OUTAGE_S`` seconds (its open
connections cut) while chat requests, their usage events and API reads go on: every answer is a 200
or a 503 with ``Retry-After`` (never a 500), every usage event of an answered request is billed once
the database is back, and every process recovers without a restart (the services answer reads again,
the trainer worker claims a new job)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.stack

OUTAGE_S = 20.0


def test_a_database_outage_loses_nothing_and_heals_without_restarts(stack: Any, chaos: Any) -> None:
    avatar = chaos.avatar()
    warm_up = chaos.chat(avatar, "Warm up.")
    assert warm_up.status_code == 200, warm_up.text
    pids = {program: chaos.pid(program) for program in ("services", "trainer-worker")}
    upload = chaos.upload_training_file("outage.jsonl")
    assert upload.status_code == 200, upload.text

    answers: list[dict[str, Any]] = [warm_up.json()]  # the avatar is new: all it is billed for
    statuses: dict[str, int] = {}
    unexpected: list[str] = []
    i = 0
    with chaos.database_closed():
        start = time.monotonic()
        while time.monotonic() - start < OUTAGE_S:
            for name, response in (
                    ("chat", chaos.chat(avatar, f"One tip for session {i}, please.")),
                    ("jobs", httpx.get(f"{stack.base_url}/fine_tuning/jobs", headers=chaos.headers, timeout=60))):
                key = f"{name} {response.status_code}"
                statuses[key] = statuses.get(key, 0) + 1
                if response.status_code == 200:
                    if name == "chat":
                        answers.append(response.json())
                elif response.status_code != 503 or "retry-after" not in response.headers:
                    unexpected.append(f"{name}: {response.status_code} {response.text[:200]}")
            i += 1
            time.sleep(0.2)
    reopened = time.monotonic()

    # Recovery: reads answered again, then every answered request billed.
    while httpx.get(f"{stack.base_url}/fine_tuning/jobs", headers=chaos.headers, timeout=60).status_code != 200:
        assert time.monotonic() - reopened < 120, "the services did not recover"
        time.sleep(0.2)
    reads_after = time.monotonic() - reopened
    chaos.wait_ready()
    owed = chaos.owed(answers)
    chaos.wait_billed(avatar, owed)
    billed_after = time.monotonic() - reopened
    chaos.outbox_drained()
    time.sleep(3)
    billed = chaos.usage(avatar)

    # The trainer worker recovered too: it claims a job created now.
    job = chaos.create_job(upload.json()["id"])
    assert job.status_code == 200, job.text
    deadline = time.monotonic() + 120
    while (status := chaos.job(job.json()["id"])["status"]) in ("validating_files", "queued"):
        assert time.monotonic() < deadline, "the trainer worker claims no job after the outage"
        time.sleep(0.3)
    claimed_after = time.monotonic() - reopened
    chaos.cancel(job.json()["id"])

    chaos.record("database refusing connections", outage_s=OUTAGE_S, responses=statuses,
                 answered=len(answers) - 1, billed_requests=billed[0] - 1,
                 lost=max(0, owed[0] - billed[0]), doubled=max(0, billed[0] - owed[0]),
                 reads_recovered_after_s=round(reads_after, 1), billed_after_s=round(billed_after, 1),
                 worker_claimed_after_s=round(claimed_after, 1))
    assert not unexpected, unexpected
    assert billed == owed, (billed, owed)
    assert status in ("running", "succeeded"), status
    # Healed in place: no process was restarted.
    assert {program: chaos.pid(program) for program in pids} == pids
