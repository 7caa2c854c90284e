"""Forged events on a real broker: a ``job.succeeded`` naming an adapter outside the tenant's job
artifact folder (another tenant's, the server's files, a symlink out, a foreign bucket) and a
``usage.recorded`` with negative counts or costs are dead-lettered at once with a clear error,
and change nothing; the real ones behind them are handled."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from sqlalchemy import func, select

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.inference.v1 import inference_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_inference.models import UsageDaily
from coachforge_inference.usage import on_usage_recorded
from coachforge_registry import service
from coachforge_registry.service import RegistryDeps, check_job_artifact
from coachforge_registry.settings import RegistrySettings
from coachforge_shared import dead_letters
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, InvalidEvent, encode, ensure_topics

BASE = "SmolLM2-135M-Instruct"


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> RegistryDeps:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    return RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE]), artifacts_dir=tmp_path / "store",
                        platform_models_dir=tmp_path / "models", job_artifacts_dir=tmp_path / "artifacts")


@pytest.fixture
def topic(broker: str) -> str:
    ensure_topics(broker)
    name = f"test-forged-{secrets.token_hex(4)}"
    ensure_topics(broker, [name], partitions=1)
    return name


@pytest.fixture
def consumers() -> Iterator[list[EventConsumer]]:
    started: list[EventConsumer] = []
    yield started
    for consumer in started:
        consumer.stop()


def _send(broker: str, topic: str, *envelopes: Envelope) -> None:
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        for env in envelopes:
            producer.send(topic, value=env.SerializeToString(), key=env.tenant_id.encode()).get(timeout=30)
    finally:
        producer.close()


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def _job(job_id: str, adapter_uri: str, tenant: str = "acme") -> Envelope:
    return encode("job.succeeded", trainer_pb2.JobSucceeded(
        job_id=job_id, base_model=BASE, fine_tuned_model=f"ft:{BASE}:{tenant}:x:{job_id}", adapter_uri=adapter_uri,
        lora_rank=16, target_modules=["q_proj"]), tenant)


def test_adapter_paths_outside_the_tenants_job_folder_are_refused(deps: RegistryDeps, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    (root / "acme" / "ftjob-1").mkdir(parents=True)
    (root / "globex" / "ftjob-9").mkdir(parents=True)
    (root / "acme" / "escape").symlink_to(root / "globex" / "ftjob-9")
    check_job_artifact(deps, "acme", str(root / "acme" / "ftjob-1"))
    check_job_artifact(deps, "acme", str(root / "acme" / "ftjob-2"))  # not written (yet): its facts only
    for uri, reason in ((str(root / "globex" / "ftjob-9"), "outside"), ("/etc", "outside"),
                        (str(root / "acme" / ".." / "globex" / "ftjob-9"), "outside"),
                        (str(root / "acme" / "escape"), "outside"), (str(root), "outside"),
                        ("acme/ftjob-1", "outside"), ("s3://someone-elses-bucket/adapter", "scheme"),
                        (f"file://{root}/acme/ftjob-1", "scheme"), ("", "no adapter")):
        with pytest.raises(InvalidEvent) as err:
            check_job_artifact(deps, "acme", uri)
        assert reason in str(err.value), uri


def test_forged_events_are_dead_lettered_at_once(broker: str, deps: RegistryDeps, topic: str, tmp_path: Path,
                                                 consumers: list[EventConsumer]) -> None:
    calls: list[str] = []

    def registry(s: Any, env: Envelope, ev: Any) -> Any:
        calls.append(ev.job_id)
        return service.on_job_succeeded(deps, s, env, ev)

    group = f"forged-{secrets.token_hex(4)}"
    consumer = EventConsumer(broker, group, [topic], registry, deps.db)
    consumers.append(consumer)
    consumer.start()
    root = tmp_path / "artifacts"
    forged = [_job("ftjob-steal", str(root / "globex" / "ftjob-9")), _job("ftjob-etc", "/etc"),
              _job("ftjob-bucket", "s3://other-bucket/adapter")]
    real = _job("ftjob-real", str(root / "acme" / "ftjob-real"))
    _send(broker, topic, *forged, real)
    _until(lambda: "ftjob-real" in calls, "the real event after the forged ones")
    _until(lambda: len(dead_letters.read(broker, consumer=group)) == 3, "three dead letters")

    assert calls == ["ftjob-steal", "ftjob-etc", "ftjob-bucket", "ftjob-real"]  # each forged one tried once
    letters = dead_letters.read(broker, consumer=group)
    assert [(dl.letter.event_id, dl.letter.attempts, dl.letter.error_type) for dl in letters] == [
        (env.event_id, 1, "InvalidEvent") for env in forged]
    assert "outside the job artifact store of tenant 'acme'" in letters[0].letter.error_message
    assert "has a scheme" in letters[2].letter.error_message
    assert [m.id for m in service.list_models(deps, "acme")] == [BASE, f"ft:{BASE}:acme:x:ftjob-real"]


def test_usage_with_negative_counts_or_costs_is_dead_lettered(broker: str, db: Database, topic: str,
                                                              consumers: list[EventConsumer]) -> None:
    create_tenant(db, "acme")
    group = f"usage-{secrets.token_hex(4)}"
    consumer = EventConsumer(broker, group, [topic], on_usage_recorded, db)
    consumers.append(consumer)
    consumer.start()

    def usage(prompt: int, completion: int, cost: float) -> Envelope:
        return encode("usage.recorded", inference_pb2.UsageRecorded(
            model=BASE, prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost), "acme")

    forged = [usage(-1_000_000, 5, 0.01), usage(5, -7, 0.01), usage(5, 5, -100.0), usage(5, 5, float("nan")),
              usage(5, 5, float("-inf"))]
    _send(broker, topic, *forged, usage(10, 20, 0.5))

    def totals() -> tuple[int, int, int, float] | None:
        with db.session() as s:
            row = s.execute(select(func.sum(UsageDaily.messages), func.sum(UsageDaily.input_tokens),
                                   func.sum(UsageDaily.output_tokens), func.sum(UsageDaily.cost_usd))).one()
            return None if row[0] is None else (int(row[0]), int(row[1]), int(row[2]), float(row[3]))

    _until(lambda: totals() is not None, "the real usage event")
    _until(lambda: len(dead_letters.read(broker, consumer=group)) == len(forged), "the forged ones dead-lettered")
    assert totals() == (1, 10, 20, 0.5)  # the bill holds only the real request
    letters = dead_letters.read(broker, consumer=group)
    assert {(dl.letter.error_type, dl.letter.attempts) for dl in letters} == {("InvalidEvent", 1)}
    assert "negative token counts" in letters[0].letter.error_message
    assert "invalid cost_usd" in letters[2].letter.error_message
