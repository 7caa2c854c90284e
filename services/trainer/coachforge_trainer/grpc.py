"""gRPC ``TrainerService``."""

from __future__ import annotations

import json
from typing import Any, cast

import grpc
from pydantic import ValidationError

from coachforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from coachforge_shared.auth import current_principal
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.grpc_server import ServiceRegistration
from coachforge_shared.ids import to_unix
from coachforge_trainer import service
from coachforge_trainer.lifecycle import status_to_proto
from coachforge_trainer.models import Job, JobCheckpoint, JobEvent
from coachforge_trainer.schemas import CreateJobRequest, Hyperparameters, Method
from coachforge_trainer.service import TrainerDeps


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, deps: TrainerDeps) -> None:
        self.deps = deps

    def CreateJob(self, request: trainer_pb2.CreateJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        created = service.create_job(self.deps, current_principal().tenant_id, _body(request))
        if isinstance(created, service.JobPlan):  # a dry run: a Job without id, carrying the estimate
            return trainer_pb2.Job(model=created.job.model, training_file=created.job.training_file,
                                   validation_file=created.job.validation_file or "",
                                   hyperparameters=_hyperparameters_proto(created.job),
                                   estimate=_estimate_proto(created.estimate),
                                   eligibility=_eligibility_proto(created.eligibility), preset=created.job.preset or "")
        return to_proto(created)

    def EstimateJob(self, request: trainer_pb2.CreateJobRequest,
                    context: grpc.ServicerContext) -> trainer_pb2.JobEstimate:
        body = _body(request).model_copy(update={"dry_run": True})
        plan = service.create_job(self.deps, current_principal().tenant_id, body)
        assert isinstance(plan, service.JobPlan)
        return trainer_pb2.JobEstimate(
            model=plan.job.model, training_file=plan.job.training_file,
            validation_file=plan.job.validation_file or "", hyperparameters=_hyperparameters_proto(plan.job),
            preset=plan.job.preset or "", estimate=_estimate_proto(plan.estimate),
            eligibility=_eligibility_proto(plan.eligibility))

    def GetJob(self, request: trainer_pb2.GetJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        return to_proto(service.get_job(self.deps, current_principal().tenant_id, request.job_id))

    def ListJobs(self, request: trainer_pb2.ListJobsRequest,
                 context: grpc.ServicerContext) -> trainer_pb2.ListJobsResponse:
        jobs, more = service.list_jobs(self.deps, current_principal().tenant_id, request.after or None,
                                       request.limit or 20)
        return trainer_pb2.ListJobsResponse(jobs=[to_proto(j) for j in jobs], has_more=more)

    def ListJobEvents(self, request: trainer_pb2.ListJobEventsRequest,
                      context: grpc.ServicerContext) -> trainer_pb2.ListJobEventsResponse:
        events, more = service.list_events(self.deps, current_principal().tenant_id, request.job_id,
                                           request.after or None, request.limit or 20)
        return trainer_pb2.ListJobEventsResponse(has_more=more, events=[_event_to_proto(e) for e in events])

    def CancelJob(self, request: trainer_pb2.GetJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        return to_proto(service.cancel_job(self.deps, current_principal().tenant_id, request.job_id))

    def ListJobCheckpoints(self, request: trainer_pb2.ListJobCheckpointsRequest,
                           context: grpc.ServicerContext) -> trainer_pb2.ListJobCheckpointsResponse:
        rows, more = service.list_checkpoints(self.deps, current_principal().tenant_id, request.job_id,
                                              request.after or None, request.limit or 10)
        internal = current_principal().internal  # a checkpoint's folder is for the platform's services only
        return trainer_pb2.ListJobCheckpointsResponse(
            checkpoints=[_checkpoint_to_proto(c, with_path=internal) for c in rows], has_more=more)


def _body(request: trainer_pb2.CreateJobRequest) -> CreateJobRequest:
    """The REST body a gRPC create request stands for (zero values mean auto)."""
    hp = request.hyperparameters
    try:
        return CreateJobRequest(
            model=request.model, training_file=request.training_file,
            validation_file=request.validation_file or None, suffix=request.suffix or None,
            seed=request.seed or None, preset=request.preset or None, dry_run=request.dry_run,
            backend=request.backend or "trl",
            # Validated with the request, so that an error names "method.type".
            method=cast(Method, {"type": request.method}) if request.method else None,
            hyperparameters=Hyperparameters.model_validate({
                "n_epochs": hp.n_epochs or "auto", "batch_size": hp.batch_size or "auto",
                "learning_rate_multiplier": hp.learning_rate_multiplier or "auto",
                "lora_r": hp.lora_r or "auto", "lora_alpha": hp.lora_alpha or "auto",
                "lora_dropout": hp.lora_dropout if hp.HasField("lora_dropout") else "auto",
                "target_modules": (list(hp.target_modules) if len(hp.target_modules) != 1
                                   or hp.target_modules[0] != "all-linear" else "all-linear")
                if hp.target_modules else "auto",
                "max_length": hp.max_length or "auto", "early_stopping_patience": hp.early_stopping_patience,
                "checkpoint_steps": hp.checkpoint_steps if hp.HasField("checkpoint_steps") else "auto"}))
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise InvalidArgument(f"{field}: {first['msg']}", param=field) from None


def _estimate_proto(est: dict[str, Any]) -> trainer_pb2.Estimate:
    return trainer_pb2.Estimate(**{k: v for k, v in est.items() if k in trainer_pb2.Estimate.DESCRIPTOR.fields_by_name})


def _eligibility_proto(found: dict[str, Any]) -> trainer_pb2.Eligibility:
    return trainer_pb2.Eligibility(
        examples=found["examples"], usable=found["usable"], warnings=found["warnings"], advice=found["advice"],
        unusable=[trainer_pb2.UnusableExamples(reason=r, count=n) for r, n in found["unusable"].items()])


def registration(deps: TrainerDeps) -> ServiceRegistration:
    return ServiceRegistration(trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name,
                               TrainerServicer(deps), trainer_pb2_grpc.add_TrainerServiceServicer_to_server)


def _checkpoint_to_proto(c: JobCheckpoint, with_path: bool = False) -> trainer_pb2.JobCheckpoint:
    return trainer_pb2.JobCheckpoint(id=c.id, created_at=to_unix(c.created_at), job_id=c.job_id, step=c.step,
                                     epoch=c.epoch, train_loss=c.train_loss or 0.0, valid_loss=c.valid_loss or 0.0,
                                     path=c.path if with_path else "")


def _event_to_proto(e: JobEvent) -> trainer_pb2.JobEvent:
    return trainer_pb2.JobEvent(id=e.id, created_at=int(e.created_at.timestamp()), level=e.level, message=e.message,
                                type=e.type, data_json=e.data_json or "")


def _hyperparameters_proto(job: Job) -> trainer_pb2.Hyperparameters:
    method = json.loads(job.method_json or "{}")
    modules = method.get("target_modules", [])
    return trainer_pb2.Hyperparameters(
        n_epochs=job.n_epochs, batch_size=job.batch_size, learning_rate_multiplier=job.learning_rate_multiplier,
        lora_r=method.get("lora_r", 0), lora_alpha=method.get("lora_alpha", 0),
        lora_dropout=method.get("lora_dropout"), max_length=method.get("max_length", 0),
        target_modules=[modules] if isinstance(modules, str) else modules,
        early_stopping_patience=method.get("early_stopping_patience", 0),
        checkpoint_steps=method.get("checkpoint_steps"), beta=method.get("beta"))


def to_proto(job: Job) -> trainer_pb2.Job:
    stored = json.loads(job.estimate_json) if job.estimate_json else {}
    return trainer_pb2.Job(
        id=job.id, model=job.model, status=status_to_proto(job.status), training_file=job.training_file,
        validation_file=job.validation_file or "", suffix=job.suffix or "",
        hyperparameters=_hyperparameters_proto(job), preset=job.preset or "",
        estimate=_estimate_proto(stored["estimate"]) if "estimate" in stored else None,
        eligibility=_eligibility_proto(stored["eligibility"]) if "eligibility" in stored else None,
        estimated_tokens=job.estimated_tokens or 0, estimated_seconds=job.estimated_seconds or 0.0,
        estimated_cost_usd=job.estimated_cost_usd or 0.0, valid_loss=job.valid_loss or 0.0, device=job.device or "",
        attempts=job.attempts or 0, result_files=[job.result_file] if job.result_file else [],
        fine_tuned_model=job.fine_tuned_model or "", trained_tokens=job.trained_tokens or 0,
        created_at=to_unix(job.created_at), finished_at=to_unix(job.finished_at), error_code=job.error_code or "",
        error_message=job.error_message or "", seed=job.seed, tenant_id=job.tenant_id,
        estimated_finish=to_unix(job.estimated_finish), parent_model=job.parent_model or "",
        method=job.method_type or "supervised", backend=job.backend or "trl")
