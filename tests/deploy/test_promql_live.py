"""Every PromQL expression of the chart — recording rules, alerts, dashboard panels and dashboard
variables — evaluated by a real Prometheus that scrapes the running all-in-one stack, after real
traffic: chat completions (plain and streamed), a request for a model that does not exist (error
outcome), an avatar whose adapter cannot be loaded (fallback to the base model, failed adapter
load), an eval run whose judge grader errors, a fine-tuning job cancelled while it runs and one
that fails. The expressions are read from
the rendered chart (PrometheusRule and dashboard ConfigMaps), and the recording rules are loaded
into that Prometheus."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import sqlalchemy
import yaml
from deploy_helpers import (
    MONITORING_API,
    dashboard_expressions,
    dashboards_from_manifests,
    data_operands,
    engine_url,
    render,
    rule_expressions,
    rules_from_manifests,
    tool,
)
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

SCRAPE_INTERVAL = "2s"

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _targets(stack: Any) -> dict[str, str]:
    """Scrape job name -> host:port of the stack's metrics endpoints."""
    assert stack.worker_metrics_url, "the stack's trainer worker serves /metrics"
    return {"coachforge-services": urlsplit(stack.metrics_url).netloc,
            "coachforge-engine": urlsplit(engine_url(stack.data_dir)).netloc,
            "coachforge-trainer-worker": urlsplit(stack.worker_metrics_url).netloc}


def _send_traffic(stack: Any) -> None:
    client = OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)
    question = [{"role": "user", "content": "Give me one tip for an easy recovery run."}]
    for _ in range(2):  # total latency, tokens, cost
        client.chat.completions.create(model=BASE_MODEL_ID, messages=question, max_tokens=8, temperature=0)
    for _ in range(2):  # time to first token
        chunks = list(client.chat.completions.create(model=BASE_MODEL_ID, messages=question, max_tokens=8,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks
    with pytest.raises(openai.NotFoundError):  # outcome="error"
        client.chat.completions.create(model="no-such-model", messages=question, max_tokens=4)

    # An avatar whose adapter cannot be loaded answers from the base model (fallbacks, adapter load errors).
    from coachforge.trainer.v1 import trainer_pb2
    from coachforge_shared.events import EventPublisher

    tag = secrets.token_hex(4)
    broken = f"ft:{BASE_MODEL_ID}:default:metrics:{tag}"
    publisher = EventPublisher(stack.kafka_bootstrap, "deploy-test")
    try:
        publisher.publish("job.succeeded", trainer_pb2.JobSucceeded(
            job_id=f"ftjob-metrics-{tag}", base_model=BASE_MODEL_ID, fine_tuned_model=broken,
            adapter_uri=str(stack.data_dir / "artifacts" / "default" / "no-such-adapter"), lora_rank=16), "default")
    finally:
        publisher.close()
    deadline = time.monotonic() + 120
    while broken not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "the registry never registered the model"
        time.sleep(0.5)
    root = stack.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    r = httpx.post(f"{root}/v1/avatars", headers=headers,
                   json={"name": f"metrics-{tag}", "model": broken, "fallback": "base"})
    assert r.status_code == 200, r.text
    raw = client.chat.completions.with_raw_response.create(model=f"metrics-{tag}", messages=question, max_tokens=4)
    assert raw.headers["x-coachforge-fallback"].startswith("base")

    # An eval run (runs created and finished, items by outcome, item duration, grader errors): two
    # hand-written answers (a jsonl run, no sampling) graded by a string check and by a judge model
    # that does not exist, so each item's judge result errors (grader errors of type score_model).
    ev = client.evals.create(
        name=f"metrics-{tag}",
        data_source_config={"type": "custom", "include_sample_schema": True, "item_schema": {
            "type": "object", "properties": {"expected": {"type": "string"}}, "required": ["expected"]}},
        testing_criteria=[
            {"type": "string_check", "name": "says rest", "input": "{{sample.output_text}}",
             "reference": "{{item.expected}}", "operation": "ilike"},
            {"type": "score_model", "name": "judge", "model": "no-such-model",
             "input": [{"role": "user", "content": "Grade this answer from 0 to 1: {{sample.output_text}}"}]}])
    run = client.evals.runs.create(ev.id, name="metrics", data_source={
        "type": "jsonl", "source": {"type": "file_content", "content": [
            {"item": {"expected": "rest"}, "sample": {"output_text": answer, "model": "hand-written"}}
            for answer in ("Rest today.", "Run hard intervals.")]}})
    deadline = time.monotonic() + 300
    while (graded := client.evals.runs.retrieve(run.id, eval_id=ev.id)).status not in ("completed", "failed",
                                                                                         "canceled"):
        assert time.monotonic() < deadline, f"eval run {run.id} is still {graded.status}"
        time.sleep(0.5)
    assert graded.status == "completed" and graded.result_counts.errored == 2, graded

    # Two fine-tuning jobs (jobs created, train.requested, jobs finished by status, queue wait):
    # one cancelled while it runs, and one that fails because its training data vanished from
    # storage while it waited in the queue behind the first (a real failure in the worker).
    from polarize.synthetic import generate_examples, to_jsonl

    def upload(seed: int) -> str:
        data = to_jsonl(generate_examples(12, seed=seed)).encode()
        return client.files.create(file=(f"metrics-{seed}.jsonl", data), purpose="fine-tune").id

    def wait_for(job_id: str, statuses: tuple[str, ...]) -> Any:
        deadline = time.monotonic() + 600
        while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in statuses:
            assert time.monotonic() < deadline, f"{job_id} is still {job.status}"
            time.sleep(0.5)
        return job

    running = client.fine_tuning.jobs.create(training_file=upload(11), model=BASE_MODEL_ID,
                                             hyperparameters={"n_epochs": 1}, suffix="metrics")
    wait_for(running.id, ("running", "cancelled", "failed", "succeeded"))
    queued_file = upload(12)
    queued = client.fine_tuning.jobs.create(training_file=queued_file, model=BASE_MODEL_ID,
                                            hyperparameters={"n_epochs": 1}, suffix="metrics")
    engine = sqlalchemy.create_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sqlalchemy.text("SELECT storage_path FROM files WHERE id = :id"),
                                  {"id": queued_file}).scalar_one()
    finally:
        engine.dispose()
    Path(stored).unlink()
    client.fine_tuning.jobs.cancel(running.id)
    assert wait_for(running.id, ("cancelled", "failed", "succeeded")).status == "cancelled"
    failed = wait_for(queued.id, ("cancelled", "failed", "succeeded"))
    assert failed.status == "failed" and failed.error.code == "invalid_training_file", failed.error
    assert "missing from storage" in failed.error.message, failed.error


def _start_prometheus(tmp_path: Path, targets: dict[str, str], rules: dict[str, Any],
                      processes: list[subprocess.Popen[bytes]]) -> str:
    # Evaluate the recording rules as often as the targets are scraped (the chart says 30s).
    for group in rules["groups"]:
        group["interval"] = SCRAPE_INTERVAL
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                   "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
                           for job, target in targets.items()],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([str(tool("promtool")), "check", "config", str(tmp_path / "prometheus.yml")], check=True,
                   capture_output=True)
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    processes.append(subprocess.Popen(
        [str(tool("prometheus")), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        assert processes[-1].poll() is None, (tmp_path / "prometheus.log").read_text()
        assert time.monotonic() < deadline, "Prometheus did not become ready"
        time.sleep(0.2)


def _query(prometheus: str, expr: str) -> list[Any]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body.get('error', body)}"
    return list(body["data"]["result"])


def test_every_rule_and_dashboard_expression_returns_data_from_the_running_stack(
        stack, helm_env: dict[str, str], tmp_path: Path,  # type: ignore[no-untyped-def]
        processes: list[subprocess.Popen[bytes]]) -> None:
    targets = _targets(stack)
    docs = render(helm_env, "--set", "metrics.prometheusRule.enabled=true",
                  "--set", "metrics.prometheusRule.serviceJobRegex=coachforge-(services|trainer-worker)",
                  *MONITORING_API)
    rules = rules_from_manifests(docs)
    boards = dashboards_from_manifests(docs)
    assert len(boards) == 6, sorted(boards)
    expressions = rule_expressions(rules) + [e for board in boards.values() for e in dashboard_expressions(board)]

    prometheus = _start_prometheus(tmp_path, targets, rules, processes)
    _send_traffic(stack)

    # The GPU panels read NVIDIA dcgm-exporter's DCGM_* series, which only exist on GPU nodes: their
    # syntax is checked (every query runs), not their data.
    for _, expr in expressions:
        if "DCGM_" in expr:
            _query(prometheus, expr)
    checks = [(where, operand) for where, expr in expressions if "DCGM_" not in expr
              for operand in data_operands(expr)]
    assert len(checks) >= 60, f"only {len(checks)} operands found"

    # Poll until every operand has data (rates need two scrapes after the traffic, recorded series
    # one more rule evaluation); fail with the list of those that never did.
    deadline = time.monotonic() + 120
    pending = list(checks)
    while True:
        pending = [(where, operand) for where, operand in pending if not _query(prometheus, operand)]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not pending, "expressions without data after traffic:\n" + "\n".join(
        f"  {where}: {operand}" for where, operand in pending)
    # The targets were really scraped: every job is up.
    up = {s["metric"]["job"]: s["value"][1] for s in _query(prometheus, "up")}
    assert up == dict.fromkeys(targets, "1"), up
