"""Trainer worker: a member of the ``trainer-workers`` consumer group that claims queued jobs
from ``train.requested`` and runs LoRA SFT on them, one job at a time.

Run it as ``coachforge-trainer-worker`` (or ``python -m coachforge_trainer.worker``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from datetime import timedelta
from types import FrameType
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.dataset.v1 import dataset_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_shared.bootstrap import internal_token
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, EventPublisher
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors
from coachforge_shared.ids import utcnow
from coachforge_shared.logging import configure_logging, get_logger
from coachforge_shared.settings import PlatformSettings
from coachforge_trainer.metrics import JOBS_FINISHED, STEP_SECONDS, TOKENS_PER_SECOND
from coachforge_trainer.models import Job
from coachforge_trainer.service import TrainerDeps, add_event
from coachforge_trainer.settings import TrainerSettings

log = get_logger("coachforge.trainer.worker")


def fine_tuned_name(job: Job) -> str:
    """``ft:<base>:<tenant>:<suffix>:<job id tail>``, like OpenAI's fine-tuned model names."""
    return f"ft:{job.model}:{job.tenant_id}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')[:8]}"


class Worker:
    def __init__(self, deps: TrainerDeps, platform: PlatformSettings, worker_id: str) -> None:
        self.deps = deps
        self.platform = platform
        self.worker_id = worker_id
        self.shutting_down = threading.Event()

    # -- claiming -----------------------------------------------------------------------------
    def handle(self, s: Session, env: Envelope, payload: trainer_pb2.TrainRequested) -> Any:
        """Claim the job inside the event's transaction; train after it committed."""
        job = s.scalar(select(Job).where(Job.id == payload.job_id, Job.tenant_id == env.tenant_id)
                       .with_for_update())
        if job is None or job.status != "queued":
            log.info("skipping job", job_id=payload.job_id, status=job.status if job else None)
            return None
        job.status = "running"
        job.worker_id = self.worker_id
        job.started_at = utcnow()
        add_event(s, job.id, f"Fine-tuning job started on worker {self.worker_id}.")
        job_id, tenant_id = job.id, job.tenant_id
        return lambda: self.run(job_id, tenant_id)

    # -- running ------------------------------------------------------------------------------
    def _load_examples(self, tenant_id: str, file_id: str) -> list[dict[str, Any]]:
        with typed_rpc_errors():
            chunks = self.deps.dataset_stub().GetFileContent(
                dataset_pb2.GetFileRequest(file_id=file_id), metadata=self.deps.dataset.metadata(tenant_id),
                timeout=300)
            content = b"".join(c.data for c in chunks)
        return [json.loads(line) for line in content.splitlines() if line.strip()]

    def _finish(self, job_id: str, tenant_id: str, status: str, message: str, *, level: str = "info",
                error_code: str | None = None, **fields: Any) -> None:
        with self.deps.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.status = status
            job.finished_at = utcnow()
            job.error_code = error_code
            job.error_message = message if status == "failed" else None
            for key, value in fields.items():
                setattr(job, key, value)
            add_event(s, job_id, message, level=level)
            if status != "succeeded":
                event = "job.failed" if status == "failed" else "job.cancelled"
                self.deps.publisher.publish(event, trainer_pb2.JobFinished(
                    job_id=job_id, status=trainer_pb2.JOB_STATUS_FAILED if status == "failed"
                    else trainer_pb2.JOB_STATUS_CANCELLED, error_message=message), tenant_id, key=job_id)
        JOBS_FINISHED.labels(status).inc()

    def _requeue(self, job_id: str, tenant_id: str) -> None:
        with self.deps.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.status, job.worker_id, job.started_at = "queued", None, None
            add_event(s, job_id, "Worker shut down during training; the job was queued again.", level="warn")
            self.deps.publisher.publish("train.requested", trainer_pb2.TrainRequested(job_id=job_id), tenant_id,
                                        key=job_id)

    def run(self, job_id: str, tenant_id: str) -> None:
        from coachforge_trainer.sft import Progress, TrainingCancelled, TrainParams, run_sft

        with self.deps.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
        log.info("training", job_id=job_id, model=job.model, epochs=job.n_epochs)
        base_dir = self.platform.models_dir / job.model
        if not (base_dir / "config.json").exists():
            self._finish(job_id, tenant_id, "failed", f"Base model files for {job.model} are missing on this "
                         f"worker ({base_dir}).", level="error", error_code="model_unavailable")
            return
        try:
            examples = self._load_examples(tenant_id, job.training_file)
        except Exception as err:
            self._finish(job_id, tenant_id, "failed", f"Could not read the training file: {err}", level="error",
                         error_code="invalid_training_file")
            return
        st = self.deps.settings
        params = TrainParams(n_epochs=job.n_epochs, batch_size=job.batch_size,
                             learning_rate=st.base_learning_rate * job.learning_rate_multiplier,
                             lora_r=st.lora_r, lora_alpha=st.lora_alpha, lora_dropout=st.lora_dropout,
                             max_length=st.max_length, seed=job.seed)
        last = {"t": time.monotonic(), "step": 0}

        def on_progress(p: Progress) -> None:
            now = time.monotonic()
            if p.step > last["step"]:
                STEP_SECONDS.observe((now - last["t"]) / (p.step - last["step"]))
            last.update(t=now, step=p.step)
            TOKENS_PER_SECOND.set(p.tokens_per_second)
            loss = f"{p.train_loss:.4f}" if p.train_loss is not None else "n/a"
            data = {"step": p.step, "total_steps": p.total_steps, "epoch": p.epoch, "train_loss": p.train_loss,
                    "learning_rate": p.learning_rate, "tokens_per_second": p.tokens_per_second,
                    "eta_seconds": p.eta_seconds}
            with self.deps.db.session() as s:
                row = s.get(Job, job_id)
                assert row is not None
                if p.eta_seconds is not None:
                    row.estimated_finish = utcnow() + timedelta(seconds=p.eta_seconds)
                add_event(s, job_id, f"Step {p.step}/{p.total_steps}: training loss={loss}", type="metrics",
                          data=data)
            self.deps.publisher.publish("job.progress", trainer_pb2.JobProgress(
                job_id=job_id, step=p.step, total_steps=p.total_steps, epoch=p.epoch,
                train_loss=p.train_loss or 0.0, tokens_per_second=p.tokens_per_second,
                eta_seconds=p.eta_seconds or 0.0), tenant_id, key=job_id)

        def should_cancel() -> bool:
            if self.shutting_down.is_set():
                return True
            with self.deps.db.session() as s:
                return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

        out_dir = self.platform.resolved_artifacts_dir / tenant_id / job_id
        try:
            result = run_sft(base_dir, examples, out_dir, params, on_progress=on_progress,
                             should_cancel=should_cancel)
        except TrainingCancelled:
            if self.shutting_down.is_set():
                self._requeue(job_id, tenant_id)
            else:
                self._finish(job_id, tenant_id, "cancelled", "Job cancelled.")
            return
        except Exception as err:
            log.exception("training failed", job_id=job_id)
            self._finish(job_id, tenant_id, "failed", f"Training failed: {type(err).__name__}: {err}",
                         level="error", error_code="training_failed")
            return
        name = fine_tuned_name(job)
        with self.deps.db.session() as s:
            row = s.get(Job, job_id)
            assert row is not None
            row.status, row.finished_at = "succeeded", utcnow()
            row.fine_tuned_model, row.trained_tokens = name, result.trained_tokens
            row.adapter_uri, row.device = str(result.adapter_dir), result.device
            add_event(s, job_id, f"New fine-tuned model created: {name}")
            add_event(s, job_id, "The job has successfully completed.")
            self.deps.publisher.publish("job.succeeded", trainer_pb2.JobSucceeded(
                job_id=job_id, base_model=job.model, fine_tuned_model=name, adapter_uri=str(result.adapter_dir),
                trained_tokens=result.trained_tokens, lora_rank=result.lora_r,
                target_modules=result.target_modules, final_loss=result.final_loss or 0.0,
                training_file=job.training_file), tenant_id, key=job_id)
        JOBS_FINISHED.labels("succeeded").inc()
        log.info("job succeeded", job_id=job_id, model=name, tokens=result.trained_tokens, steps=result.steps)


def main() -> None:
    platform = PlatformSettings()
    settings = TrainerSettings()
    configure_logging(platform.log_level, json=platform.log_json)
    token = internal_token(platform)
    db = Database(platform.resolved_database_url)
    publisher = EventPublisher(platform.kafka_bootstrap, "trainer-worker")
    deps = TrainerDeps(db=db, settings=settings, publisher=publisher,
                       dataset=InternalChannel(settings.dataset_grpc_target or platform.grpc_target, token),
                       registry=InternalChannel(settings.registry_grpc_target or platform.grpc_target, token))
    worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    worker = Worker(deps, platform, worker_id)
    consumer = EventConsumer(platform.kafka_bootstrap, settings.consumer_group, ["train.requested"], worker.handle,
                             db, max_poll_records=1, max_poll_interval_ms=24 * 3600 * 1000)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("worker stopping", signal=signal.Signals(signum).name)
        worker.shutting_down.set()
        consumer.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("trainer worker ready", worker_id=worker_id, models_dir=str(platform.models_dir))
    try:
        consumer.run()
    finally:
        publisher.close()
        db.dispose()


if __name__ == "__main__":
    main()
