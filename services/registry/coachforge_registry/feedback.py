"""Where the registry reads the feedback on an avatar's stored completions: inference's
``SummarizeFeedback`` over gRPC (the registry never reads inference's tables)."""

from __future__ import annotations

from typing import Protocol

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors

SUMMARY_TIMEOUT_S = 30.0


class FeedbackSource(Protocol):
    """The feedback statistics of an avatar's stored completions per (model, variant)."""

    def summarize(self, tenant_id: str, avatar: str, since: int) -> list[inference_pb2.VariantFeedback]:
        """The rows for the completions asked through ``avatar`` since ``since`` (unix seconds);
        raises the typed error of a failed call."""
        ...


class GrpcFeedbackSource:
    """:class:`FeedbackSource` over inference's gRPC stub, as an internal caller."""

    def __init__(self, inference: InternalChannel) -> None:
        self.inference = inference

    def summarize(self, tenant_id: str, avatar: str, since: int) -> list[inference_pb2.VariantFeedback]:
        stub = inference_pb2_grpc.InferenceServiceStub(self.inference.channel)
        with typed_rpc_errors():
            reply: inference_pb2.SummarizeFeedbackResponse = stub.SummarizeFeedback(
                inference_pb2.SummarizeFeedbackRequest(avatar=avatar, since=since),
                metadata=self.inference.metadata(tenant_id), timeout=SUMMARY_TIMEOUT_S)
        return list(reply.variants)
