"""Knowledge bases: create, list, delete; documents added from uploaded ``knowledge`` files or
inline text, chunked as they are added (in the transaction that stores them); BM25 search within
a token budget. Every call is scoped to one tenant: another tenant's knowledge base is not found."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.orm import Session

from coachforge_dataset import service
from coachforge_dataset.knowledge.chunking import chunk_text
from coachforge_dataset.knowledge.retrieval import CachedIndex, KnowledgeIndex, within_budget
from coachforge_dataset.knowledge.schemas import AddKnowledgeDocument, CreateKnowledgeBase, SearchKnowledgeBase
from coachforge_dataset.metrics import KNOWLEDGE_DOCUMENTS, KNOWLEDGE_INDEX_BUILDS, KNOWLEDGE_SEARCH
from coachforge_dataset.models import KnowledgeBase, KnowledgeChunk, KnowledgeDocument
from coachforge_dataset.service import KNOWLEDGE_PURPOSE, DatasetDeps
from coachforge_shared.errors import FailedPrecondition, InvalidArgument, NotFound, PayloadTooLarge
from coachforge_shared.ids import new_id, to_unix, utcnow
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.dataset.knowledge")

INLINE_SOURCE = "inline"
"""Source name of a document given as inline text without a title."""
MAX_PAGE = 100


def create_knowledge_base(deps: DatasetDeps, tenant_id: str, body: CreateKnowledgeBase) -> KnowledgeBase:
    """A new, empty knowledge base; chunk settings not given are the service's defaults (the
    default overlap is lowered below half of a smaller chunk size)."""
    chunk_tokens = body.chunk_tokens or deps.settings.knowledge_chunk_tokens
    overlap = body.chunk_overlap
    if overlap is None:
        overlap = min(deps.settings.knowledge_chunk_overlap, (chunk_tokens - 1) // 2)
    elif overlap * 2 >= chunk_tokens:
        raise InvalidArgument(f"chunk_overlap ({overlap}) must be less than half of chunk_tokens ({chunk_tokens}).",
                              param="chunk_overlap")
    row = KnowledgeBase(id=new_id("kb"), tenant_id=tenant_id, name=body.name, description=body.description,
                        chunk_tokens=chunk_tokens, chunk_overlap=overlap, document_count=0, chunk_count=0,
                        token_count=0, bytes=0, revision=0)
    with deps.db.session() as s:
        s.add(row)
    log.info("knowledge base created", knowledge_base_id=row.id, tenant=tenant_id)
    return row


def get_knowledge_base(deps: DatasetDeps, tenant_id: str, kb_id: str) -> KnowledgeBase:
    with deps.db.session() as s:
        row = s.scalar(select(KnowledgeBase).where(KnowledgeBase.id == kb_id, KnowledgeBase.tenant_id == tenant_id))
    if row is None:
        raise NotFound(f"No such knowledge base: {kb_id}", param="knowledge_base_id", code="knowledge_base_not_found")
    return row


Row = TypeVar("Row", KnowledgeBase, KnowledgeDocument)


def _page(s: Session, model: type[Row], where: list[ColumnElement[bool]], limit: int, after: str | None,
          order: str) -> tuple[list[Row], bool]:
    """One page of ``model`` rows matching ``where``, as OpenAI lists: by creation time (``desc``:
    newest first), ``after`` the id of the last row of the previous page."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidArgument("order must be 'asc' or 'desc'.", param="order")
    q = select(model).where(*where)
    if after:
        anchor = s.scalar(select(model).where(model.id == after, *where))
        if anchor is None:
            raise InvalidArgument(f"Unknown cursor {after}.", param="after")
        if order == "desc":
            q = q.where((model.created_at < anchor.created_at)
                        | ((model.created_at == anchor.created_at) & (model.id > anchor.id)))
        else:
            q = q.where((model.created_at > anchor.created_at)
                        | ((model.created_at == anchor.created_at) & (model.id < anchor.id)))
    if order == "desc":
        q = q.order_by(model.created_at.desc(), model.id)
    else:
        q = q.order_by(model.created_at, model.id.desc())
    rows = list(s.scalars(q.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_knowledge_bases(deps: DatasetDeps, tenant_id: str, limit: int = 20, after: str | None = None,
                         order: str = "desc") -> tuple[list[KnowledgeBase], bool]:
    """One page of the tenant's knowledge bases and whether more follow."""
    with deps.db.session() as s:
        return _page(s, KnowledgeBase, [KnowledgeBase.tenant_id == tenant_id], limit, after, order)


def delete_knowledge_base(deps: DatasetDeps, tenant_id: str, kb_id: str) -> None:
    """Delete a knowledge base with its documents and chunks (the files they were read from stay)."""
    with deps.db.session() as s:
        found = s.execute(delete(KnowledgeBase).where(KnowledgeBase.id == kb_id, KnowledgeBase.tenant_id == tenant_id)
                          .returning(KnowledgeBase.id)).first()
        if found is None:
            raise NotFound(f"No such knowledge base: {kb_id}", param="knowledge_base_id",
                           code="knowledge_base_not_found")
        # the foreign keys cascade too; said here so that no backend setting is relied on
        s.execute(delete(KnowledgeChunk).where(KnowledgeChunk.knowledge_base_id == kb_id))
        s.execute(delete(KnowledgeDocument).where(KnowledgeDocument.knowledge_base_id == kb_id))
    deps.knowledge_indexes.drop(kb_id)
    log.info("knowledge base deleted", knowledge_base_id=kb_id, tenant=tenant_id)


def _file_text(deps: DatasetDeps, tenant_id: str, file_id: str) -> tuple[str, bytes, str]:
    """The text, bytes and name of an uploaded knowledge file (errors name ``file_id``)."""
    try:
        row = service.get_file(deps, tenant_id, file_id)
    except NotFound:
        raise InvalidArgument(f"No such File object: {file_id}", param="file_id", code="file_not_found") from None
    if row.purpose != KNOWLEDGE_PURPOSE:
        raise InvalidArgument(f"File {file_id} has purpose {row.purpose!r}; a knowledge document is read from a file "
                              f"uploaded with purpose {KNOWLEDGE_PURPOSE!r} (UTF-8 text or markdown).",
                              param="file_id", code="invalid_file_purpose")
    limit = deps.settings.knowledge_max_document_bytes
    if row.bytes > limit:
        raise InvalidArgument(f"File {file_id} has {row.bytes} bytes; a knowledge document has at most {limit}.",
                              param="file_id", code="document_too_large")
    raw = b"".join(service.content_chunks(deps, row))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidArgument(f"File {file_id} is not UTF-8 text (invalid byte at offset {err.start}).",
                              param="file_id", code="invalid_file_format") from None
    if "\x00" in text:
        raise InvalidArgument(f"File {file_id} is binary (it contains NUL bytes).", param="file_id",
                              code="invalid_file_format")
    return text.removeprefix("\ufeff"), raw, row.filename


def _inline_text(deps: DatasetDeps, text: str) -> bytes:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("text is not valid Unicode (it contains a lone surrogate).", param="text",
                              code="invalid_text") from None
    limit = deps.settings.knowledge_max_document_bytes
    if len(raw) > limit:
        raise PayloadTooLarge(f"text has {len(raw)} UTF-8 bytes; a knowledge document has at most {limit}.",
                              param="text", code="document_too_large")
    if "\x00" in text:
        raise InvalidArgument("text contains NUL characters.", param="text", code="invalid_text")
    return raw


def add_document(deps: DatasetDeps, tenant_id: str, kb_id: str, body: AddKnowledgeDocument) -> KnowledgeDocument:
    """Chunk a document with the knowledge base's settings and store it with its chunks, in one
    transaction that also updates the knowledge base's counts and revision (searches rebuild their
    index). A document is an uploaded file of purpose ``knowledge`` or inline text; bad input is
    refused naming ``file_id`` or ``text`` and nothing is stored."""
    kb = get_knowledge_base(deps, tenant_id, kb_id)
    if body.file_id is not None and body.text is not None:
        raise InvalidArgument("Give file_id or text, not both.", param="text")
    if body.file_id is not None:
        param = "file_id"
        text, raw, source = _file_text(deps, tenant_id, body.file_id)
    elif body.text is not None:
        param = "text"
        text, raw, source = body.text, _inline_text(deps, body.text), INLINE_SOURCE
    else:
        raise InvalidArgument(f"Give file_id (a file uploaded with purpose {KNOWLEDGE_PURPOSE!r}) or text.",
                              param="file_id")
    chunks = chunk_text(text, kb.chunk_tokens, kb.chunk_overlap)
    if not chunks:
        what = f"File {body.file_id}" if body.file_id is not None else "text"
        raise InvalidArgument(f"{what} has no text to search (it is empty, blank or only headings).", param=param,
                              code="empty_document")
    tokens = [c.tokens for c in chunks]
    doc = KnowledgeDocument(id=new_id("kbdoc"), tenant_id=tenant_id, knowledge_base_id=kb.id, file_id=body.file_id,
                            filename=body.title or source, bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest(),
                            chunk_count=len(chunks), token_count=sum(tokens), status="completed")
    limit = deps.settings.knowledge_max_chunks
    with deps.db.session() as s:
        # the knowledge base's row first: it is locked until this commits (adds and deletes of one
        # knowledge base take turns), and a knowledge base deleted meanwhile is not written to
        counts = s.execute(
            update(KnowledgeBase).where(KnowledgeBase.id == kb.id, KnowledgeBase.tenant_id == tenant_id)
            .values(document_count=KnowledgeBase.document_count + 1,
                    chunk_count=KnowledgeBase.chunk_count + len(chunks),
                    token_count=KnowledgeBase.token_count + doc.token_count, bytes=KnowledgeBase.bytes + doc.bytes,
                    revision=KnowledgeBase.revision + 1, updated_at=utcnow())
            .returning(KnowledgeBase.chunk_count)).first()
        if counts is None:
            raise NotFound(f"No such knowledge base: {kb_id}", param="knowledge_base_id",
                           code="knowledge_base_not_found")
        if counts[0] > limit:
            raise FailedPrecondition(f"Knowledge base {kb_id} would have {counts[0]} chunks with this document; it may "
                                     f"have at most {limit}.", param=param, code="knowledge_base_full")
        s.add(doc)
        s.flush()
        s.execute(insert(KnowledgeChunk), [
            {"id": new_id("kbchunk"), "knowledge_base_id": kb.id, "document_id": doc.id, "ordinal": c.ordinal,
             "heading": c.heading, "text": c.text, "tokens": t, "char_start": c.start, "char_end": c.end}
            for c, t in zip(chunks, tokens, strict=True)])
    KNOWLEDGE_DOCUMENTS.labels(tenant_id, "added").inc()
    log.info("knowledge document added", knowledge_base_id=kb.id, document_id=doc.id, tenant=tenant_id,
             chunks=len(chunks), tokens=doc.token_count)
    return doc


def list_documents(deps: DatasetDeps, tenant_id: str, kb_id: str, limit: int = 20, after: str | None = None,
                   order: str = "desc") -> tuple[list[KnowledgeDocument], bool]:
    get_knowledge_base(deps, tenant_id, kb_id)
    with deps.db.session() as s:
        return _page(s, KnowledgeDocument, [KnowledgeDocument.knowledge_base_id == kb_id,
                                            KnowledgeDocument.tenant_id == tenant_id], limit, after, order)


def _document_not_found(document_id: str) -> NotFound:
    return NotFound(f"No such document: {document_id}", param="document_id", code="document_not_found")


def get_document(deps: DatasetDeps, tenant_id: str, kb_id: str, document_id: str) -> KnowledgeDocument:
    get_knowledge_base(deps, tenant_id, kb_id)
    with deps.db.session() as s:
        row = s.scalar(select(KnowledgeDocument).where(KnowledgeDocument.id == document_id,
                                                       KnowledgeDocument.knowledge_base_id == kb_id,
                                                       KnowledgeDocument.tenant_id == tenant_id))
    if row is None:
        raise _document_not_found(document_id)
    return row


def delete_document(deps: DatasetDeps, tenant_id: str, kb_id: str, document_id: str) -> None:
    """Delete a document and its chunks; the knowledge base's counts and revision follow."""
    get_knowledge_base(deps, tenant_id, kb_id)
    with deps.db.session() as s:
        bumped = s.execute(update(KnowledgeBase).where(KnowledgeBase.id == kb_id, KnowledgeBase.tenant_id == tenant_id)
                           .values(revision=KnowledgeBase.revision + 1, updated_at=utcnow())
                           .returning(KnowledgeBase.id)).first()
        if bumped is None:
            raise NotFound(f"No such knowledge base: {kb_id}", param="knowledge_base_id",
                           code="knowledge_base_not_found")
        doc = s.execute(delete(KnowledgeDocument).where(KnowledgeDocument.id == document_id,
                                                        KnowledgeDocument.knowledge_base_id == kb_id,
                                                        KnowledgeDocument.tenant_id == tenant_id)
                        .returning(KnowledgeDocument.chunk_count, KnowledgeDocument.token_count,
                                   KnowledgeDocument.bytes)).first()
        if doc is None:
            raise _document_not_found(document_id)
        s.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == document_id))
        s.execute(update(KnowledgeBase).where(KnowledgeBase.id == kb_id)
                  .values(document_count=KnowledgeBase.document_count - 1,
                          chunk_count=KnowledgeBase.chunk_count - doc.chunk_count,
                          token_count=KnowledgeBase.token_count - doc.token_count,
                          bytes=KnowledgeBase.bytes - doc.bytes))
    KNOWLEDGE_DOCUMENTS.labels(tenant_id, "deleted").inc()
    log.info("knowledge document deleted", knowledge_base_id=kb_id, document_id=document_id, tenant=tenant_id)


@dataclass(frozen=True)
class SearchHit:
    """One chunk a search returned."""

    chunk_id: str
    document_id: str
    source: str
    """The document's title or file name."""
    score: float
    text: str
    tokens: int


@dataclass(frozen=True)
class SearchResult:
    knowledge_base_id: str
    query: str
    hits: list[SearchHit]

    @property
    def total_tokens(self) -> int:
        return sum(h.tokens for h in self.hits)


def _build_index(deps: DatasetDeps, kb_id: str, revision: int) -> CachedIndex:
    """The index of a knowledge base's chunks as the database has them now (at least ``revision``):
    documents in the order they were added, each document's chunks in order."""
    started = time.perf_counter()
    with deps.db.session() as s:
        rows = s.execute(select(KnowledgeChunk.id, KnowledgeChunk.text)
                         .join(KnowledgeDocument, KnowledgeDocument.id == KnowledgeChunk.document_id)
                         .where(KnowledgeChunk.knowledge_base_id == kb_id)
                         .order_by(KnowledgeDocument.created_at, KnowledgeDocument.id, KnowledgeChunk.ordinal)).all()
    index = KnowledgeIndex((r.text for r in rows), k1=deps.settings.knowledge_bm25_k1, b=deps.settings.knowledge_bm25_b)
    seconds = time.perf_counter() - started
    KNOWLEDGE_INDEX_BUILDS.observe(seconds)
    log.info("knowledge index built", knowledge_base_id=kb_id, revision=revision, chunks=len(rows),
             seconds=round(seconds, 3))
    return CachedIndex(revision, [r.id for r in rows], index)


def search(deps: DatasetDeps, tenant_id: str, kb_id: str, body: SearchKnowledgeBase) -> SearchResult:
    """The ``top_k`` chunks that match ``query`` best by BM25, best first (equal scores: earlier
    document, then earlier chunk); with ``max_tokens``, those of them that fit in it, taken in rank
    order (one that does not fit is skipped, the next ones are still tried). A query with no term
    known to the knowledge base finds nothing."""
    started = time.perf_counter()
    kb = get_knowledge_base(deps, tenant_id, kb_id)
    cached, built = deps.knowledge_indexes.get(kb.id, kb.revision, lambda: _build_index(deps, kb.id, kb.revision))
    ranked = cached.index.search(body.query, body.top_k)
    ids = [cached.chunk_ids[h.position] for h in ranked]
    found: dict[str, Any] = {}
    if ids:
        with deps.db.session() as s:
            rows = s.execute(select(KnowledgeChunk.id, KnowledgeChunk.document_id, KnowledgeChunk.text,
                                    KnowledgeChunk.tokens, KnowledgeDocument.filename)
                             .join(KnowledgeDocument, KnowledgeDocument.id == KnowledgeChunk.document_id)
                             .where(KnowledgeChunk.id.in_(ids))).all()
        found = {r.id: r for r in rows}
    hits = [SearchHit(chunk_id=chunk_id, document_id=found[chunk_id].document_id, source=found[chunk_id].filename,
                      score=h.score, text=found[chunk_id].text, tokens=found[chunk_id].tokens)
            for chunk_id, h in zip(ids, ranked, strict=True) if chunk_id in found]  # a chunk deleted meanwhile: gone
    hits = within_budget(hits, lambda h: h.tokens, body.max_tokens)
    KNOWLEDGE_SEARCH.labels(tenant_id, "built" if built else "cached").observe(time.perf_counter() - started)
    return SearchResult(kb.id, body.query, hits)


def to_openai(row: KnowledgeBase) -> dict[str, object]:
    return {"id": row.id, "object": "knowledge_base", "name": row.name, "description": row.description,
            "created_at": to_unix(row.created_at), "updated_at": to_unix(row.updated_at),
            "chunk_tokens": row.chunk_tokens, "chunk_overlap": row.chunk_overlap,
            "document_count": row.document_count, "chunk_count": row.chunk_count, "token_count": row.token_count,
            "bytes": row.bytes}


def document_to_openai(row: KnowledgeDocument) -> dict[str, object]:
    return {"id": row.id, "object": "knowledge_base.document", "knowledge_base_id": row.knowledge_base_id,
            "file_id": row.file_id, "filename": row.filename, "bytes": row.bytes, "sha256": row.sha256,
            "chunk_count": row.chunk_count, "token_count": row.token_count, "status": row.status,
            "created_at": to_unix(row.created_at)}


def hit_to_openai(hit: SearchHit) -> dict[str, object]:
    return {"object": "knowledge_base.search_result", "chunk_id": hit.chunk_id, "document_id": hit.document_id,
            "source": hit.source, "score": round(hit.score, 6), "text": hit.text, "tokens": hit.tokens}


def search_to_openai(result: SearchResult) -> dict[str, object]:
    data = [hit_to_openai(h) for h in result.hits]
    return {"object": "list", "knowledge_base_id": result.knowledge_base_id, "query": result.query, "data": data,
            "total_tokens": result.total_tokens, "has_more": False,
            "first_id": result.hits[0].chunk_id if result.hits else None,
            "last_id": result.hits[-1].chunk_id if result.hits else None}
