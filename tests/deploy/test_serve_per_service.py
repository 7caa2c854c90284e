"""``coachforge migrate`` and ``coachforge serve <service>``: the entry points the Kubernetes images run.

Every service runs in its own process, as in the chart: one PostgreSQL database, the broker, and
the all-in-one stack's vLLM engine; each service reaches the others over gRPC at the addresses the
chart sets (``COACHFORGE_<SVC>_<OTHER>_GRPC_TARGET``). A chat completion then goes through the
inference process, which resolves the model in the registry process."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from deploy_helpers import engine_url
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

COACHFORGE = str(Path(sys.executable).parent / "coachforge")
SERVICES = ("dataset", "trainer", "registry", "inference", "coach", "evaluator", "webhooks")
GRPC_NAMES = {"dataset": "coachforge.dataset.v1.DatasetService", "trainer": "coachforge.trainer.v1.TrainerService",
              "registry": "coachforge.registry.v1.RegistryService",
              "inference": "coachforge.inference.v1.InferenceService", "coach": "coachforge.coach.v1.CoachService",
              "evaluator": "coachforge.evaluator.v1.EvaluatorService",
              "webhooks": "coachforge.webhooks.v1.WebhooksService"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> dict[str, bool]:
    checks: dict[str, bool] = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            r = httpx.get(url, timeout=5)
            checks = r.json()["checks"]
            if r.status_code == 200:
                return checks
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready: {checks}\n{log.read_text()[-3000:]}")


def test_each_service_runs_alone_and_they_work_together(stack, scratch_postgres: str, broker: str,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path, processes: list[subprocess.Popen[bytes]],
                                                        model_cache_dir: Path) -> None:
    ports = {name: (_free_port(), _free_port()) for name in SERVICES}
    metrics_ports = {name: _free_port() for name in SERVICES}
    api_key = "cf-k8s-" + secrets.token_hex(16)
    target = {name: f"127.0.0.1:{grpc_port}" for name, (_, grpc_port) in ports.items()}
    env = {
        **os.environ,
        "DATABASE_URL": scratch_postgres,
        "COACHFORGE_DATA_DIR": str(tmp_path / "data"),
        "COACHFORGE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "COACHFORGE_MODELS_DIR": str(model_cache_dir),
        "COACHFORGE_KAFKA_BOOTSTRAP": broker,
        "COACHFORGE_INTERNAL_TOKEN": secrets.token_hex(16),
        "COACHFORGE_API_KEY": api_key,
        "COACHFORGE_TRAINER_DATASET_GRPC_TARGET": target["dataset"],
        "COACHFORGE_TRAINER_REGISTRY_GRPC_TARGET": target["registry"],
        "COACHFORGE_INFERENCE_REGISTRY_GRPC_TARGET": target["registry"],
        "COACHFORGE_INFERENCE_ENGINE_URL": engine_url(stack.data_dir),
        "COACHFORGE_INFERENCE_ENGINE_API_KEY": stack.engine_api_key,
        "COACHFORGE_COACH_INFERENCE_GRPC_TARGET": target["inference"],
        "COACHFORGE_COACH_REGISTRY_GRPC_TARGET": target["registry"],
        "COACHFORGE_EVALUATOR_INFERENCE_GRPC_TARGET": target["inference"],
        "COACHFORGE_EVALUATOR_REGISTRY_GRPC_TARGET": target["registry"],
        "COACHFORGE_EVALUATOR_DATASET_GRPC_TARGET": target["dataset"],
        "COACHFORGE_REGISTRY_INFERENCE_GRPC_TARGET": target["inference"],
        "COACHFORGE_REGISTRY_DATASET_GRPC_TARGET": target["dataset"],
        "COACHFORGE_REGISTRY_TRAINER_GRPC_TARGET": target["trainer"],
        "COACHFORGE_REGISTRY_EVALUATOR_GRPC_TARGET": target["evaluator"],
        "COACHFORGE_REGISTRY_BASE_MODELS": f'["{BASE_MODEL_ID}"]',
        "HF_HUB_OFFLINE": "1",
    }
    # The pre-install Job's command; twice, as on every upgrade.
    for _ in range(2):
        subprocess.run([COACHFORGE, "migrate"], env=env, check=True, timeout=300, capture_output=True)

    logs: dict[str, Path] = {}
    for name, (http_port, grpc_port) in ports.items():
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("wb") as out:
            processes.append(subprocess.Popen(
                [COACHFORGE, "serve", name, "--host", "127.0.0.1", "--http-port", str(http_port),
                 "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_ports[name])], env=env, stdout=out,
                stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 300
    for (name, (http_port, grpc_port)), proc in zip(ports.items(), processes, strict=True):
        checks = _wait_ready(f"http://127.0.0.1:{http_port}/ready", proc, logs[name], deadline)
        assert checks["database"] and checks["broker"] and checks["grpc"], checks
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest(service=GRPC_NAMES[name]), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
            for other in SERVICES:  # only its own service is mounted
                if other != name:
                    with pytest.raises(grpc.RpcError) as err:
                        health.Check(health_pb2.HealthCheckRequest(service=GRPC_NAMES[other]), timeout=5)
                    assert err.value.code() == grpc.StatusCode.NOT_FOUND
        metrics_port = metrics_ports[name]  # metrics on their own port, not the API's
        assert "coachforge_grpc_requests_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert httpx.get(f"http://127.0.0.1:{http_port}/metrics").status_code == 404

    # Only its own routes: the registry answers /v1/models, the dataset process does not.
    headers = {"Authorization": f"Bearer {api_key}"}
    registry_http, dataset_http = ports["registry"][0], ports["dataset"][0]
    models = httpx.get(f"http://127.0.0.1:{registry_http}/v1/models", headers=headers).json()
    assert [m["id"] for m in models["data"]] == [BASE_MODEL_ID]
    assert httpx.get(f"http://127.0.0.1:{dataset_http}/v1/models", headers=headers).status_code == 404

    # The migrate command registered COACHFORGE_API_KEY; inference resolves the model in the registry process.
    client = OpenAI(base_url=f"http://127.0.0.1:{ports['inference'][0]}/v1", api_key=api_key, max_retries=0,
                    timeout=120)
    answer = client.chat.completions.create(model=BASE_MODEL_ID, max_tokens=8, temperature=0,
                                            messages=[{"role": "user", "content": "Say hi."}])
    assert answer.model == BASE_MODEL_ID and answer.choices[0].message.content

    # The trainer process validates a job against the dataset and registry processes over gRPC.
    uploaded = httpx.post(f"http://127.0.0.1:{dataset_http}/v1/files", headers=headers, data={"purpose": "fine-tune"},
                          files={"file": ("one.jsonl", b'{"messages": [{"role": "user", "content": "hi"}, '
                                                       b'{"role": "assistant", "content": "hello"}]}\n')})
    assert uploaded.status_code == 200, uploaded.text
    job = httpx.post(f"http://127.0.0.1:{ports['trainer'][0]}/v1/fine_tuning/jobs", headers=headers,
                     json={"training_file": uploaded.json()["id"], "model": "no-such-model"})
    assert job.status_code == 400 and job.json()["error"]["param"] == "model", job.text

    # The evaluator process checks a run's model in the registry process over gRPC.
    evaluator_http = f"http://127.0.0.1:{ports['evaluator'][0]}"
    created = httpx.post(f"{evaluator_http}/v1/evals", headers=headers, json={
        "name": "per-service", "data_source_config": {"type": "custom", "item_schema": {
            "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            "include_sample_schema": True},
        "testing_criteria": [{"type": "json_check", "name": "json", "input": "{{sample.output_text}}"}]})
    assert created.status_code == 200, created.text
    run = httpx.post(f"{evaluator_http}/v1/evals/{created.json()['id']}/runs", headers=headers, json={
        "data_source": {"type": "completions", "model": "no-such-model",
                        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
                        "source": {"type": "file_content", "content": [{"item": {"q": "hi"}}]}}})
    assert run.status_code == 400 and run.json()["error"]["param"] == "data_source.model", run.text
