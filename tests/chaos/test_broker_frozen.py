"""The broker frozen (SIGSTOP) for longer than the producer's delivery timeout, while chat requests,
a file upload and a fine-tuning job creation go on: every request is answered, the job is accepted,
and once the broker is back every answer is billed exactly once and every event reaches the broker
(the outbox empties). The stack fixture shortens the producer's delivery timeout
(``COACHFORGE_KAFKA_DELIVERY_TIMEOUT_MS``), so that the freeze outlasts it in a short test."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

pytestmark = pytest.mark.stack

FREEZE_MARGIN_S = 7.0


def test_a_frozen_broker_loses_no_answer_no_job_and_no_bill(stack: Any, chaos: Any, frozen: Any) -> None:
    delivery_timeout_s = int(stack.env["COACHFORGE_KAFKA_DELIVERY_TIMEOUT_MS"]) / 1000
    avatar = chaos.avatar()
    warm_up = chaos.chat(avatar, "Warm up.")  # the avatar's route is known before the freeze
    assert warm_up.status_code == 200, warm_up.text

    frozen(chaos.pid("broker"))
    start = time.monotonic()
    answers: list[dict[str, Any]] = [warm_up.json()]
    failures: list[str] = []
    i = 0
    while time.monotonic() - start < delivery_timeout_s + FREEZE_MARGIN_S:
        r = chaos.chat(avatar, f"Give me one tip for run number {i}.")
        i += 1
        if r.status_code == 200:
            answers.append(r.json())
        else:
            failures.append(f"{r.status_code}: {r.text[:200]}")
    upload = chaos.upload_training_file("frozen.jsonl")
    job = chaos.create_job(upload.json()["id"]) if upload.status_code == 200 else None
    frozen_for = time.monotonic() - start
    os.kill(chaos.pid("broker"), signal.SIGCONT)

    assert not failures, failures
    assert upload.status_code == 200, upload.text
    assert job is not None and job.status_code == 200, job.text if job is not None else None
    job_id = job.json()["id"]

    owed = chaos.owed(answers)  # the avatar is new: everything it is billed for is in answers
    billed_after = chaos.wait_billed(avatar, owed)
    drained_after = chaos.outbox_drained()
    time.sleep(3)  # late duplicates would land now
    billed = chaos.usage(avatar)
    # The job's train.requested reached the broker and the job went its way (cancelled here: its
    # training is not what this test is about).
    status = chaos.job(job_id)["status"]
    chaos.cancel(job_id)
    chaos.record("broker frozen", frozen_s=round(frozen_for, 1), delivery_timeout_s=delivery_timeout_s,
                 answered=f"{len(answers) - 1}/{i}", jobs_accepted=1, billed_requests=billed[0] - 1,
                 lost=max(0, owed[0] - billed[0]), doubled=max(0, billed[0] - owed[0]),
                 billed_after_s=round(billed_after, 1), outbox_drained_after_s=round(drained_after, 1))
    assert frozen_for > delivery_timeout_s
    assert answers and billed == owed, (billed, owed)
    assert status in ("validating_files", "queued", "running", "succeeded"), status
