"""gRPC ``RegistryService``."""

from __future__ import annotations

import io
import json

import grpc

from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_registry import export_jobs, service
from coachforge_registry.models import Avatar, AvatarChange, AvatarPersona
from coachforge_registry.service import RegistryDeps
from coachforge_shared.auth import current_principal
from coachforge_shared.grpc_server import ServiceRegistration
from coachforge_shared.ids import to_unix


def change_proto(c: AvatarChange) -> registry_pb2.AvatarChange:
    return registry_pb2.AvatarChange(action=c.action, from_model=c.from_model or "", to_model=c.to_model,
                                     actor=c.actor, reason=c.reason, created_at=to_unix(c.created_at),
                                     detail_json=c.detail_json or "{}")


def avatar_proto(a: Avatar, persona: AvatarPersona | None = None,
                 candidate_persona: AvatarPersona | None = None) -> registry_pb2.Avatar:
    out = registry_pb2.Avatar(name=a.name, active_model=a.active_model, fallback=a.fallback,
                              created_at=to_unix(a.created_at), updated_at=to_unix(a.updated_at),
                              candidate_model=a.candidate_model or "", candidate_share=a.candidate_share,
                              pinned=a.pinned, persona_version=a.persona_version or 0,
                              candidate_persona_version=a.candidate_persona_version or 0,
                              persona_json=service.applied_persona_json(persona),
                              candidate_persona_json=service.applied_persona_json(candidate_persona))
    if a.store is not None:  # unset: the tenant's default
        out.store = a.store
    return out


def persona_proto(a: Avatar, p: AvatarPersona) -> registry_pb2.Persona:
    return registry_pb2.Persona(avatar=a.name, version=p.version,
                                settings_json=json.dumps(service.persona_settings(a, p)), actor=p.actor,
                                reason=p.reason, created_at=to_unix(p.created_at),
                                active=p.version == a.persona_version)


def _for_caller(model: registry_pb2.Model) -> registry_pb2.Model:
    """Where an adapter lies (a path on the server, a bucket's URI) is for the platform's own
    services (inference loads it from there); a tenant's API key is answered without it."""
    if not current_principal().internal:
        model.adapter_uri = ""
        model.artifact_uri = ""
    return model


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps

    def ListModels(self, request: registry_pb2.ListModelsRequest,
                   context: grpc.ServicerContext) -> registry_pb2.ListModelsResponse:
        return registry_pb2.ListModelsResponse(
            models=[_for_caller(m) for m in service.list_models(self.deps, current_principal().tenant_id)])

    def GetModel(self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext) -> registry_pb2.Model:
        return _for_caller(service.get_model(self.deps, current_principal().tenant_id, request.model_id))


    def CreateAvatar(self, request: registry_pb2.CreateAvatarRequest,
                     context: grpc.ServicerContext) -> registry_pb2.Avatar:
        p = current_principal()
        return avatar_proto(service.create_avatar(self.deps, p.tenant_id, p.actor, request.name,
                                                          request.model, request.fallback or "error",
                                                          request.reason,
                                                          request.store if request.HasField("store") else None))

    def GetAvatar(self, request: registry_pb2.GetAvatarRequest, context: grpc.ServicerContext) -> registry_pb2.Avatar:
        """The avatar with its active and candidate persona settings (what inference applies)."""
        return avatar_proto(*service.avatar_with_personas(self.deps, current_principal().tenant_id, request.name))

    def ListAvatars(self, request: registry_pb2.ListAvatarsRequest,
                    context: grpc.ServicerContext) -> registry_pb2.ListAvatarsResponse:
        rows = service.list_avatars(self.deps, current_principal().tenant_id)
        return registry_pb2.ListAvatarsResponse(avatars=[avatar_proto(a) for a in rows])

    def ActivateModel(self, request: registry_pb2.ActivateModelRequest,
                      context: grpc.ServicerContext) -> registry_pb2.Avatar:
        p = current_principal()
        return avatar_proto(service.activate(self.deps, p.tenant_id, p.actor, request.avatar, request.model,
                                                     request.reason))

    def RollbackAvatar(self, request: registry_pb2.RollbackAvatarRequest,
                       context: grpc.ServicerContext) -> registry_pb2.Avatar:
        p = current_principal()
        return avatar_proto(service.rollback(self.deps, p.tenant_id, p.actor, request.avatar,
                                                     request.reason))

    def PinVersion(self, request: registry_pb2.PinVersionRequest,
                   context: grpc.ServicerContext) -> registry_pb2.Avatar:
        p = current_principal()
        return avatar_proto(service.pin(self.deps, p.tenant_id, p.actor, request.avatar, request.model,
                                                request.reason))

    def UnpinAvatar(self, request: registry_pb2.UnpinAvatarRequest,
                    context: grpc.ServicerContext) -> registry_pb2.Avatar:
        p = current_principal()
        return avatar_proto(service.unpin(self.deps, p.tenant_id, p.actor, request.avatar, request.reason))

    def SetCandidate(self, request: registry_pb2.SetCandidateRequest,
                     context: grpc.ServicerContext) -> registry_pb2.Avatar:
        p = current_principal()
        persona = request.candidate_persona_version if request.HasField("candidate_persona_version") else None
        return avatar_proto(service.set_candidate(self.deps, p.tenant_id, p.actor, request.avatar,
                                                          request.model or None, request.traffic_share,
                                                          request.reason, candidate_persona_version=persona))

    def GetPersona(self, request: registry_pb2.GetPersonaRequest,
                   context: grpc.ServicerContext) -> registry_pb2.Persona:
        return persona_proto(*service.get_persona(self.deps, current_principal().tenant_id, request.avatar))

    def SetPersona(self, request: registry_pb2.SetPersonaRequest,
                   context: grpc.ServicerContext) -> registry_pb2.Persona:
        p = current_principal()
        settings = service.parse_persona(request.settings_json)
        return persona_proto(*service.set_persona(self.deps, p.tenant_id, p.actor, request.avatar, settings,
                                                  request.reason))

    def ListPersonaVersions(self, request: registry_pb2.ListPersonaVersionsRequest,
                            context: grpc.ServicerContext) -> registry_pb2.ListPersonaVersionsResponse:
        avatar, rows = service.persona_versions(self.deps, current_principal().tenant_id, request.avatar)
        return registry_pb2.ListPersonaVersionsResponse(versions=[persona_proto(avatar, r) for r in rows])

    def RollbackPersona(self, request: registry_pb2.RollbackPersonaRequest,
                        context: grpc.ServicerContext) -> registry_pb2.Persona:
        p = current_principal()
        return persona_proto(*service.rollback_persona(self.deps, p.tenant_id, p.actor, request.avatar,
                                                       request.version or None, request.reason))

    def GetAvatarHistory(self, request: registry_pb2.GetAvatarHistoryRequest,
                         context: grpc.ServicerContext) -> registry_pb2.AvatarHistory:
        rows = service.history(self.deps, current_principal().tenant_id, request.avatar)
        return registry_pb2.AvatarHistory(changes=[change_proto(c) for c in rows])

    def ListModelVersions(self, request: registry_pb2.ListModelVersionsRequest,
                          context: grpc.ServicerContext) -> registry_pb2.ListModelsResponse:
        return registry_pb2.ListModelsResponse(models=[
            _for_caller(m) for m in service.list_versions(self.deps, current_principal().tenant_id, request.model_id)])

    def UploadModelVersion(self, request: registry_pb2.UploadModelVersionRequest,
                           context: grpc.ServicerContext) -> registry_pb2.Model:
        p = current_principal()
        v = service.upload_version(self.deps, p.tenant_id, p.actor, request.base_model, request.suffix,
                                   [(request.filename, io.BytesIO(request.content))])
        return _for_caller(service.version_proto(v))

    def DeleteModel(self, request: registry_pb2.DeleteModelRequest,
                    context: grpc.ServicerContext) -> registry_pb2.DeleteModelResponse:
        out = service.delete_model(self.deps, current_principal().tenant_id, request.model_id)
        return registry_pb2.DeleteModelResponse(id=str(out["id"]), object="model", deleted=True)

    def RecordEvaluation(self, request: registry_pb2.RecordEvaluationRequest,
                         context: grpc.ServicerContext) -> registry_pb2.Model:
        p = current_principal()
        return _for_caller(service.record_evaluation(self.deps, p.tenant_id, p.actor, request.model_id,
                                                     request.name, dict(request.metrics)))

    def CreateExport(self, request: registry_pb2.CreateExportRequest,
                     context: grpc.ServicerContext) -> registry_pb2.ModelExport:
        row = export_jobs.create_export(self.deps, current_principal().tenant_id, request.model_id, request.format,
                                        request.quantization or None, request.avatar or None)
        return export_jobs.export_proto(row)

    def GetExport(self, request: registry_pb2.GetExportRequest,
                  context: grpc.ServicerContext) -> registry_pb2.ModelExport:
        return export_jobs.export_proto(export_jobs.get_export(self.deps, current_principal().tenant_id,
                                                               request.model_id, request.export_id))

    def ListExports(self, request: registry_pb2.ListExportsRequest,
                    context: grpc.ServicerContext) -> registry_pb2.ListExportsResponse:
        rows = export_jobs.list_exports(self.deps, current_principal().tenant_id, request.model_id)
        return registry_pb2.ListExportsResponse(exports=[export_jobs.export_proto(e) for e in rows])


def registration(deps: RegistryDeps) -> ServiceRegistration:
    return ServiceRegistration(registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
                               RegistryServicer(deps), registry_pb2_grpc.add_RegistryServiceServicer_to_server)
