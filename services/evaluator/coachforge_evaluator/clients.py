"""The evaluator's calls to other services, over gRPC: samples, judge answers and stored chat
completions (a comparison's prompts) from inference, model checks in the registry, a run's items
or a comparison's prompts from an uploaded file of the dataset service."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors

EVALUATION = "evaluation"
"""The purpose of every completion the evaluator asks for (samples and judges): inference bills and
counts it apart from applications' requests."""


@dataclass
class Sampled:
    """One model answer and how it came."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float | None
    model: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output_tokens_per_s(self) -> float | None:
        """Output tokens per second after the first token (None for answers of one token or less)."""
        if self.ttft_s is None or self.completion_tokens <= 1 or self.latency_s <= self.ttft_s:
            return None
        return (self.completion_tokens - 1) / (self.latency_s - self.ttft_s)


def chat_request(model: str, messages: list[dict[str, str]], params: dict[str, Any],
                 user: str = "") -> inference_pb2.ChatCompletionRequest:
    """The inference request for ``messages`` with a run's ``sampling_params``, billed as an
    evaluation (kept apart from applications' usage)."""
    request = inference_pb2.ChatCompletionRequest(
        model=model, messages=[inference_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        user=user, include_usage=True, purpose=EVALUATION)
    for name in ("temperature", "top_p", "seed", "max_completion_tokens"):
        if params.get(name) is not None:
            setattr(request, name, params[name])
    if params.get("response_format"):
        request.response_format_json = json.dumps(params["response_format"])
    return request


class InferenceClient:
    """Samples answers from the platform's inference service (streamed, so the first token is timed)."""

    def __init__(self, channel: InternalChannel, timeout_s: float) -> None:
        self.channel, self.timeout_s = channel, timeout_s
        self.stub = inference_pb2_grpc.InferenceServiceStub(channel.channel)

    def sample(self, tenant_id: str, model: str, messages: list[dict[str, str]], params: dict[str, Any],
               user: str = "") -> Sampled:
        started = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        finish, answered_by = "", model
        prompt_tokens = completion_tokens = 0
        with typed_rpc_errors():
            chunks = self.stub.StreamChatCompletion(chat_request(model, messages, params, user),
                                                    metadata=self.channel.metadata(tenant_id), timeout=self.timeout_s)
            for chunk in chunks:
                answered_by = chunk.model or answered_by
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    if choice.content:
                        if ttft is None:
                            ttft = time.perf_counter() - started
                        parts.append(choice.content)
                    if choice.finish_reason:
                        finish = choice.finish_reason
                if chunk.HasField("usage"):
                    prompt_tokens, completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
        return Sampled(text="".join(parts), finish_reason=finish, prompt_tokens=prompt_tokens,
                       completion_tokens=completion_tokens, latency_s=time.perf_counter() - started, ttft_s=ttft,
                       model=answered_by)

    def judge(self, tenant_id: str, model: str, messages: list[dict[str, str]], response_format: dict[str, Any],
              params: dict[str, Any]) -> str:
        """A judge model's answer (not streamed)."""
        request = chat_request(model, messages, {**params, "response_format": response_format})
        with typed_rpc_errors():
            reply = self.stub.CreateChatCompletion(request, metadata=self.channel.metadata(tenant_id),
                                                   timeout=self.timeout_s)
        return str(reply.content)

    def price(self, tenant_id: str, model: str) -> tuple[str, float, float]:
        """The model a request for ``model`` resolves to (an avatar: its active model) and its price,
        US dollars per million input and output tokens (``NotFound`` for an unknown model)."""
        with typed_rpc_errors():
            found = self.stub.GetModelPrice(inference_pb2.GetModelPriceRequest(model=model),
                                            metadata=self.channel.metadata(tenant_id), timeout=10)
        return found.model, found.input_per_million, found.output_per_million

    def stored_completions(self, tenant_id: str, request: inference_pb2.ListStoredCompletionsRequest
                           ) -> Iterator[inference_pb2.StoredCompletionExample]:
        """The tenant's stored chat completions matching ``request``, as streamed (each one's messages
        end with its answer); closing the iterator early cancels the call."""
        call = self.stub.ListStoredCompletions(request, metadata=self.channel.metadata(tenant_id),
                                               timeout=self.timeout_s)
        try:
            with typed_rpc_errors():
                yield from call
        finally:
            call.cancel()


class RegistryClient:
    """Asks the registry whether a model (base, ft: id or avatar) exists for a tenant."""

    def __init__(self, channel: InternalChannel) -> None:
        self.channel = channel
        self.stub = registry_pb2_grpc.RegistryServiceStub(channel.channel)

    def model(self, tenant_id: str, model_id: str) -> registry_pb2.Model:
        with typed_rpc_errors():
            found: registry_pb2.Model = self.stub.GetModel(registry_pb2.GetModelRequest(model_id=model_id),
                                                           metadata=self.channel.metadata(tenant_id), timeout=10)
        return found


class DatasetClient:
    """Reads a tenant's uploaded files from the dataset service (an eval run's ``file_id`` source)."""

    def __init__(self, channel: InternalChannel, timeout_s: float) -> None:
        self.channel, self.timeout_s = channel, timeout_s
        self.stub = dataset_pb2_grpc.DatasetServiceStub(channel.channel)

    def file(self, tenant_id: str, file_id: str) -> dataset_pb2.File:
        """The file's metadata (``NotFound`` when the tenant has no such file)."""
        with typed_rpc_errors():
            found: dataset_pb2.File = self.stub.GetFile(dataset_pb2.GetFileRequest(file_id=file_id),
                                                        metadata=self.channel.metadata(tenant_id), timeout=10)
        return found

    def content(self, tenant_id: str, file_id: str) -> Iterator[bytes]:
        """The file's content as streamed, chunk by chunk; closing the iterator early cancels the call."""
        call = self.stub.GetFileContent(dataset_pb2.GetFileRequest(file_id=file_id),
                                        metadata=self.channel.metadata(tenant_id), timeout=self.timeout_s)
        try:
            with typed_rpc_errors():
                for chunk in call:
                    yield chunk.data
        finally:
            call.cancel()
