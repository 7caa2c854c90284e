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


    def CreateAvatar(self, request: registry_pb2.CreateAvatarRequest,
                     context: grpc.ServicerContext) -> registry_pb2.Avatar:
        p = current_principal()
        return service.avatar_proto(service.create_avatar(self.deps, p.tenant_id, p.actor, request.name,
                                                          request.model, request.fallback or "error",
                                                          request.reason))

    def GetAvatar(self, request: registry_pb2.GetAvatarRequest, context: grpc.ServicerContext) -> registry_pb2.Avatar:
        return service.avatar_proto(service.get_avatar(self.deps, current_principal().tenant_id, request.name))

    def ListAvatars(self, request: registry_pb2.ListAvatarsRequest,
                    context: grpc.ServicerContext) -> registry_pb2.ListAvatarsResponse:
        rows = service.list_avatars(self.deps, current_principal().tenant_id)
        return registry_pb2.ListAvatarsResponse(avatars=[service.avatar_proto(a) for a in rows])

    def ActivateModel(self, request: registry_pb2.ActivateModelRequest,
                      context: grpc.ServicerContext) -> registry_pb2.Avatar:
        p = current_principal()
        return service.avatar_proto(service.activate(self.deps, p.tenant_id, p.actor, request.avatar, request.model,
                                                     request.reason))

    def RollbackAvatar(self, request: registry_pb2.RollbackAvatarRequest,
                       context: grpc.ServicerContext) -> registry_pb2.Avatar:
        p = current_principal()
        return service.avatar_proto(service.rollback(self.deps, p.tenant_id, p.actor, request.avatar,
                                                     request.reason))


def registration(deps: RegistryDeps) -> ServiceRegistration:
    return ServiceRegistration(registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
                               RegistryServicer(deps), registry_pb2_grpc.add_RegistryServiceServicer_to_server)
