"""What a job trains on and how: its data (an uploaded file or a dataset version) and the method
settings stored with it. Shared by job creation (service), the worker and the serializers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from coachforge_trainer.models import Job
from coachforge_trainer.schemas import Hyperparameters
from coachforge_trainer.settings import TrainerSettings

if TYPE_CHECKING:
    from coachforge_trainer.sft import TrainParams


def is_dataset_version(item_id: str | None) -> bool:
    """Whether a job's training or validation "file" is a dataset version id (``dsv-…``)."""
    return bool(item_id) and str(item_id).startswith("dsv-")


@dataclass(frozen=True)
class MethodSettings:
    """A job's resolved training settings beyond OpenAI's hyperparameters, stored with the job."""

    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: str | list[str]
    max_length: int
    early_stopping_patience: int
    checkpoint_steps: int

    @classmethod
    def resolve(cls, settings: TrainerSettings, hp: Hyperparameters) -> MethodSettings:
        return cls(
            lora_r=settings.lora_r if hp.lora_r == "auto" else hp.lora_r,
            lora_alpha=settings.lora_alpha if hp.lora_alpha == "auto" else hp.lora_alpha,
            lora_dropout=settings.lora_dropout if hp.lora_dropout == "auto" else hp.lora_dropout,
            target_modules="all-linear" if hp.target_modules == "auto" else hp.target_modules,
            max_length=settings.max_length if hp.max_length == "auto" else hp.max_length,
            early_stopping_patience=hp.early_stopping_patience,
            checkpoint_steps=settings.checkpoint_steps if hp.checkpoint_steps == "auto" else hp.checkpoint_steps,
        )

    def train_params(self, job: Job, base_learning_rate: float) -> TrainParams:
        from coachforge_trainer.sft import TrainParams

        return TrainParams(n_epochs=job.n_epochs, batch_size=job.batch_size,
                           learning_rate=base_learning_rate * job.learning_rate_multiplier, lora_r=self.lora_r,
                           lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                           target_modules=self.target_modules, max_length=self.max_length, seed=job.seed,
                           checkpoint_steps=self.checkpoint_steps,
                           early_stopping_patience=self.early_stopping_patience)


def method_settings(settings: TrainerSettings, job: Job) -> MethodSettings:
    """The job's stored method settings (defaults from ``settings`` for jobs created before they existed)."""
    stored = json.loads(job.method_json or "{}")
    defaults = asdict(MethodSettings.resolve(settings, Hyperparameters()))
    return MethodSettings(**{**defaults, **stored})


def job_hyperparameters(job: Job) -> dict[str, Any]:
    """The job's hyperparameters as OpenAI reports them, plus its method settings."""
    hp: dict[str, Any] = {"n_epochs": job.n_epochs, "batch_size": job.batch_size,
                          "learning_rate_multiplier": job.learning_rate_multiplier}
    hp.update(json.loads(job.method_json or "{}"))
    return hp
