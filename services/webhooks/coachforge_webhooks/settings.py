"""Webhooks settings (env prefix ``COACHFORGE_WEBHOOKS_``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from coachforge_shared.settings import split_list
from coachforge_webhooks.destinations import IPNetwork, parse_networks
from coachforge_webhooks.sealing import SecretBox, check_keys

DEFAULT_RETRY_SCHEDULE_S = [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0]
"""The waits after failed attempts 1, 2, … (5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h)."""


class WebhooksSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_WEBHOOKS_", extra="ignore")

    consumer_group: str = Field(
        default="webhooks", description="Kafka consumer group taking the job.* and eval.run.* events that "
                                        "webhooks report.")
    timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="Timeout of one delivery attempt (connecting, sending and reading the answer), seconds; "
                    "an attempt that outlasts it counts as failed and is retried.")
    retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S),
        description="Seconds to wait after failed attempt 1, 2, … before the next one (comma-separated or a "
                    "JSON list); attempts beyond the list wait its last value.")
    max_attempts: int = Field(
        default=8, ge=1, le=100,
        description="Attempts per delivery; after the last one fails the delivery is failed for good.")
    secret_grace_s: float = Field(
        default=86_400.0, ge=0,
        description="After a secret rotation, how long the previous secret keeps signing too (a second "
                    "v1 signature), seconds.")
    poll_interval_s: float = Field(
        default=1.0, gt=0, le=60,
        description="How often the sender looks for deliveries that are due (a new event wakes it at once "
                    "in the process that consumed it).")
    batch_size: int = Field(default=50, ge=1, le=1000, description="Deliveries claimed per pass of the sender.")
    concurrency: int = Field(default=8, ge=1, le=128,
                             description="Deliveries one process sends at the same time.")
    claim_s: float = Field(
        default=60.0, gt=0,
        description="How long a claimed delivery stays away from other senders beyond timeout_s, seconds "
                    "(a process that died mid-send leaves it due again after timeout_s + claim_s).")
    max_endpoints: int = Field(default=20, ge=1, le=1000, description="Endpoints one tenant may have.")
    allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDRs, comma-separated or a JSON list) endpoints may be in although they are "
                    "loopback, private or link-local, e.g. 10.20.0.0/16 for an on-premises receiver; by default "
                    "webhooks are never sent into such networks (see coachforge_webhooks.destinations).")

    secret_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False,
        description="Random keys of at least 32 characters (comma-separated) sealing the endpoints' signing "
                    "secrets in the database: the first seals, every one opens (put a new key first to rotate). "
                    "None: secrets are stored as given out. See coachforge_webhooks.sealing.")

    @field_validator("secret_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        check_keys(value)
        return value

    def secret_box(self) -> SecretBox:
        """What seals and opens the endpoints' secrets with :attr:`secret_keys`."""
        return SecretBox(self.secret_keys)

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    def allowed(self) -> list[IPNetwork]:
        """:attr:`allowed_networks` as networks."""
        return parse_networks(self.allowed_networks)

    @field_validator("retry_schedule_s", "allowed_networks", "secret_keys", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("retry_schedule_s")
    @classmethod
    def _check_schedule(cls, value: list[float]) -> list[float]:
        if not value or any(v < 0 for v in value):
            raise ValueError("give at least one wait, none negative")
        return value

    def retry_delay_s(self, attempts: int) -> float:
        """The wait after ``attempts`` failed attempts (1: the first one failed)."""
        schedule = self.retry_schedule_s
        return float(schedule[min(max(attempts, 1), len(schedule)) - 1])
