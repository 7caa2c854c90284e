"""Trainer service settings (env prefix ``COACHFORGE_TRAINER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COACHFORGE_TRAINER_", extra="ignore")

    dataset_grpc_target: str | None = Field(
        default=None, description="gRPC address of the dataset service (default: the platform's grpc_target).")
    registry_grpc_target: str | None = Field(
        default=None, description="gRPC address of the registry service (default: the platform's grpc_target).")
    default_n_epochs: int = Field(default=3, description="Epochs when the job asks for 'auto'.")
    default_batch_size: int = Field(default=8, description="Batch size when the job asks for 'auto'.")
    base_learning_rate: float = Field(
        default=5e-4, description="Learning rate that learning_rate_multiplier scales (LoRA on small models).")
    lora_r: int = Field(default=16, description="LoRA rank of new adapters.")
    max_lora_rank: int = Field(
        default=16, description="Largest LoRA rank the serving engines accept (vLLM --max-lora-rank); jobs asking "
                                "for more are refused at creation.")
    lora_alpha: int = Field(default=32, description="LoRA alpha of new adapters.")
    lora_dropout: float = Field(
        default=0.0, description="LoRA dropout when the job gives none. 0 skips a dropout copy of every adapted "
                                 "layer's input: on CPU 8% more tokens/s and 15% less memory than 0.05 "
                                 "(bench/train_throughput.py).")
    dpo_beta: float = Field(
        default=0.1, gt=0,
        description="DPO's beta when a dpo job asks for 'auto': weight of the penalty that keeps the trained model "
                    "near the reference (the base model, or the parent model's adapter for continued training).")
    max_length: int = Field(
        default=1024, description="Longest example in tokens when the job gives no max_length (longer ones are "
                                  "refused at job creation); the coach prompts are 500-650 tokens.")
    default_seed: int = Field(default=42, description="Seed when the job gives none.")
    consumer_group: str = Field(default="trainer-workers", description="Kafka consumer group of the workers.")
    worker_id: str | None = Field(default=None, description="Name of this worker (default: host name + pid).")
    lease_seconds: float = Field(
        default=60.0, gt=0,
        description="A running job's worker renews its lease this often x3; a job whose lease expired (its worker "
                    "died) is queued again and resumes from its last checkpoint.")
    max_attempts: int = Field(
        default=3, ge=1, description="A job whose worker was lost this many times fails instead of being queued again.")
    concurrency: int = Field(
        default=1, ge=1,
        description="Jobs one worker process trains at once (its slots): a free slot claims the oldest queued job "
                    "from the database. On a GPU node keep one per GPU the process may use.")
    claim_scan_seconds: float = Field(
        default=10.0, gt=0,
        description="An idle slot looks for a queued job this often even when no train.requested event woke it, "
                    "so a job whose event was lost, or went to a busy worker, is still trained by any idle one.")
    checkpoint_steps: int = Field(
        default=0, ge=0, description="Default checkpoint interval in optimizer steps; 0 = at each epoch end.")
    metrics_port: int | None = Field(
        default=None, description="Serve the worker's Prometheus metrics on this port (none: not served).")
    price_per_million_tokens: float = Field(
        default=3.0, ge=0, description="Training price per 1M trained tokens (tokens x epochs), for estimates.")
    estimated_tokens_per_second: float = Field(
        default=90.0, gt=0,
        description="Training throughput assumed for the time estimate before a job starts (tokens/s; about 90 "
                    "for the small model on two CPU cores, thousands on a GPU).")

    min_usable_examples: int = Field(
        default=10, ge=1,
        description="A training file with fewer usable examples (the dataset service's eligibility check: no "
                    "duplicates, no near-empty answers, no schema-invalid structured answers) is refused at job "
                    "creation (400 invalid_training_file).")
    warn_usable_examples: int = Field(
        default=50, ge=1,
        description="Fewer usable examples than this still create the job, with a warning in its events and "
                    "in the dry-run answer.")
    device_class: str = Field(
        default="cpu",
        description="Worker class the estimates assume: 'cpu' for the CPU workers, 'cuda' for the chart's GPU "
                    "workers. It picks the tokens/s, the price and the presets below.")
    unsloth_installed: bool | None = Field(
        default=None,
        description="Whether the workers have unsloth installed (the 'unsloth' backend needs it and CUDA "
                    "workers, device_class 'cuda'). Unset: whether this process finds it, right where the workers "
                    "share the API's environment (the all-in-one); set it true where the workers' image has "
                    "unsloth and the API's does not.")
    remotes_file: str | None = Field(
        default=None,
        description='JSON file of the tenants\' remote fine-tuning APIs for the openai_compatible backend: '
                    '{"<tenant id>": {"base_url": "https://api.openai.com/v1", "api_key": "..."}}. Read again '
                    "whenever it is used, so a mounted Kubernetes Secret can change without a restart. A tenant "
                    "without an entry (or no file) cannot use that backend (400 backend_not_configured).")
    remote_concurrency: int = Field(
        default=4, ge=0,
        description="Remote jobs (backend openai_compatible) one worker process follows at once, besides its "
                    "training slots: following a remote job trains nothing here, so it never holds a training "
                    "slot. 0: this worker follows none.")
    remote_poll_seconds: float = Field(
        default=5.0, gt=0,
        description="How often a followed remote job is polled for its status, events and metrics.")
    tokens_per_second: dict[str, float] = Field(
        default_factory=lambda: {"cpu": 150.0, "cuda": 3000.0},
        description="Training throughput per device class, tokens/s, for the time estimate (JSON object). A "
                    "device missing here uses estimated_tokens_per_second.")
    price_table: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='Training price per 1M trained tokens by base model and device class, JSON like '
                    '{"SmolLM2-135M-Instruct": {"cpu": 1.0, "cuda": 4.0}}; a model or device missing here '
                    "costs price_per_million_tokens.")
    presets: dict[str, dict[str, dict[str, float | int]]] = Field(
        default_factory=lambda: {
            # On a CPU, measured with bench/demo_defaults.py on the demo's 80 coach examples: batch 4 at
            # twice the base rate (1e-3) ends epoch 2 at 100% valid JSON and 88% of answers matching the
            # rules (epoch 3: the same), where the job defaults (batch 8 at 5e-4, 3 epochs) end at 0% valid.
            # balanced is that batch and rate for 3 epochs (room for data less regular than the demo's);
            # quick is one pass; thorough trains longer with twice the rank (capped at max_lora_rank,
            # which the serving engines accept). A job without a preset keeps the defaults above
            # (default_n_epochs, default_batch_size, multiplier 1, lora_r), OpenAI's "auto".
            "cpu": {"quick": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0, "lora_r": 16},
                    "balanced": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 2.0, "lora_r": 16},
                    "thorough": {"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 2.0, "lora_r": 32}},
            # On a GPU larger batches fit; the multiplier rises with the batch (fewer, larger steps).
            "cuda": {"quick": {"n_epochs": 1, "batch_size": 16, "learning_rate_multiplier": 2.0, "lora_r": 16},
                     "balanced": {"n_epochs": 3, "batch_size": 16, "learning_rate_multiplier": 2.0, "lora_r": 16},
                     "thorough": {"n_epochs": 5, "batch_size": 16, "learning_rate_multiplier": 2.0, "lora_r": 32}},
        },
        description="Hyperparameter presets per device class (JSON object {device: {preset: {n_epochs, batch_size, "
                    "learning_rate_multiplier, lora_r}}}): a job's 'preset' fills the hyperparameters it leaves "
                    "'auto'. A preset's batch_size is capped at a quarter of the examples like the default one; its "
                    "lora_r at max_lora_rank.")

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3
