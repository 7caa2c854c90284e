"""The registry's calls to other services for retraining an avatar, over gRPC: a dataset version
from the dataset service, a fine-tuning job from the trainer, eval runs and their comparison from
the evaluator, and the count of new gold completions from inference."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors

JOB_DONE = {trainer_pb2.JOB_STATUS_SUCCEEDED: "succeeded", trainer_pb2.JOB_STATUS_FAILED: "failed",
            trainer_pb2.JOB_STATUS_CANCELLED: "cancelled"}
"""Final job statuses, by the name the retrain run reports."""
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier", "lora_r", "lora_alpha", "lora_dropout",
                   "target_modules", "max_length", "early_stopping_patience", "checkpoint_steps")


@dataclass
class RetrainClients:
    """The stubs a retrain needs; each call runs on behalf of the avatar's tenant."""

    dataset: InternalChannel
    trainer: InternalChannel
    evaluator: InternalChannel
    inference: InternalChannel
    timeout_s: float = 600.0

    def build_dataset(self, tenant_id: str, request: dict[str, Any]) -> dataset_pb2.DatasetVersion:
        """A dataset version from the body of POST /v1/datasets (cleaned, split; may take a while)."""
        stub = dataset_pb2_grpc.DatasetServiceStub(self.dataset.channel)
        with typed_rpc_errors():
            version: dataset_pb2.DatasetVersion = stub.CreateDatasetVersion(
                dataset_pb2.CreateDatasetVersionRequest(request_json=json.dumps(request)),
                metadata=self.dataset.metadata(tenant_id), timeout=self.timeout_s)
        return version

    def create_job(self, tenant_id: str, *, model: str, training_file: str, suffix: str,
                   hyperparameters: dict[str, Any], seed: int) -> trainer_pb2.Job:
        stub = trainer_pb2_grpc.TrainerServiceStub(self.trainer.channel)
        hp = trainer_pb2.Hyperparameters()
        for name in HYPERPARAMETERS:
            value = hyperparameters.get(name)
            if value is None:
                continue
            if name == "target_modules":
                hp.target_modules.extend(value)
            else:
                setattr(hp, name, value)
        with typed_rpc_errors():
            job: trainer_pb2.Job = stub.CreateJob(
                trainer_pb2.CreateJobRequest(model=model, training_file=training_file, suffix=suffix,
                                             hyperparameters=hp, seed=seed),
                metadata=self.trainer.metadata(tenant_id), timeout=60)
        return job

    def job(self, tenant_id: str, job_id: str) -> trainer_pb2.Job:
        stub = trainer_pb2_grpc.TrainerServiceStub(self.trainer.channel)
        with typed_rpc_errors():
            job: trainer_pb2.Job = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id),
                                               metadata=self.trainer.metadata(tenant_id), timeout=30)
        return job

    def cancel_job(self, tenant_id: str, job_id: str) -> None:
        stub = trainer_pb2_grpc.TrainerServiceStub(self.trainer.channel)
        with typed_rpc_errors():
            stub.CancelJob(trainer_pb2.GetJobRequest(job_id=job_id), metadata=self.trainer.metadata(tenant_id),
                           timeout=30)

    def _evaluator(self) -> evaluator_pb2_grpc.EvaluatorServiceStub:
        return evaluator_pb2_grpc.EvaluatorServiceStub(self.evaluator.channel)

    def eval_(self, tenant_id: str, eval_id: str) -> dict[str, Any]:
        with typed_rpc_errors():
            found = self._evaluator().GetEval(evaluator_pb2.GetEvalRequest(eval_id=eval_id),
                                              metadata=self.evaluator.metadata(tenant_id), timeout=30)
        out: dict[str, Any] = json.loads(found.json)
        return out

    def create_run(self, tenant_id: str, eval_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with typed_rpc_errors():
            run = self._evaluator().CreateRun(evaluator_pb2.CreateRunRequest(eval_id=eval_id,
                                                                             body_json=json.dumps(body)),
                                              metadata=self.evaluator.metadata(tenant_id), timeout=60)
        out: dict[str, Any] = json.loads(run.json)
        return out

    def run(self, tenant_id: str, eval_id: str, run_id: str) -> dict[str, Any]:
        with typed_rpc_errors():
            run = self._evaluator().GetRun(evaluator_pb2.GetRunRequest(eval_id=eval_id, run_id=run_id),
                                           metadata=self.evaluator.metadata(tenant_id), timeout=30)
        out: dict[str, Any] = json.loads(run.json)
        return out

    def cancel_run(self, tenant_id: str, eval_id: str, run_id: str) -> None:
        with typed_rpc_errors():
            self._evaluator().CancelRun(evaluator_pb2.GetRunRequest(eval_id=eval_id, run_id=run_id),
                                        metadata=self.evaluator.metadata(tenant_id), timeout=30)

    def compare(self, tenant_id: str, eval_id: str, run_ids: list[str]) -> dict[str, Any]:
        with typed_rpc_errors():
            found = self._evaluator().CompareRuns(evaluator_pb2.CompareRunsRequest(eval_id=eval_id, run_ids=run_ids),
                                                  metadata=self.evaluator.metadata(tenant_id), timeout=120)
        out: dict[str, Any] = json.loads(found.json)
        return out

    def count_gold(self, tenant_id: str, avatar: str, *, created_after: int, limit: int,
                   min_rating: int | None = None, metadata: dict[str, str] | None = None) -> int:
        """How many of the avatar's gold completions were stored after ``created_after`` (counted up to
        ``limit``: a trigger only needs to know whether there are enough)."""
        stub = inference_pb2_grpc.InferenceServiceStub(self.inference.channel)
        request = inference_pb2.ListStoredCompletionsRequest(avatar=avatar, gold=True, created_after=created_after,
                                                             limit=limit, metadata=metadata or {})
        if min_rating is not None:
            request.min_rating = min_rating
        call = stub.ListStoredCompletions(request, metadata=self.inference.metadata(tenant_id), timeout=120)
        count = 0
        try:
            with typed_rpc_errors():
                for _ in call:
                    count += 1
        finally:
            call.cancel()
        return count
