"""gRPC ``CoachService``."""

from __future__ import annotations

import json

import grpc

from coachforge.coach.v1 import coach_pb2, coach_pb2_grpc
from coachforge_coach import service
from coachforge_shared.grpc_server import ServiceRegistration


class CoachServicer(coach_pb2_grpc.CoachServiceServicer):
    def GetModificationSchema(self, request: coach_pb2.GetModificationSchemaRequest,
                              context: grpc.ServicerContext) -> coach_pb2.ModificationSchema:
        doc = service.schema()
        return coach_pb2.ModificationSchema(version=doc["version"], schema_json=json.dumps(doc["schema"]))

    def ValidateModification(self, request: coach_pb2.ValidateModificationRequest,
                             context: grpc.ServicerContext) -> coach_pb2.ValidateModificationResponse:
        valid, error = service.validate(request.modification_json)
        return coach_pb2.ValidateModificationResponse(valid=valid, error=error)


def registration() -> ServiceRegistration:
    return ServiceRegistration(coach_pb2.DESCRIPTOR.services_by_name["CoachService"].full_name,
                               CoachServicer(), coach_pb2_grpc.add_CoachServiceServicer_to_server)
