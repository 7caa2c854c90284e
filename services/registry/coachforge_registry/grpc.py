"""gRPC ``RegistryService``."""

from __future__ import annotations

import grpc

from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_registry import service
from coachforge_registry.service import RegistryDeps
from coachforge_shared.auth import current_principal
from coachforge_shared.grpc_server import ServiceRegistration


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps

    def ListModels(self, request: registry_pb2.ListModelsRequest,
                   context: grpc.ServicerContext) -> registry_pb2.ListModelsResponse:
        return registry_pb2.ListModelsResponse(models=service.list_models(self.deps, current_principal().tenant_id))

    def GetModel(self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext) -> registry_pb2.Model:
        return service.get_model(self.deps, current_principal().tenant_id, request.model_id)


def registration(deps: RegistryDeps) -> ServiceRegistration:
    return ServiceRegistration(registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
                               RegistryServicer(deps), registry_pb2_grpc.add_RegistryServiceServicer_to_server)
