"""Every PromQL expression of the chart — recording rules, alerts, dashboard panels and dashboard
variables — evaluated by a real Prometheus that scrapes the running all-in-one stack, after real
traffic: chat completions (plain and streamed), a request for a model that does not exist (error
outcome), an avatar whose adapter cannot be loaded (fallback to the base model, failed adapter
load) and a fine-tuning job cancelled right away. The expressions are read from the rendered chart
(PrometheusRule and dashboard ConfigMaps), and the recording rules are loaded into that Prometheus."""

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
import yaml
from deploy_helpers import (
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

#: Operands that have no series until something happens that this test cannot cheaply cause in a
#: shared stack. Each is still sent to Prometheus (it must parse and evaluate); it may be empty.
NO_DATA_WITHOUT = {
    'status="failed"': "needs a failed fine-tuning job: training failures cannot be provoked without "
                       "breaking a worker of the shared stack",
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _targets(stack: Any) -> dict[str, str]:
    """Scrape job name -> host:port of the stack's metrics endpoints."""
    assert stack.worker_metrics_url, "the stack's trainer worker serves /metrics"
    return {"coachforge-services": urlsplit(stack.base_url).netloc,
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
            adapter_uri=str(stack.data_dir / "no-such-adapter"), lora_rank=16), "default")
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

    # A fine-tuning job, cancelled at once (jobs created, train.requested, jobs finished, queue wait).
    from coachforge_shared.coach.synthetic import generate_examples, to_jsonl

    uploaded = client.files.create(file=("metrics.jsonl", to_jsonl(generate_examples(12, seed=11)).encode()),
                                   purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL_ID,
                                         hyperparameters={"n_epochs": 1}, suffix="metrics")
    client.fine_tuning.jobs.cancel(job.id)
    deadline = time.monotonic() + 600
    while client.fine_tuning.jobs.retrieve(job.id).status not in ("cancelled", "failed", "succeeded"):
        assert time.monotonic() < deadline, "the cancelled job never stopped"
        time.sleep(1)


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
                  "--set", "metrics.prometheusRule.serviceJobRegex=coachforge-(services|trainer-worker)")
    rules = rules_from_manifests(docs)
    boards = dashboards_from_manifests(docs)
    assert len(boards) == 5, sorted(boards)
    expressions = rule_expressions(rules) + [e for board in boards.values() for e in dashboard_expressions(board)]

    prometheus = _start_prometheus(tmp_path, targets, rules, processes)
    _send_traffic(stack)

    checks: list[tuple[str, str, str | None]] = []  # where, operand, why it may be empty
    for where, expr in expressions:
        for operand in data_operands(expr):
            reason = next((why for key, why in NO_DATA_WITHOUT.items() if key in operand), None)
            checks.append((where, operand, reason))
    assert len(checks) >= 60, f"only {len(checks)} operands found"

    # Poll until every operand has data (rates need two scrapes after the traffic, recorded series
    # one more rule evaluation); fail with the list of those that never did.
    deadline = time.monotonic() + 120
    pending = list(checks)
    while True:
        pending = [(where, operand, reason) for where, operand, reason in pending
                   if not _query(prometheus, operand) and reason is None]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    for _where, operand, reason in checks:  # the excused ones still parse and evaluate
        if reason is not None:
            _query(prometheus, operand)
    assert not pending, "expressions without data after traffic:\n" + "\n".join(
        f"  {where}: {operand}" for where, operand, _ in pending)
    # The targets were really scraped: every job is up.
    up = {s["metric"]["job"]: s["value"][1] for s in _query(prometheus, "up")}
    assert up == dict.fromkeys(targets, "1"), up
