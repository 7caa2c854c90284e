"""Dataset service settings (env prefix ``COACHFORGE_DATASET_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatasetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_DATASET_", extra="ignore")

    max_upload_bytes: int = Field(
        default=1024**3, description="Largest accepted upload in bytes; enforced while reading the stream."
    )
    max_errors_in_response: int = Field(
        default=20, description="How many invalid lines an error response lists (the total is always given)."
    )
    chunk_bytes: int = Field(default=1024 * 1024, description="Chunk size for streaming uploads and downloads.")
