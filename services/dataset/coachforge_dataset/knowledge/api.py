"""REST: ``/v1/knowledge_bases`` (knowledge bases, their documents, search)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request

from coachforge_dataset.knowledge import service
from coachforge_dataset.knowledge.schemas import AddKnowledgeDocument, CreateKnowledgeBase, SearchKnowledgeBase
from coachforge_dataset.service import DatasetDeps
from coachforge_shared.auth import READ
from coachforge_shared.http import CurrentPrincipal, needs_scope

router = APIRouter(prefix="/v1/knowledge_bases", tags=["knowledge bases"])

Order = Literal["asc", "desc"]


def _deps(request: Request) -> DatasetDeps:
    deps: DatasetDeps = request.app.state.dataset
    return deps


def _page(rows: list[dict[str, object]], has_more: bool) -> dict[str, object]:
    return {"object": "list", "data": rows, "has_more": has_more,
            "first_id": rows[0]["id"] if rows else None, "last_id": rows[-1]["id"] if rows else None}


@router.post("")
def create_knowledge_base(request: Request, principal: CurrentPrincipal,
                          body: CreateKnowledgeBase) -> dict[str, object]:
    """Create an empty knowledge base (chunk settings default to the service's)."""
    return service.to_openai(service.create_knowledge_base(_deps(request), principal.tenant_id, body))


@router.get("")
def list_knowledge_bases(request: Request, principal: CurrentPrincipal, limit: int = Query(20, ge=1, le=100),
                         after: str | None = None, order: Order = "desc") -> dict[str, object]:
    """The tenant's knowledge bases, newest first (``order=asc``: oldest first); ``after`` is an id cursor."""
    rows, has_more = service.list_knowledge_bases(_deps(request), principal.tenant_id, limit, after, order)
    return _page([service.to_openai(r) for r in rows], has_more)


@router.get("/{knowledge_base_id}")
def retrieve_knowledge_base(request: Request, principal: CurrentPrincipal, knowledge_base_id: str) -> dict[str, object]:
    return service.to_openai(service.get_knowledge_base(_deps(request), principal.tenant_id, knowledge_base_id))


@router.delete("/{knowledge_base_id}")
def delete_knowledge_base(request: Request, principal: CurrentPrincipal, knowledge_base_id: str) -> dict[str, object]:
    """Delete a knowledge base with its documents and chunks (the uploaded files stay)."""
    service.delete_knowledge_base(_deps(request), principal.tenant_id, knowledge_base_id)
    return {"id": knowledge_base_id, "object": "knowledge_base", "deleted": True}


@router.post("/{knowledge_base_id}/documents")
def add_document(request: Request, principal: CurrentPrincipal, knowledge_base_id: str,
                 body: AddKnowledgeDocument) -> dict[str, object]:
    """Add a document, chunked at once: ``{"file_id"}`` (a file uploaded with purpose ``knowledge``:
    UTF-8 text or markdown) or ``{"text", "title"?}``. Searches see it as soon as this answers."""
    row = service.add_document(_deps(request), principal.tenant_id, knowledge_base_id, body)
    return service.document_to_openai(row)


@router.get("/{knowledge_base_id}/documents")
def list_documents(request: Request, principal: CurrentPrincipal, knowledge_base_id: str,
                   limit: int = Query(20, ge=1, le=100), after: str | None = None,
                   order: Order = "desc") -> dict[str, object]:
    """The knowledge base's documents, newest first (``order=asc``: oldest first); ``after`` is an id cursor."""
    rows, has_more = service.list_documents(_deps(request), principal.tenant_id, knowledge_base_id, limit, after,
                                            order)
    return _page([service.document_to_openai(r) for r in rows], has_more)


@router.get("/{knowledge_base_id}/documents/{document_id}")
def retrieve_document(request: Request, principal: CurrentPrincipal, knowledge_base_id: str,
                      document_id: str) -> dict[str, object]:
    row = service.get_document(_deps(request), principal.tenant_id, knowledge_base_id, document_id)
    return service.document_to_openai(row)


@router.delete("/{knowledge_base_id}/documents/{document_id}")
def delete_document(request: Request, principal: CurrentPrincipal, knowledge_base_id: str,
                    document_id: str) -> dict[str, object]:
    """Delete a document and its chunks."""
    service.delete_document(_deps(request), principal.tenant_id, knowledge_base_id, document_id)
    return {"id": document_id, "object": "knowledge_base.document", "deleted": True}


@router.post("/{knowledge_base_id}/search", openapi_extra=needs_scope(READ))
def search(request: Request, principal: CurrentPrincipal, knowledge_base_id: str,
           body: SearchKnowledgeBase) -> dict[str, object]:
    """The ``top_k`` chunks that match ``query`` best (BM25), best first, each with its document and
    source; with ``max_tokens``, those of them that fit in it, taken in rank order."""
    result = service.search(_deps(request), principal.tenant_id, knowledge_base_id, body)
    return service.search_to_openai(result)
