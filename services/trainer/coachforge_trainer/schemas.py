"""Request bodies of the fine-tuning API (OpenAI-compatible)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coachforge_shared.errors import InvalidArgument

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = Field("auto", description="Passes over the data.")
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = Field("auto", description="Examples per step.")
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = Field(
        "auto", description="Scales the base learning rate.")
    # Method settings beyond OpenAI's three (the SDK passes them through in the same object).
    lora_r: Auto | Annotated[int, Field(ge=1, le=256)] = Field("auto", description="LoRA rank.")
    lora_alpha: Auto | Annotated[int, Field(ge=1, le=1024)] = Field("auto", description="LoRA alpha (scaling).")
    lora_dropout: Auto | Annotated[float, Field(ge=0, lt=1)] = Field("auto", description="LoRA dropout.")
    target_modules: Auto | Literal["all-linear"] | Annotated[list[Annotated[str, Field(
        pattern=r"^[A-Za-z0-9_.]+$")]], Field(min_length=1)] = Field(
        "auto", description="Module names to adapt (e.g. q_proj, v_proj) or 'all-linear'.")
    max_length: Auto | Annotated[int, Field(ge=16, le=32768)] = Field(
        "auto", description="Examples longer than this many tokens are rejected at job creation.")
    early_stopping_patience: Annotated[int, Field(ge=0, le=100)] = Field(
        0, description="Stop after this many evaluations without a lower validation loss (needs a "
                       "validation file); 0 never stops early.")
    checkpoint_steps: Auto | Annotated[int, Field(ge=0)] = Field(
        "auto", description="Save a checkpoint every this many steps; 0 = at each epoch end.")


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = Field(
        "auto", description="Weight of the penalty between the policy and the reference model (DPO).")


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(BaseModel):
    """OpenAI's ``method``: its ``type`` and that type's settings (the other types' keys may not be given)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None

    def settings(self) -> SupervisedMethod | DpoMethod | None:
        """The settings object of the method's own type (None when not given)."""
        found: SupervisedMethod | DpoMethod | None = getattr(self, self.type) if self.type != "reinforcement" else None
        return found


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description=(
        "Base model id, or a fine-tuned model id (ft:…) of the tenant to continue training its adapter."))
    training_file: str = Field(min_length=1, description=(
        "Id of an uploaded file with purpose fine-tune, or of a dataset version (dsv-…) to train on its "
        "train split."))
    validation_file: str | None = Field(None, description=(
        "Id of an uploaded file, or of a dataset version for its validation split. When omitted and "
        "training_file is a dataset version with a validation split, that split is used (and reported "
        "here as the version's id)."))
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$",
                               description="Up to 64 characters added to the fine-tuned model name.")
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    # Beyond OpenAI's body (the SDK sends them with extra_body).
    preset: str | None = Field(None, max_length=32, description=(
        "Hyperparameter preset: quick, balanced or thorough (the trainer's presets table for its device "
        "class). It fills the hyperparameters left 'auto'; explicit values win."))
    dry_run: bool = Field(False, description=(
        "Validate everything a real create would and answer the estimate (fine_tuning.job.estimate) "
        "without creating a job."))

    backend: str = Field("trl", min_length=1, max_length=32, description=(
        "Training backend: trl (default), unsloth (CUDA workers with unsloth installed) or openai_compatible (the "
        "tenant's remote OpenAI-compatible fine-tuning API, where the trainer has one configured for the tenant)."))

    @property
    def method_type(self) -> str:
        """``supervised`` unless ``method`` names another type."""
        return self.method.type if self.method is not None else "supervised"

    def check_method(self) -> None:
        """Refuse a ``method`` carrying another type's settings (400 on that key)."""
        if self.method is None:
            return
        for other in ("supervised", "dpo", "reinforcement"):
            if other != self.method.type and getattr(self.method, other) is not None:
                raise InvalidArgument(f"method.type is {self.method.type!r} but method.{other} is given; give the "
                                      f"settings of method.{self.method.type} only.", param=f"method.{other}",
                                      code="invalid_method")

    def hyperparameters_param(self) -> str:
        """Where the hyperparameters were given, for error ``param``s: ``method.<type>.hyperparameters``
        when ``method`` carries them, else ``hyperparameters`` (OpenAI's deprecated top-level object)."""
        settings = self.method.settings() if self.method is not None else None
        if settings is not None and settings.model_fields_set & {"hyperparameters"}:
            return f"method.{self.method_type}.hyperparameters"
        return "hyperparameters"

    def resolved_hyperparameters(self) -> Hyperparameters:
        """The hyperparameters of ``method`` (OpenAI's current place) merged with the deprecated top-level
        ``hyperparameters``: a setting given in only one of them is used; one given in both with
        different values is a 400 naming the top-level one. For ``dpo`` the result carries ``beta``."""
        settings = self.method.settings() if self.method is not None else None
        given = settings.hyperparameters if settings is not None else None
        top = self.hyperparameters
        if given is None:
            kind = DpoHyperparameters if self.method_type == "dpo" else Hyperparameters
            return kind.model_validate(top.model_dump(exclude_unset=True)) if top is not None else kind()
        if top is None:
            return given
        merged = given.model_dump(exclude_unset=True)
        for name in sorted(top.model_fields_set):
            value = getattr(top, name)
            if name in given.model_fields_set and getattr(given, name) != value:
                raise InvalidArgument(
                    f"hyperparameters.{name}={value!r} conflicts with method.{self.method_type}.hyperparameters."
                    f"{name}={getattr(given, name)!r}; the top-level hyperparameters are deprecated: give them "
                    f"under method.{self.method_type}.hyperparameters only.",
                    param=f"hyperparameters.{name}", code="conflicting_hyperparameters")
            merged[name] = value
        return type(given).model_validate(merged)
