"""Dataset service settings (env prefix ``COACHFORGE_DATASET_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatasetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_DATASET_", extra="ignore")

    max_upload_bytes: int = Field(
        default=1024**3, description="Largest accepted upload in bytes; enforced while reading the stream."
    )
    max_line_bytes: int = Field(
        default=8 * 1024**2, ge=1,
        description="Longest line of an upload in bytes (without its newline). A longer line is never held whole "
                    "in memory: it is an invalid line ('longer than the limit'), which rejects the file under the "
                    "strict policy and is dropped and reported under the lenient one.")
    max_errors_in_response: int = Field(
        default=20, description="How many invalid lines an error response lists (the total is always given)."
    )
    chunk_bytes: int = Field(default=1024 * 1024, description="Chunk size for streaming uploads and downloads.")
    default_upload_policy: Literal["strict", "lenient"] = Field(
        default="strict", description="Policy of an upload that names none: strict rejects a file with any "
                                      "invalid line; lenient drops and reports invalid lines.")
    ingest_review_confidence: float = Field(
        default=0.8, ge=0.0, le=1.0,
        description="A conversation pair read from a transcript, PDF or screenshot with a lower confidence than "
                    "this (roles guessed from who opens, OCR unsure) is flagged for review in the upload's "
                    "validation.ingest and report.")
    trainer_grpc_target: str | None = Field(
        default=None, description="Trainer gRPC address asked, before a file is deleted, whether an unfinished "
                                  "fine-tuning job uses it. Unset: the platform's gRPC target; empty: do not ask.")
    inference_grpc_target: str | None = Field(
        default=None, description="Inference gRPC address that stored chat completions are read from when a dataset "
                                  "version is built from them. Unset: the platform's gRPC target; empty: none (a "
                                  "stored_completions source is refused).")
    max_synthetic_examples: int = Field(default=50_000, description="Most examples one synthetic-data call makes.")
    eligibility_min_answer_chars: int = Field(
        default=3, ge=1, description="A final assistant answer shorter than this (whitespace aside) makes an example "
                                     "too_short in the fine-tuning eligibility check.")
    pipeline_workers: int = Field(
        default=1, description="Processes that parse and hash lines when a dataset version is built (1: in the "
                               "service process).")
    knowledge_chunk_tokens: int = Field(
        default=200, ge=16, le=2048,
        description="Default most (approximate) tokens in one chunk of a knowledge base's documents, its heading "
                    "line included; a knowledge base may set its own when it is created.")
    knowledge_chunk_overlap: int = Field(
        default=40, ge=0, le=1023,
        description="Default most tokens a chunk repeats from the end of the previous one (less than half of "
                    "the chunk size); a knowledge base may set its own when it is created.")
    knowledge_max_document_bytes: int = Field(
        default=10 * 1024**2, ge=1,
        description="Largest knowledge document in UTF-8 bytes: a file uploaded with purpose 'knowledge' or text "
                    "added inline.")
    knowledge_max_chunks: int = Field(
        default=200_000, ge=1,
        description="Most chunks in one knowledge base (its search index is held in memory while it is used); "
                    "a document that would pass it is refused.")
    knowledge_index_cache_size: int = Field(
        default=32, ge=1,
        description="Knowledge bases whose search index a process keeps in memory (least recently searched "
                    "ones are dropped first and rebuilt from the database when searched again).")
    knowledge_bm25_k1: float = Field(default=1.5, gt=0, description="BM25 term-frequency saturation (k1).")
    knowledge_bm25_b: float = Field(default=0.75, ge=0, le=1, description="BM25 length normalization (b).")

    @model_validator(mode="after")
    def _overlap_below_half_a_chunk(self) -> DatasetSettings:
        if self.knowledge_chunk_overlap * 2 >= self.knowledge_chunk_tokens:
            raise ValueError("knowledge_chunk_overlap must be less than half of knowledge_chunk_tokens")
        return self
