"""What a job trains on and how: its data (an uploaded file or a dataset version) and the method
settings stored with it. Shared by job creation (service), the worker and the serializers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from coachforge_shared.errors import InvalidArgument
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
    lora_alpha: int | None
    """None only for continued training from an adapter whose alpha the registry does not know: the
    parent adapter's own is used."""
    lora_dropout: float
    target_modules: str | list[str]
    max_length: int
    early_stopping_patience: int
    checkpoint_steps: int
    beta: float | None = None
    """DPO only (None for other methods): weight of the penalty between the policy and the reference model."""

    @classmethod
    def resolve(cls, settings: TrainerSettings, hp: Hyperparameters) -> MethodSettings:
        """The settings of ``hp`` with its 'auto' values filled from ``settings``; ``beta`` only for DPO
        hyperparameters (:class:`~coachforge_trainer.schemas.DpoHyperparameters`)."""
        beta = getattr(hp, "beta", None)
        return cls(
            lora_r=settings.lora_r if hp.lora_r == "auto" else hp.lora_r,
            lora_alpha=settings.lora_alpha if hp.lora_alpha == "auto" else hp.lora_alpha,
            lora_dropout=settings.lora_dropout if hp.lora_dropout == "auto" else hp.lora_dropout,
            target_modules="all-linear" if hp.target_modules == "auto" else hp.target_modules,
            max_length=settings.max_length if hp.max_length == "auto" else hp.max_length,
            early_stopping_patience=hp.early_stopping_patience,
            checkpoint_steps=settings.checkpoint_steps if hp.checkpoint_steps == "auto" else hp.checkpoint_steps,
            beta=settings.dpo_beta if beta == "auto" else beta,
        )

    def as_json(self) -> str:
        """What is stored with the job (``beta`` only when set, so other methods' jobs do not show it)."""
        stored = asdict(self)
        if stored["beta"] is None:
            del stored["beta"]
        return json.dumps(stored)

    def train_params(self, job: Job, base_learning_rate: float) -> TrainParams:
        from coachforge_trainer.sft import TrainParams

        return TrainParams(n_epochs=job.n_epochs, batch_size=job.batch_size,
                           learning_rate=base_learning_rate * job.learning_rate_multiplier, lora_r=self.lora_r,
                           lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                           target_modules=self.target_modules, max_length=self.max_length, seed=job.seed,
                           checkpoint_steps=self.checkpoint_steps,
                           early_stopping_patience=self.early_stopping_patience,
                           **({"beta": self.beta} if self.beta is not None else {}))


@dataclass(frozen=True)
class ParentAdapter:
    """What the registry knows of the fine-tuned model a job continues training from."""

    model_id: str
    base_model: str
    lora_r: int
    lora_alpha: int | None
    """From the version's lineage (the hyperparameters of the job that made it); None when unknown."""
    target_modules: list[str]
    """The modules the adapter adapts (``all-linear`` resolved), sorted."""
    all_linear: bool
    """Whether the parent was trained with ``target_modules: "all-linear"``."""

    @classmethod
    def from_registry(cls, model_id: str, base_model: str, lora_rank: int, target_modules: list[str],
                      lineage_json: str) -> ParentAdapter:
        try:
            lineage = json.loads(lineage_json or "{}")
        except ValueError:
            lineage = {}
        hp = lineage.get("hyperparameters") if isinstance(lineage, dict) else None
        hp = hp if isinstance(hp, dict) else {}
        alpha = hp.get("lora_alpha")
        return cls(model_id=model_id, base_model=base_model, lora_r=lora_rank,
                   lora_alpha=alpha if isinstance(alpha, int) and not isinstance(alpha, bool) else None,
                   target_modules=sorted(target_modules), all_linear=hp.get("target_modules") == "all-linear")


def continue_from(parent: ParentAdapter, resolved: MethodSettings, hp: Hyperparameters,
                  param: str = "hyperparameters") -> MethodSettings:
    """The method settings of a job continuing ``parent``'s training: the LoRA shape (rank, alpha,
    target modules) is the parent's. One given explicitly that differs from the parent's is a 400 on
    ``<param>.<name>``, since the parent's weights could not be loaded into another shape; the rest
    (dropout, max_length, checkpoints, ...) is the job's own (``resolved``)."""

    def refuse(name: str, asked: object, has: object) -> InvalidArgument:
        return InvalidArgument(
            f"{name}={asked!r} is incompatible with the parent model {parent.model_id}, whose adapter has "
            f"{name} {has!r}: continued training keeps the parent's LoRA shape. Leave {name} unset (or 'auto') to "
            f"inherit it, or fine-tune the base model {parent.base_model} for a new adapter.",
            param=f"{param}.{name}", code="incompatible_parent_model")

    if hp.lora_r != "auto" and hp.lora_r != parent.lora_r:
        raise refuse("lora_r", hp.lora_r, parent.lora_r)
    if hp.lora_alpha != "auto" and parent.lora_alpha is not None and hp.lora_alpha != parent.lora_alpha:
        raise refuse("lora_alpha", hp.lora_alpha, parent.lora_alpha)
    if hp.target_modules == "all-linear":
        if not parent.all_linear:
            raise refuse("target_modules", "all-linear", parent.target_modules)
    elif hp.target_modules != "auto" and sorted(set(hp.target_modules)) != parent.target_modules:
        raise refuse("target_modules", sorted(set(hp.target_modules)), parent.target_modules)
    alpha = hp.lora_alpha if hp.lora_alpha != "auto" else parent.lora_alpha
    return replace(resolved, lora_r=parent.lora_r, lora_alpha=alpha, target_modules=list(parent.target_modules))


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
