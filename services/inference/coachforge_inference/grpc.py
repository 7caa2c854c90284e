"""gRPC ``InferenceService``: the same semantics as the REST chat endpoint."""

from __future__ import annotations

import json
from typing import Any

import grpc

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_inference import service
from coachforge_inference import usage as usage_mod
from coachforge_inference.service import InferenceDeps
from coachforge_shared.auth import current_principal
from coachforge_shared.errors import InvalidArgument, Unavailable
from coachforge_shared.grpc_server import ServiceRegistration


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, deps: InferenceDeps) -> None:
        self.deps = deps

    def CreateChatCompletion(self, request: inference_pb2.ChatCompletionRequest,
                             context: grpc.ServicerContext) -> inference_pb2.ChatCompletionResponse:
        body: dict[str, Any] = {"model": request.model,
                                "messages": [{"role": m.role, "content": m.content} for m in request.messages]}
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        for name in ("temperature", "top_p", "seed"):
            if request.HasField(name):
                body[name] = getattr(request, name)
        if request.response_format_json:
            try:
                body["response_format"] = json.loads(request.response_format_json)
            except json.JSONDecodeError as err:
                raise InvalidArgument(f"response_format_json is not JSON: {err}", param="response_format") from None
        result, _ = service.complete(self.deps, current_principal().tenant_id, "/v1/chat/completions", body)
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return inference_pb2.ChatCompletionResponse(
            id=result.get("id", ""), model=result["model"], content=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "", created=int(result.get("created", 0)),
            usage=inference_pb2.Usage(prompt_tokens=usage.get("prompt_tokens", 0),
                                      completion_tokens=usage.get("completion_tokens", 0),
                                      total_tokens=usage.get("total_tokens", 0)))

    def GetUsage(self, request: inference_pb2.GetUsageRequest,
                 context: grpc.ServicerContext) -> inference_pb2.GetUsageResponse:
        if self.deps.db is None:
            raise Unavailable("usage is not stored by this deployment")
        q = usage_mod.make_query(request.start_date, request.end_date, request.model,
                                 request.avatar if request.avatar else None)
        rows = usage_mod.daily_usage(self.deps.db, current_principal().tenant_id, q)
        return inference_pb2.GetUsageResponse(rows=[inference_pb2.UsageRow(
            date=r["date"], model=r["model"], avatar=r["avatar"], messages=r["messages"],
            input_tokens=r["input_tokens"], output_tokens=r["output_tokens"], cost_usd=r["cost_usd"])
            for r in rows])


def registration(deps: InferenceDeps) -> ServiceRegistration:
    return ServiceRegistration(inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
                               InferenceServicer(deps), inference_pb2_grpc.add_InferenceServiceServicer_to_server)
