"""gRPC ``WebhooksService``: the REST API's objects (endpoints, delivery logs), as JSON; each call
runs the same service function as its REST route."""

from __future__ import annotations

import json
from typing import Any

import grpc

from coachforge.webhooks.v1 import webhooks_pb2, webhooks_pb2_grpc
from coachforge_shared.auth import current_principal
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.grpc_server import ServiceRegistration
from coachforge_webhooks import service
from coachforge_webhooks.service import WebhooksDeps


def _body(body_json: str) -> Any:
    try:
        return json.loads(body_json or "{}")
    except ValueError as err:
        raise InvalidArgument(f"body_json is not JSON: {err}", param="body_json") from None


def _out(obj: dict[str, Any]) -> webhooks_pb2.JsonObject:
    return webhooks_pb2.JsonObject(json=json.dumps(obj))


class WebhooksServicer(webhooks_pb2_grpc.WebhooksServiceServicer):
    def __init__(self, deps: WebhooksDeps) -> None:
        self.deps = deps

    def CreateEndpoint(self, request: webhooks_pb2.CreateEndpointRequest,
                       context: grpc.ServicerContext) -> webhooks_pb2.JsonObject:
        return _out(service.create_endpoint(self.deps, current_principal().tenant_id, _body(request.body_json)))

    def ListEndpoints(self, request: webhooks_pb2.ListEndpointsRequest,
                      context: grpc.ServicerContext) -> webhooks_pb2.JsonObject:
        return _out(service.list_endpoints(self.deps, current_principal().tenant_id, after=request.after or None,
                                           limit=request.limit or 20, order=request.order or "asc"))

    def GetEndpoint(self, request: webhooks_pb2.EndpointRequest,
                    context: grpc.ServicerContext) -> webhooks_pb2.JsonObject:
        return _out(service.get_endpoint(self.deps, current_principal().tenant_id, request.endpoint_id))

    def DeleteEndpoint(self, request: webhooks_pb2.EndpointRequest,
                       context: grpc.ServicerContext) -> webhooks_pb2.JsonObject:
        return _out(service.delete_endpoint(self.deps, current_principal().tenant_id, request.endpoint_id))

    def RotateSecret(self, request: webhooks_pb2.EndpointRequest,
                     context: grpc.ServicerContext) -> webhooks_pb2.JsonObject:
        return _out(service.rotate_secret(self.deps, current_principal().tenant_id, request.endpoint_id))

    def ListDeliveries(self, request: webhooks_pb2.ListDeliveriesRequest,
                       context: grpc.ServicerContext) -> webhooks_pb2.JsonObject:
        return _out(service.list_deliveries(self.deps, current_principal().tenant_id, request.endpoint_id,
                                            after=request.after or None, limit=request.limit or 20,
                                            order=request.order or "desc", status=request.status or None))


def registration(deps: WebhooksDeps) -> ServiceRegistration:
    return ServiceRegistration(webhooks_pb2.DESCRIPTOR.services_by_name["WebhooksService"].full_name,
                               WebhooksServicer(deps), webhooks_pb2_grpc.add_WebhooksServiceServicer_to_server)
