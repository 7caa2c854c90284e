"""gRPC ``KnowledgeService``: the same calls as the REST API, requests checked by the same models."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from pydantic import BaseModel, ValidationError

from coachforge.dataset.v1 import knowledge_pb2, knowledge_pb2_grpc
from coachforge_dataset.knowledge import service
from coachforge_dataset.knowledge.schemas import (
    DEFAULT_TOP_K,
    AddKnowledgeDocument,
    CreateKnowledgeBase,
    SearchKnowledgeBase,
)
from coachforge_dataset.models import KnowledgeBase, KnowledgeDocument
from coachforge_dataset.service import DatasetDeps
from coachforge_shared.auth import current_principal
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.grpc_server import ServiceRegistration
from coachforge_shared.ids import to_unix

M = TypeVar("M", bound=BaseModel)
DEFAULT_PAGE = 20
STATUSES = {"completed": knowledge_pb2.DOCUMENT_STATUS_COMPLETED}


def _checked(model: type[M], fields: dict[str, Any]) -> M:
    """``fields`` as ``model``; the first problem as INVALID_ARGUMENT naming the field."""
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        raise InvalidArgument(f"Invalid request: {first['msg']}",
                              param=".".join(str(p) for p in first["loc"]) or None) from None


def knowledge_base_proto(row: KnowledgeBase) -> knowledge_pb2.KnowledgeBase:
    return knowledge_pb2.KnowledgeBase(
        id=row.id, name=row.name, description=row.description, created_at=to_unix(row.created_at),
        updated_at=to_unix(row.updated_at), chunk_tokens=row.chunk_tokens, chunk_overlap=row.chunk_overlap,
        document_count=row.document_count, chunk_count=row.chunk_count, token_count=row.token_count, bytes=row.bytes)


def document_proto(row: KnowledgeDocument) -> knowledge_pb2.KnowledgeDocument:
    return knowledge_pb2.KnowledgeDocument(
        id=row.id, knowledge_base_id=row.knowledge_base_id, file_id=row.file_id or "", filename=row.filename,
        bytes=row.bytes, sha256=row.sha256, chunk_count=row.chunk_count, token_count=row.token_count,
        status=STATUSES.get(row.status, knowledge_pb2.DOCUMENT_STATUS_UNSPECIFIED),
        created_at=to_unix(row.created_at))


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    def __init__(self, deps: DatasetDeps) -> None:
        self.deps = deps

    def CreateKnowledgeBase(self, request: knowledge_pb2.CreateKnowledgeBaseRequest,
                            context: grpc.ServicerContext) -> knowledge_pb2.KnowledgeBase:
        body = _checked(CreateKnowledgeBase, {
            "name": request.name, "description": request.description, "chunk_tokens": request.chunk_tokens or None,
            "chunk_overlap": request.chunk_overlap if request.HasField("chunk_overlap") else None})
        return knowledge_base_proto(service.create_knowledge_base(self.deps, current_principal().tenant_id, body))

    def GetKnowledgeBase(self, request: knowledge_pb2.GetKnowledgeBaseRequest,
                         context: grpc.ServicerContext) -> knowledge_pb2.KnowledgeBase:
        row = service.get_knowledge_base(self.deps, current_principal().tenant_id, request.knowledge_base_id)
        return knowledge_base_proto(row)

    def ListKnowledgeBases(self, request: knowledge_pb2.ListKnowledgeBasesRequest,
                           context: grpc.ServicerContext) -> knowledge_pb2.ListKnowledgeBasesResponse:
        rows, has_more = service.list_knowledge_bases(self.deps, current_principal().tenant_id,
                                                      request.limit or DEFAULT_PAGE, request.after or None)
        return knowledge_pb2.ListKnowledgeBasesResponse(knowledge_bases=[knowledge_base_proto(r) for r in rows],
                                                        has_more=has_more)

    def DeleteKnowledgeBase(self, request: knowledge_pb2.GetKnowledgeBaseRequest,
                            context: grpc.ServicerContext) -> knowledge_pb2.DeleteKnowledgeBaseResponse:
        service.delete_knowledge_base(self.deps, current_principal().tenant_id, request.knowledge_base_id)
        return knowledge_pb2.DeleteKnowledgeBaseResponse(id=request.knowledge_base_id, deleted=True)

    def AddDocument(self, request: knowledge_pb2.AddDocumentRequest,
                    context: grpc.ServicerContext) -> knowledge_pb2.KnowledgeDocument:
        body = _checked(AddKnowledgeDocument, {
            "file_id": request.file_id or None, "text": request.text if request.HasField("text") else None,
            "title": request.title or None})
        row = service.add_document(self.deps, current_principal().tenant_id, request.knowledge_base_id, body)
        return document_proto(row)

    def ListDocuments(self, request: knowledge_pb2.ListDocumentsRequest,
                      context: grpc.ServicerContext) -> knowledge_pb2.ListDocumentsResponse:
        rows, has_more = service.list_documents(self.deps, current_principal().tenant_id, request.knowledge_base_id,
                                                request.limit or DEFAULT_PAGE, request.after or None)
        return knowledge_pb2.ListDocumentsResponse(documents=[document_proto(r) for r in rows], has_more=has_more)

    def DeleteDocument(self, request: knowledge_pb2.DeleteDocumentRequest,
                       context: grpc.ServicerContext) -> knowledge_pb2.DeleteDocumentResponse:
        service.delete_document(self.deps, current_principal().tenant_id, request.knowledge_base_id,
                                request.document_id)
        return knowledge_pb2.DeleteDocumentResponse(id=request.document_id, deleted=True)

    def Search(self, request: knowledge_pb2.SearchRequest,
               context: grpc.ServicerContext) -> knowledge_pb2.SearchResponse:
        body = _checked(SearchKnowledgeBase, {"query": request.query, "top_k": request.top_k or DEFAULT_TOP_K,
                                              "max_tokens": request.max_tokens or None})
        result = service.search(self.deps, current_principal().tenant_id, request.knowledge_base_id, body)
        return knowledge_pb2.SearchResponse(
            hits=[knowledge_pb2.SearchHit(chunk_id=h.chunk_id, document_id=h.document_id, source=h.source,
                                          score=h.score, text=h.text, tokens=h.tokens) for h in result.hits],
            total_tokens=result.total_tokens)


def registration(deps: DatasetDeps) -> ServiceRegistration:
    return ServiceRegistration(knowledge_pb2.DESCRIPTOR.services_by_name["KnowledgeService"].full_name,
                               KnowledgeServicer(deps), knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server)
