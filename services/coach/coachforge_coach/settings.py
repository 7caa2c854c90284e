"""Coach settings (env prefix ``COACHFORGE_COACH_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CoachSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_COACH_", extra="ignore")

    inference_grpc_target: str | None = Field(
        default=None, description="gRPC address of the inference service (default: the platform's grpc_target).")
    registry_grpc_target: str | None = Field(
        default=None, description="gRPC address of the registry (default: the platform's grpc_target).")
    dataset_grpc_target: str | None = Field(
        default=None, description="gRPC address of the dataset service, searched for training principles when a "
                                  "knowledge base is set (default: the platform's grpc_target; empty: none, the "
                                  "context has no principles).")
    knowledge_base: str | None = Field(
        default=None, pattern=r"^kb-[A-Za-z0-9_-]{1,64}$",
        description="Knowledge base (kb-…, of the requesting tenant) searched for the 'Principles:' section of every "
                    "recommendation's context; a request may name another or none. Unset: no principles, the "
                    "context is exactly the one the demo's training data uses.")
    knowledge_top_k: int = Field(default=3, ge=1, le=50, description="Most principles searched for, best first.")
    knowledge_max_tokens: int = Field(
        default=200, ge=1, description="Token budget of the principles searched for (the knowledge base's "
                                       "approximate count); the context's token_budget still decides how many stay.")
    knowledge_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Longest wait for the principles' search, seconds; past it the "
                                              "context has none.")
    default_model: str = Field(default="SmolLM2-135M-Instruct",
                               description="Model id or avatar asked when a request names none.")
    default_base_model: str = Field(default="SmolLM2-135M-Instruct",
                                    description="Tokenizer used when the registry cannot say the model's base.")
    models_dir: Path | None = Field(default=None,
                                    description="Prepared base models (tokenizers); default: the platform's.")
    token_budget: int = Field(default=600, ge=128,
                              description="Tokens the prompt (system + context) may use; older history is "
                                          "summarised to fit.")
    max_answer_tokens: int = Field(default=360, ge=32, description="Upper bound on the model's answer, tokens.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature of recommendations.")
    seed: int = Field(default=0, description="Sampling seed of recommendations.")
    inference_timeout_s: float = Field(default=120.0, gt=0, description="Timeout of one inference call, seconds.")
    tss_band: float = Field(default=0.15, gt=0, le=1,
                            description="Largest allowed change of the week's TSS, as a share (0.15 = +-15%).")
    max_hard_in_a_row: int = Field(default=2, ge=1, description="Most consecutive hard days a change may create.")
    hrv_baseline_days: int = Field(default=28, ge=3,
                                   description="Days averaged for the HRV baseline when the athlete has none.")
    history_limit: int = Field(default=100, ge=1, le=1000, description="Most changes listed per history page.")
    outcomes_consumer_group: str = Field(
        default="coachforge-coach-outcomes",
        description="Consumer group of completion.stored events: an outcome kept because its completion was not "
                    "stored yet is sent as soon as it is.")
    outcome_retry_interval_s: float = Field(
        default=5.0, gt=0, description="How often outcomes not recorded yet are looked for and sent again, seconds.")
    outcome_retry_base_s: float = Field(
        default=1.0, gt=0, description="Wait before the second attempt to send an outcome, seconds; doubled after "
                                       "every failed attempt up to outcome_retry_max_s.")
    outcome_retry_max_s: float = Field(default=300.0, gt=0,
                                       description="Longest wait between two attempts to send an outcome, seconds.")
    outcome_max_age_s: float = Field(
        default=30 * 86400.0, gt=0,
        description="An outcome whose completion inference still does not have after this long is given up "
                    "(status expired, logged and counted), seconds.")
    outcome_claim_s: float = Field(
        default=60.0, gt=0, description="How long one process holds an outcome it is sending before another may "
                                        "take it over (longer than one feedback call), seconds.")
