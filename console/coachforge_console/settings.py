"""Console settings (env prefix ``COACHFORGE_CONSOLE_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_CONSOLE_", extra="ignore")

    api_url: str | None = Field(
        default=None,
        description="Base URL of the REST API the console calls (without /v1), e.g. http://coachforge-inference:8000. "
                    "Unset: the API of the same process, called in-process (the all-in-one mode).")
    api_routes: dict[str, str] = Field(
        default_factory=dict,
        description="Path prefix -> base URL, for an API split over several services (JSON, e.g. "
                    '{"/v1/fine_tuning": "http://coachforge-trainer:8000"}); the longest matching prefix wins, '
                    "other paths go to api_url.")
    api_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one API call, seconds.")
    secret_key: str | None = Field(
        default=None, min_length=16,
        description="Key that encrypts and signs the session cookie and the CSRF tokens. Unset: generated at "
                    "start, so sessions end when the process restarts and work on one replica only; set the "
                    "same value on every replica.")
    session_max_age_s: int = Field(default=8 * 3600, ge=60, description="How long a sign-in lasts, seconds.")
    cookie_secure: bool | None = Field(
        default=None, description="Mark the session cookie Secure. Unset: when the request came over https "
                                  "(directly or as X-Forwarded-Proto).")
    poll_interval_ms: int = Field(default=2000, ge=250, le=2000,
                                  description="How often live pages (a running job) refresh, milliseconds.")
