"""A killed evaluator mid-run, on the real stack: a second evaluator process (``coachforge serve
evaluator``, sharing the stack's database, broker and inference) starts a run and is killed with
SIGKILL after a few items; the stack's own evaluator takes the run over when the dead process's
lease expires and finishes it with every item graded exactly once."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

ITEMS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _graded(run: object) -> int:
    counts = run.result_counts  # type: ignore[attr-defined]
    return int(counts.passed + counts.failed + counts.errored)


def test_a_run_survives_its_evaluator_being_killed(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    http_port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "DATABASE_URL": stack.database_url, "COACHFORGE_DATA_DIR": str(tmp_path / "data"),
           "COACHFORGE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "COACHFORGE_INTERNAL_TOKEN": stack.internal_token,
           "COACHFORGE_GRPC_TARGET": stack.grpc_target,  # inference and the registry: the stack's
           "COACHFORGE_EVALUATOR_RUN_CONCURRENCY": "1", "COACHFORGE_EVALUATOR_LEASE_SECONDS": "4",
           # A group of its own, so that its joining and dying do not rebalance the stack's evaluators.
           "COACHFORGE_EVALUATOR_CONSUMER_GROUP": f"evaluator-doomed-{secrets.token_hex(3)}"}
    log = tmp_path / "doomed.log"
    with log.open("wb") as out:
        doomed = subprocess.Popen([str(Path(sys.executable).parent / "coachforge"), "serve", "evaluator", "--host",
                                   "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                                   "--metrics-port", str(_free_port())],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not _ready(http_port):
            assert doomed.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        doomed_client = OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=stack.api_key, max_retries=0,
                               timeout=120)
        ev = doomed_client.evals.create(name="crash", data_source_config={
            "type": "custom", "item_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "include_sample_schema": True}, testing_criteria=[
            {"type": "string_check", "name": "non-empty", "input": "{{sample.output_text}}", "reference": "",
             "operation": "ne"}])  # type: ignore[list-item]
        # Created through the doomed process, which is woken and claims it at once; the stack's evaluator,
        # told by the event, may win that race: then the run is cancelled and another one made.
        for _ in range(5):
            run = doomed_client.evals.runs.create(ev.id, data_source={
                "type": "completions", "model": BASE_MODEL_ID,
                "input_messages": {"type": "template", "template": [
                    {"role": "user", "content": "Count from {{item.n}} to 100 in words."}]},
                "sampling_params": {"temperature": 0, "max_completion_tokens": 48},
                "source": {"type": "file_content", "content": [{"item": {"n": i}} for i in range(ITEMS)]}})
            holder = _holder(stack.database_url, run.id)
            if holder.endswith(f":{doomed.pid}"):
                break
            doomed_client.evals.runs.cancel(run.id, eval_id=ev.id)
        else:
            raise AssertionError("the doomed evaluator never held its run")
        client = OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120)
        deadline = time.monotonic() + 300
        while _graded(client.evals.runs.retrieve(run.id, eval_id=ev.id)) < 2:
            assert time.monotonic() < deadline, "the doomed evaluator graded nothing"
            time.sleep(0.2)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        killed_at = _graded(client.evals.runs.retrieve(run.id, eval_id=ev.id))
        assert killed_at < ITEMS, "the run finished before the kill; make it slower"

        deadline = time.monotonic() + 600
        done = client.evals.runs.retrieve(run.id, eval_id=ev.id)
        while done.status not in ("completed", "failed", "canceled"):
            assert time.monotonic() < deadline, f"not taken over: {done.status}, {_graded(done)} graded"
            time.sleep(1)
            done = client.evals.runs.retrieve(run.id, eval_id=ev.id)
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
    assert done.status == "completed"
    assert done.result_counts.total == ITEMS and _graded(done) == ITEMS  # none lost, none counted twice
    assert done.per_model_usage[0].invocation_count == ITEMS
    items = list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100))
    assert sorted(i.datasource_item_id for i in items) == list(range(ITEMS))
    metrics = httpx.get(stack.metrics_url).text
    resumed = [line for line in metrics.splitlines() if line.startswith("coachforge_eval_runs_resumed_total ")]
    assert resumed and float(resumed[0].split()[1]) >= 1


def _holder(database_url: str, run_id: str, timeout: float = 30) -> str:
    """The worker that claimed the run (``host:pid``), once one has."""
    engine = sqlalchemy.create_engine(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                worker = conn.execute(sqlalchemy.text("SELECT worker_id FROM eval_runs WHERE id = :id"),
                                      {"id": run_id}).scalar()
            if worker:
                return str(worker)
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"nobody claimed {run_id}")


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
