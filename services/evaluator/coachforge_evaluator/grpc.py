"""gRPC ``EvaluatorService``: the REST API's objects (evals, runs, comparisons), as JSON, for other
services and the CLI; each call runs the same service function as its REST route."""

from __future__ import annotations

import json
from typing import Any

import grpc

from coachforge.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from coachforge_evaluator import comparisons, service
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_shared.auth import current_principal
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.grpc_server import ServiceRegistration


def _body(body_json: str) -> Any:
    try:
        return json.loads(body_json or "{}")
    except ValueError as err:
        raise InvalidArgument(f"body_json is not JSON: {err}", param="body_json") from None


def _out(obj: dict[str, Any]) -> evaluator_pb2.JsonObject:
    return evaluator_pb2.JsonObject(json=json.dumps(obj))


class EvaluatorServicer(evaluator_pb2_grpc.EvaluatorServiceServicer):
    def __init__(self, deps: EvaluatorDeps) -> None:
        self.deps = deps

    def CreateEval(self, request: evaluator_pb2.CreateEvalRequest,
                   context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(service.create_eval(self.deps, current_principal().tenant_id, _body(request.body_json)))

    def GetEval(self, request: evaluator_pb2.GetEvalRequest, context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(service.get_eval(self.deps, current_principal().tenant_id, request.eval_id))

    def CreateRun(self, request: evaluator_pb2.CreateRunRequest,
                  context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(service.create_run(self.deps, current_principal().tenant_id, request.eval_id,
                                       _body(request.body_json)))

    def GetRun(self, request: evaluator_pb2.GetRunRequest, context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(service.get_run(self.deps, current_principal().tenant_id, request.eval_id, request.run_id))

    def CancelRun(self, request: evaluator_pb2.GetRunRequest,
                  context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(service.cancel_run(self.deps, current_principal().tenant_id, request.eval_id, request.run_id))

    def CompareRuns(self, request: evaluator_pb2.CompareRunsRequest,
                    context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(service.compare_runs(self.deps, current_principal().tenant_id, request.eval_id,
                                         list(request.run_ids)))

    def CreateComparison(self, request: evaluator_pb2.CreateComparisonRequest,
                         context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(comparisons.create(self.deps, current_principal().tenant_id, _body(request.body_json)))

    def GetComparison(self, request: evaluator_pb2.GetComparisonRequest,
                      context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(comparisons.get(self.deps, current_principal().tenant_id, request.comparison_id))

    def ListComparisons(self, request: evaluator_pb2.ListComparisonsRequest,
                        context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(comparisons.list_(self.deps, current_principal().tenant_id, after=request.after or None,
                                      limit=request.limit or 20, order=request.order or "asc"))

    def NextComparisonPair(self, request: evaluator_pb2.NextComparisonPairRequest,
                           context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        pair = comparisons.next_pair(self.deps, current_principal().tenant_id, request.comparison_id,
                                     request.voter)
        return evaluator_pb2.JsonObject(json="") if pair is None else _out(pair)

    def VoteComparison(self, request: evaluator_pb2.VoteComparisonRequest,
                       context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(comparisons.vote(self.deps, current_principal().tenant_id, request.comparison_id,
                                     _body(request.body_json)))

    def CancelComparison(self, request: evaluator_pb2.GetComparisonRequest,
                         context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(comparisons.cancel(self.deps, current_principal().tenant_id, request.comparison_id))

    def DeleteComparison(self, request: evaluator_pb2.GetComparisonRequest,
                         context: grpc.ServicerContext) -> evaluator_pb2.JsonObject:
        return _out(comparisons.delete(self.deps, current_principal().tenant_id, request.comparison_id))


def registration(deps: EvaluatorDeps) -> ServiceRegistration:
    return ServiceRegistration(evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name,
                               EvaluatorServicer(deps), evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server)
