"""How the coach reaches the model: the registry (which base model, hence which tokenizer) and
inference (the chat completion); and the dataset service's knowledge bases (training principles
for the context): all only through their gRPC stubs."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer

from coachforge.dataset.v1 import knowledge_pb2, knowledge_pb2_grpc
from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.coach")


@dataclass(frozen=True)
class ChatAnswer:
    content: str
    finish_reason: str
    model: str  # the model that answered (the base model when an avatar fell back to it)
    id: str = ""  # the completion's id (kept by inference when it was asked to store it)


class ModelClient(Protocol):
    """What the coach needs from the platform's model services."""

    def base_model(self, tenant_id: str, model: str) -> str:
        """The base model of ``model`` (a model id or an avatar); raises the typed error otherwise."""
        ...

    def chat(self, tenant_id: str, model: str, messages: list[dict[str, str]], *, response_format: dict[str, Any],
             max_tokens: int, temperature: float, seed: int, timeout: float,
             store_metadata: dict[str, str] | None = None) -> ChatAnswer:
        """One chat completion constrained by ``response_format``; with ``store_metadata`` inference
        keeps it (``store``) with that metadata."""
        ...

    def record_feedback(self, tenant_id: str, completion_id: str, *, rater: str, rating: int, comment: str,
                        timeout: float) -> None:
        """``rater``'s feedback on the stored completion ``completion_id`` (replacing the same rater's);
        raises the typed error (NotFound while the completion is not stored yet)."""
        ...


class GrpcModelClient:
    """:class:`ModelClient` over the registry's and inference's gRPC stubs, as an internal caller."""

    def __init__(self, registry: InternalChannel, inference: InternalChannel) -> None:
        self.registry = registry
        self.inference = inference

    def base_model(self, tenant_id: str, model: str) -> str:
        stub = registry_pb2_grpc.RegistryServiceStub(self.registry.channel)
        with typed_rpc_errors():
            found: registry_pb2.Model = stub.GetModel(registry_pb2.GetModelRequest(model_id=model),
                                                      metadata=self.registry.metadata(tenant_id), timeout=10)
        return found.base_model or found.id

    def chat(self, tenant_id: str, model: str, messages: list[dict[str, str]], *, response_format: dict[str, Any],
             max_tokens: int, temperature: float, seed: int, timeout: float,
             store_metadata: dict[str, str] | None = None) -> ChatAnswer:
        stub = inference_pb2_grpc.InferenceServiceStub(self.inference.channel)
        request = inference_pb2.ChatCompletionRequest(
            model=model, messages=[inference_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
            max_tokens=max_tokens, temperature=temperature, seed=seed,
            response_format_json=json.dumps(response_format, separators=(",", ":")),
            store=store_metadata is not None, metadata=store_metadata or {})
        with typed_rpc_errors():
            reply: inference_pb2.ChatCompletionResponse = stub.CreateChatCompletion(
                request, metadata=self.inference.metadata(tenant_id), timeout=timeout)
        return ChatAnswer(content=reply.content, finish_reason=reply.finish_reason, model=reply.model, id=reply.id)

    def record_feedback(self, tenant_id: str, completion_id: str, *, rater: str, rating: int, comment: str,
                        timeout: float) -> None:
        stub = inference_pb2_grpc.InferenceServiceStub(self.inference.channel)
        request = inference_pb2.RecordFeedbackRequest(completion_id=completion_id, rating=rating, comment=comment,
                                                      rater=rater)
        with typed_rpc_errors():
            stub.RecordFeedback(request, metadata=self.inference.metadata(tenant_id), timeout=timeout)


@dataclass(frozen=True)
class Principle:
    """A knowledge snippet found for the context."""

    chunk_id: str
    text: str


class KnowledgeClient(Protocol):
    """What the coach needs from the knowledge bases."""

    def search(self, tenant_id: str, knowledge_base: str, query: str, *, top_k: int, max_tokens: int,
               timeout: float) -> list[Principle]:
        """The best snippets of ``knowledge_base`` for ``query``, best first; raises the typed error
        (NotFound for a knowledge base the tenant does not have, Unavailable when it cannot answer)."""
        ...


class GrpcKnowledgeClient:
    """:class:`KnowledgeClient` over the dataset service's ``KnowledgeService`` stub, as an internal caller."""

    def __init__(self, dataset: InternalChannel) -> None:
        self.dataset = dataset

    def search(self, tenant_id: str, knowledge_base: str, query: str, *, top_k: int, max_tokens: int,
               timeout: float) -> list[Principle]:
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(self.dataset.channel)
        request = knowledge_pb2.SearchRequest(knowledge_base_id=knowledge_base, query=query, top_k=top_k,
                                              max_tokens=max_tokens)
        with typed_rpc_errors():
            found: knowledge_pb2.SearchResponse = stub.Search(request, metadata=self.dataset.metadata(tenant_id),
                                                              timeout=timeout)
        return [Principle(h.chunk_id, h.text) for h in found.hits]


@lru_cache(maxsize=8)
def _tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


_lock = threading.Lock()


def token_counter(models_dir: Path, base_model: str) -> tuple[Callable[[str], int], str]:
    """A function counting tokens with ``base_model``'s tokenizer, and the tokenizer's name.

    Without a prepared tokenizer the count is a conservative estimate (one token per 3 characters)
    and the name says ``approximate``.
    """
    path = models_dir / base_model / "tokenizer.json"
    if not path.is_file():
        log.warning("no tokenizer for the base model; estimating tokens", base_model=base_model, path=str(path))
        return (lambda text: len(text) // 3 + 1), "approximate"
    with _lock:
        tokenizer = _tokenizer(path)
    return (lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)), base_model
