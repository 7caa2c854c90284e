"""gRPC ``TrainerService``."""

from __future__ import annotations

import grpc

from coachforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from coachforge_shared.auth import current_principal
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.grpc_server import ServiceRegistration
from coachforge_trainer import service
from coachforge_trainer.schemas import CreateJobRequest, Hyperparameters
from coachforge_trainer.service import TrainerDeps


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, deps: TrainerDeps) -> None:
        self.deps = deps

    def CreateJob(self, request: trainer_pb2.CreateJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        hp = request.hyperparameters
        try:
            body = CreateJobRequest(
                model=request.model, training_file=request.training_file,
                validation_file=request.validation_file or None, suffix=request.suffix or None,
                seed=request.seed or None,
                hyperparameters=Hyperparameters(
                    n_epochs=hp.n_epochs or "auto", batch_size=hp.batch_size or "auto",
                    learning_rate_multiplier=hp.learning_rate_multiplier or "auto"))
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        job = service.create_job(self.deps, current_principal().tenant_id, body)
        return service.to_proto(job)

    def GetJob(self, request: trainer_pb2.GetJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        return service.to_proto(service.get_job(self.deps, current_principal().tenant_id, request.job_id))

    def ListJobs(self, request: trainer_pb2.ListJobsRequest,
                 context: grpc.ServicerContext) -> trainer_pb2.ListJobsResponse:
        jobs, more = service.list_jobs(self.deps, current_principal().tenant_id, request.after or None,
                                       request.limit or 20)
        return trainer_pb2.ListJobsResponse(jobs=[service.to_proto(j) for j in jobs], has_more=more)

    def ListJobEvents(self, request: trainer_pb2.ListJobEventsRequest,
                      context: grpc.ServicerContext) -> trainer_pb2.ListJobEventsResponse:
        events, more = service.list_events(self.deps, current_principal().tenant_id, request.job_id,
                                           request.after or None, request.limit or 20)
        return trainer_pb2.ListJobEventsResponse(has_more=more, events=[
            trainer_pb2.JobEvent(id=e.id, created_at=int(e.created_at.timestamp()), level=e.level,
                                 message=e.message, type=e.type, data_json=e.data_json or "") for e in events])

    def CancelJob(self, request: trainer_pb2.GetJobRequest, context: grpc.ServicerContext) -> trainer_pb2.Job:
        return service.to_proto(service.cancel_job(self.deps, current_principal().tenant_id, request.job_id))


def registration(deps: TrainerDeps) -> ServiceRegistration:
    return ServiceRegistration(trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name,
                               TrainerServicer(deps), trainer_pb2_grpc.add_TrainerServiceServicer_to_server)
