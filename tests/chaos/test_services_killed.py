"""Two trainer workers train two queued jobs at once, and the services process is killed with SIGKILL
when the first job has succeeded but is not registered yet (the services frozen from the job's last
call to them, its ``job.succeeded`` waiting on the broker) while a chat stream is being answered.
supervisord starts the services again; afterwards both jobs are registered
exactly once and serve, and every request answered in full before or after the kill is billed
exactly once. The stream cut by the kill is counted apart: its client got an error, and its tokens,
counted only by the process that died, are not billed.

The second worker is a ``coachforge_trainer.worker`` process with the environment of the stack's own
worker (read from /proc), so both claim from the same database and write to the same artifact store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.stack

JOBS = 2
STREAM_TOKENS = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


class Streams(threading.Thread):
    """Streamed chat completions one after the other on one avatar until stopped: what was answered
    in full (with its usage) and how many were cut after they were sent."""

    def __init__(self, chaos: Any, avatar: str) -> None:
        super().__init__(daemon=True)
        self.chaos, self.avatar = chaos, avatar
        self.complete: list[dict[str, Any]] = []
        self.cut = 0
        self.in_progress = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        body = {"model": self.avatar, "max_tokens": STREAM_TOKENS, "temperature": 0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Describe a week of marathon training, day by day."}]}
        while not self.stop.is_set():
            usage = None
            try:
                with httpx.stream("POST", f"{self.chaos.stack.base_url}/chat/completions", json=body,
                                  headers=self.chaos.headers, timeout=120) as response:
                    if response.status_code != 200:
                        time.sleep(0.5)  # the services are restarting
                        continue
                    for line in response.iter_lines():
                        if line.startswith("data: {"):
                            self.in_progress.set()
                            usage = json.loads(line[6:]).get("usage") or usage
                if usage is None:
                    raise httpx.RemoteProtocolError("stream ended without its usage chunk")
                self.complete.append({"usage": usage})
            except httpx.ConnectError:  # nobody listens: the services are starting again
                time.sleep(0.5)
            except httpx.HTTPError:  # sent, and cut before its end
                self.cut += 1
                time.sleep(0.5)
            finally:
                self.in_progress.clear()


def test_killed_services_lose_and_double_nothing_while_two_workers_train(stack: Any, chaos: Any, frozen: Any,
                                                                          tmp_path: Path) -> None:
    stack_worker = chaos.pid("trainer-worker")
    # One torch thread: two training processes on a small machine with the engine beside them would
    # otherwise spin on each other's cores.
    env = {**_environ(stack_worker), "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "second-worker.log").open("wb")
    second = subprocess.Popen([sys.executable, "-m", "coachforge_trainer.worker", "--metrics-port",
                               str(_free_port())], env=env, stdout=log, stderr=subprocess.STDOUT)
    streams: Streams | None = None
    try:
        upload = chaos.upload_training_file("killed.jsonl", examples=10)  # a job needs 10 usable examples
        assert upload.status_code == 200, upload.text
        jobs = []
        for _ in range(JOBS):
            r = chaos.create_job(upload.json()["id"], batch_size=5)  # two steps
            assert r.status_code == 200, r.text
            jobs.append(r.json()["id"])

        # Both jobs train at once, each held by its own worker.
        deadline = time.monotonic() + 300
        while True:
            rows = chaos.sql("SELECT id, status, worker_id FROM fine_tuning_jobs WHERE id = ANY(%(ids)s)", ids=jobs)
            if [r[1] for r in rows] == ["running"] * JOBS:
                break
            assert second.poll() is None, (tmp_path / "second-worker.log").read_text()[-3000:]
            assert not {r[1] for r in rows} & {"failed", "cancelled", "succeeded"}, rows
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        holders = {r[2] for r in rows}
        assert len(holders) == JOBS and any(h.endswith(f"-{second.pid}") for h in holders), holders

        avatar = chaos.avatar()
        before = chaos.usage(avatar)
        streams = Streams(chaos, avatar)
        streams.start()

        # The services are frozen the moment a job's results file is stored (its last call to them),
        # and killed once that job succeeded: its job.succeeded is on the broker, not yet registered,
        # and a stream is being answered.
        streams.in_progress.wait(timeout=60)
        services = chaos.pid("services")
        deadline = time.monotonic() + 900
        while not (stored := chaos.sql("SELECT filename FROM files WHERE purpose = 'fine-tune-results' "
                                       "AND filename = ANY(%(names)s)", names=[f"{j}-metrics.csv" for j in jobs])):
            assert time.monotonic() < deadline, "no job finished"
            time.sleep(0.01)
        frozen(services)
        first = stored[0][0].removesuffix("-metrics.csv")
        deadline = time.monotonic() + 120
        while chaos.sql("SELECT status FROM fine_tuning_jobs WHERE id = %(id)s", id=first)[0][0] != "succeeded":
            assert time.monotonic() < deadline, "the job did not succeed"
            time.sleep(0.05)
        registered_at_kill = chaos.sql("SELECT count(*) FROM model_versions WHERE job_id = %(id)s", id=first)[0][0]
        os.kill(services, signal.SIGKILL)
        killed = time.monotonic()
        restart_s = chaos.wait_ready()
        assert chaos.pid("services") != services

        # Both jobs finish and are registered exactly once; their models answer.
        deadline = time.monotonic() + 900
        while (finished := {job_id: chaos.job(job_id) for job_id in jobs}) and any(
                j["status"] != "succeeded" for j in finished.values()):
            assert not any(j["status"] in ("failed", "cancelled") for j in finished.values()), finished
            assert time.monotonic() < deadline, finished
            time.sleep(0.5)
        deadline = time.monotonic() + 120
        while len(versions := chaos.sql("SELECT job_id, count(*) FROM model_versions WHERE job_id = ANY(%(ids)s) "
                                        "GROUP BY job_id", ids=jobs)) < JOBS:
            assert time.monotonic() < deadline, versions
            time.sleep(0.5)
        registered_after = time.monotonic() - killed
        for job in finished.values():
            chaos.wait_listed(job["fine_tuned_model"])
            answer = chaos.chat(job["fine_tuned_model"], "Easy run today?")
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-coachforge-model"] == job["fine_tuned_model"]

        streams.stop.set()
        streams.join(timeout=180)
        owed = tuple(b + n for b, n in zip(before, chaos.owed(streams.complete), strict=True))
        chaos.wait_billed(avatar, owed)
        chaos.outbox_drained()
        time.sleep(3)
        billed = chaos.usage(avatar)
        chaos.record("services SIGKILLed mid-stream and mid-registration, two workers training",
                     jobs_trained_at_once=JOBS, registered_when_killed=registered_at_kill,
                     versions_per_job=sorted(count for _, count in versions),
                     streams_answered_in_full=len(streams.complete), streams_cut_by_the_kill=streams.cut,
                     billed_requests=billed[0] - before[0], lost=max(0, owed[0] - billed[0]),
                     doubled=max(0, billed[0] - owed[0]), services_ready_after_s=round(restart_s, 1),
                     both_registered_after_s=round(registered_after, 1))
        assert [count for _, count in versions] == [1] * JOBS
        assert streams.cut >= 1 and streams.complete
        assert billed == owed, (billed, owed)
        assert chaos.pid("trainer-worker") == stack_worker  # only the services died
    finally:
        if streams is not None:
            streams.stop.set()
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=60)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait()
        log.close()
