"""What a job's owner is shown when training fails names no server folder: the worker's error
texts lose the models, artifacts and data folders (and any other absolute path), and a base model
missing on the worker (or a model name that is not one folder name) fails the job without saying
where the worker looked; checkpoints are listed without their folder (only internal gRPC calls get it)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.events import publish_in
from coachforge_shared.grpc_server import InternalChannel
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.settings import PlatformSettings
from coachforge_trainer import api
from coachforge_trainer.grpc import _checkpoint_to_proto
from coachforge_trainer.models import Job, JobCheckpoint
from coachforge_trainer.service import TrainerDeps
from coachforge_trainer.settings import TrainerSettings
from coachforge_trainer.worker import Worker


class OutboxOnly:
    """The publisher without a broker: events go to the outbox in the caller's transaction."""

    def publish_in(self, s: Session, event_type: str, payload: Any, tenant_id: str, key: str | None = None) -> str:
        return publish_in(s, event_type, payload, tenant_id, key)


@pytest.fixture
def worker(db: Database, tmp_path: Path) -> Worker:
    create_tenant(db, "acme")
    channel = InternalChannel("127.0.0.1:1", "unused")
    deps = TrainerDeps(db=db, settings=TrainerSettings(), publisher=OutboxOnly(),  # type: ignore[arg-type]
                       dataset=channel, registry=channel)
    platform = PlatformSettings(data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                                artifacts_dir=tmp_path / "artifacts")
    return Worker(deps, platform, "w-err")


def test_error_texts_lose_server_paths(worker: Worker, tmp_path: Path) -> None:
    missing = OSError(2, "No such file or directory", str(tmp_path / "models" / "base" / "config.json"))
    assert worker._public(missing) == "[Errno 2] No such file or directory: '<models>/base/config.json'"
    shown = worker._public(RuntimeError(f"cannot write {tmp_path}/artifacts/acme/ftjob-1/adapter: disk full; "
                                        "see /usr/lib/python3.11/site-packages/torch/x.py"))
    assert shown == "cannot write <artifacts>/acme/ftjob-1/adapter: disk full; see <path>"
    assert len(worker._public(RuntimeError("x" * 10_000))) == 2000


@pytest.mark.parametrize("model", ["base", "../../etc", "a/b"])
def test_a_missing_base_model_fails_the_job_without_naming_the_folder(worker: Worker, db: Database,
                                                                      tmp_path: Path, model: str) -> None:
    job_id = new_id("ftjob")
    with db.session() as s:
        s.add(Job(id=job_id, tenant_id="acme", model=model, status="running", worker_id="w-err",
                  training_file="file-x", n_epochs=1, batch_size=1, learning_rate_multiplier=1.0, seed=1,
                  queued_at=utcnow(), lease_expires_at=utcnow()))
    worker._train(job_id, "acme", threading.Event())
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        status, code, message = job.status, job.error_code, job.error_message or ""
    assert (status, code) == ("failed", "model_unavailable")
    assert message == f"Base model files for {model} are missing on this worker."
    assert str(tmp_path) not in message


def test_checkpoints_are_listed_without_their_server_folder(tmp_path: Path) -> None:
    job = Job(id="ftjob-1", fine_tuned_model="ft:base:acme::1")
    ckpt = JobCheckpoint(id="ftckpt-1", job_id="ftjob-1", step=3, epoch=1.0, train_loss=0.5, valid_loss=0.6,
                         path=str(tmp_path / "artifacts" / "acme" / "ftjob-1" / "checkpoints" / "checkpoint-3"),
                         created_at=utcnow())
    shown = api.checkpoint_to_openai(job, ckpt)
    assert shown["step_number"] == 3 and str(tmp_path) not in json.dumps(shown)
    assert _checkpoint_to_proto(ckpt).path == ""  # a tenant's call
    assert _checkpoint_to_proto(ckpt, with_path=True).path == ckpt.path  # the platform's own services
