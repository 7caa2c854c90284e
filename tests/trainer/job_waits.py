"""Waiting on the running stack's fine-tuning jobs and model registry, for the trainer's stack tests
(imported by its basename: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from openai import OpenAI

FINAL = ("succeeded", "failed", "cancelled")


def finished(client: OpenAI, job_id: str, timeout: float = 900, poll: float = 0.5) -> Any:
    """The job once it reached a final status (whichever: the caller asserts which it wanted)."""
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in FINAL:
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(poll)
    return job


def registered(http: httpx.Client, model: str, timeout: float = 60) -> dict[str, Any]:
    """The registry's version of ``model`` once it is registered (``GET /v1/models/{model}``)."""
    deadline = time.monotonic() + timeout
    while (r := http.get(f"/v1/models/{model}")).status_code != 200:
        assert time.monotonic() < deadline, f"{model} never registered"
        time.sleep(0.5)
    return dict(r.json())
