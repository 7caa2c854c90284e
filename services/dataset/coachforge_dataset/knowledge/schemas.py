"""Request bodies of the knowledge base API (REST, and gRPC requests checked through the same models)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_K = 50
DEFAULT_TOP_K = 4


class CreateKnowledgeBase(BaseModel):
    """A new, empty knowledge base."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Display name (need not be unique).")
    description: str = Field("", max_length=2000, description="What the knowledge base holds.")
    chunk_tokens: int | None = Field(None, ge=16, le=2048,
                                     description="Most (approximate) tokens in one chunk, its heading line included "
                                                 "(default: the service's knowledge_chunk_tokens).")
    chunk_overlap: int | None = Field(None, ge=0, le=1023,
                                      description="Most tokens a chunk repeats from the end of the previous one, less "
                                                  "than half of chunk_tokens (default: the service's "
                                                  "knowledge_chunk_overlap).")


class AddKnowledgeDocument(BaseModel):
    """A document to add: an uploaded file (purpose ``knowledge``) or text given inline."""

    model_config = ConfigDict(extra="forbid")

    file_id: str | None = Field(None, min_length=1, max_length=64,
                                description="A file uploaded with purpose 'knowledge' (UTF-8 text or markdown).")
    text: str | None = Field(None, description="The document's text (markdown headings are kept as chunk titles).")
    title: str | None = Field(None, min_length=1, max_length=255,
                              description="Name of the source in search results (default: the file's name, or "
                                          "'inline' for text).")


class SearchKnowledgeBase(BaseModel):
    """A search of one knowledge base."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=8000, description="What to look for (e.g. the conversation's last "
                                                                  "turns).")
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="Most chunks to return, best first.")
    max_tokens: int | None = Field(None, ge=1, description="Token budget: of the top_k chunks, in rank order, those "
                                                           "that still fit are kept and the others skipped.")
