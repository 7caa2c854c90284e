"""Request bodies of the registry API."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)


class CreateAvatar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Alias, e.g. coach-anna.")
    model: str = Field(min_length=1, description="Model id it answers with (base or fine-tuned).")
    fallback: Literal["error", "base"] = Field(
        "error", description="When its adapter cannot be served: fail, or answer from the base model.")
    reason: str = Field("", max_length=500)
    store: StrictBool | None = Field(
        None, description="Keep its chat completions when a request does not say store (null: the tenant's "
                          "default, GET /v1/chat/completions/settings).")


class UpdateAvatar(BaseModel):
    """``PATCH /v1/avatars/{name}``: the avatar's settings; fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    store: StrictBool | None = Field(
        None, description="Keep its chat completions when a request does not say store; null follows the "
                          "tenant's default.")
    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Activate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Model id to activate.")
    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Pin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Model id to pin the avatar to.")
    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Unpin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Candidate model id; null clears the candidate (unless "
                                                 "candidate_persona_version is given).")
    traffic_share: int = Field(0, ge=0, le=100, description="Share of traffic (0-100) meant for the candidate.")
    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")
    candidate_persona_version: StrictInt | None = Field(
        None, ge=1, le=2**31 - 1,
        description="Persona version the candidate share answers with (null: the active persona). Without a "
                    "model, the candidate share answers with the active model and this persona version.")


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Evaluation name, e.g. coach-rules-v1.")
    metrics: dict[str, float] = Field(description="Metric name -> value, e.g. {\"valid_json\": 0.92}.")


class CreateExport(BaseModel):
    """POST /v1/models/{model_id}/exports. Values are checked by the service (an unknown format or a
    quantization the format does not take is refused naming the field)."""

    model_config = ConfigDict(extra="forbid")

    format: StrictStr = Field(description="adapter (the PEFT adapter, tar.gz), merged (base + adapter merged, "
                                          "safetensors with tokenizer and chat template, tar.gz), gguf (one GGUF "
                                          "file) or ollama (tar.gz with the GGUF and a Modelfile).")
    quantization: StrictStr | None = Field(
        None, description="gguf and ollama only: f16 (default), q8_0 or q4_0.")
    avatar: StrictStr | None = Field(
        None, max_length=64,
        description="ollama only: the avatar whose persona (system prompt, sampling, few-shot turns) goes into the "
                    "Modelfile; it must answer with the model. Default: the first avatar by name with the model as "
                    "its active model and a persona; none: no SYSTEM line.")


# -- retrain policies -----------------------------------------------------------------------------


class RetrainTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_new_gold: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Retrain once this many gold completions of the avatar were stored since the last retrain "
                    "started (null: no such trigger).")
    schedule_hours: float | None = Field(
        None, gt=0, le=24 * 366,
        description="Retrain every this many hours when at least one new gold completion came in (null: no "
                    "schedule).")


class RetrainStoredCompletions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gold: bool = Field(True, description="Only completions some rater marked gold.")
    min_rating: int | None = Field(None, ge=1, le=5, description="Only completions rated at least this.")
    metadata: dict[str, str] | None = Field(None, description="Only completions with every one of these pairs.")
    limit: int = Field(10_000, ge=1, le=1_000_000, description="At most this many completions.")


class RetrainDataset(BaseModel):
    """The recipe of each retrain's dataset version: the avatar's stored completions (every gold one
    so far, the new and those earlier versions held, corrections replacing answers) after the files."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200,
                             description="Dataset name (default: '<avatar>-retrain').")
    files: list[str] = Field(default_factory=list, max_length=100,
                             description="Uploaded file ids every version starts from (seed data).")
    stored_completions: RetrainStoredCompletions = Field(default_factory=RetrainStoredCompletions)
    validation_fraction: float = Field(0.1, ge=0.0, le=0.5, description="Share of conversations held out.")
    scrub_pii: bool = Field(True, description="Replace emails, phone numbers and URLs carrying tokens.")
    min_quality: float = Field(0.0, ge=0.0, le=1.0, description="Drop examples whose quality score is lower.")


class RetrainTraining(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1,
                              description="Base model to fine-tune (default: the active model's base).")
    suffix: str | None = Field(None, min_length=1, max_length=64,
                               description="Suffix of the new model's name (default: the avatar's name).")
    hyperparameters: dict[str, float | int | list[str] | None] = Field(
        default_factory=dict,
        description="Hyperparameters as in POST /v1/fine_tuning/jobs (n_epochs, batch_size, "
                    "learning_rate_multiplier, lora_r, lora_alpha, max_length, ...).")
    seed: int = Field(0, ge=0, description="Training seed (0: the trainer's default).")


class RetrainEvaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval_id: str = Field(min_length=1, max_length=64, description="The eval both models run (eval_…).")
    data_source: dict[str, object] = Field(
        description="The run's data source as in POST /v1/evals/{eval_id}/runs, without 'model' (the active "
                    "and the new model each get one run on the same items).")
    testing_criteria: str | None = Field(
        None, min_length=1, description="The primary criterion (default: the eval's first testing criterion).")
    margin: float = Field(0.0, ge=0.0, le=1.0,
                          description="How much the new model's pass rate must beat the active model's by.")


class RetrainPromotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["candidate", "activate"] = Field(
        "candidate", description="candidate: the new model gets traffic_share of the avatar's traffic; "
                                 "activate: it becomes the active model.")
    traffic_share: int = Field(10, ge=1, le=100, description="The candidate's share of traffic (0-100).")


class RetrainPolicyBody(BaseModel):
    """PUT /v1/avatars/{name}/retrain-policy."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: triggers are off (a manual retrain still works).")
    trigger: RetrainTrigger = Field(default_factory=RetrainTrigger)
    dataset: RetrainDataset = Field(default_factory=RetrainDataset)
    training: RetrainTraining = Field(default_factory=RetrainTraining)
    evaluation: RetrainEvaluation
    promotion: RetrainPromotion = Field(default_factory=RetrainPromotion)


class Retrain(BaseModel):
    """POST /v1/avatars/{name}/retrain."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500, description="Why; kept on the run and in the avatar's history.")


# -- personas -------------------------------------------------------------------------------------

SYSTEM_PROMPT_CHARS = 8000
FEW_SHOT_TURNS = 20
FEW_SHOT_CHARS = 8000
SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Number = StrictFloat | StrictInt


class PersonaSampling(BaseModel):
    """Sampling defaults: a chat request through the avatar that does not send a field gets it."""

    model_config = ConfigDict(extra="forbid")

    temperature: Annotated[Number, Field(ge=0, le=2)] | None = Field(None, description="0-2.")
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = Field(None, description="0-1.")
    max_tokens: StrictInt | None = Field(None, ge=1, le=2**31 - 1,
                                         description="At least 1 (the engine refuses one beyond the context).")
    stop: list[Annotated[StrictStr, Field(min_length=1, max_length=500)]] | None = Field(
        None, max_length=4, description="Up to 4 stop sequences.")
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = Field(None, description="-2 to 2.")
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = Field(None, description="-2 to 2.")


class FewShotTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: StrictStr = Field(min_length=1, max_length=FEW_SHOT_CHARS)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: StrictStr = Field(pattern=SCHEMA_NAME.pattern, description="1-64 letters, digits, '_' or '-'.")
    description: StrictStr | None = Field(None, max_length=2000)
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="The JSON Schema, an object.")
    strict: StrictBool | None = None


class PersonaResponseFormat(BaseModel):
    """OpenAI's ``response_format``: text, json_object, or json_schema with its ``json_schema``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_its_type(self) -> PersonaResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError("json_schema is only allowed when type is json_schema")
        return self


KNOWLEDGE_BASE_ID = re.compile(r"^kb-[A-Za-z0-9_-]{1,64}$")


class PersonaKnowledge(BaseModel):
    """Knowledge snippets put into the system message: a search of one of the tenant's knowledge
    bases (the dataset service's) for the conversation's last user turns, at every chat request."""

    model_config = ConfigDict(extra="forbid")

    knowledge_base: StrictStr = Field(pattern=KNOWLEDGE_BASE_ID.pattern,
                                      description="Id of one of the tenant's knowledge bases (kb-…).")
    top_k: StrictInt = Field(4, ge=1, le=50, description="Most snippets, best first (1-50).")
    max_tokens: StrictInt = Field(400, ge=1, le=8000,
                                  description="Token budget of the snippets (the knowledge base's approximate "
                                              "count): of the top_k, in rank order, those that still fit.")
    query_turns: StrictInt = Field(1, ge=1, le=20,
                                   description="How many of the conversation's last user messages make the query.")


class PersonaSettings(BaseModel):
    """An avatar's persona: what a chat request through it gets unless it says otherwise."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: StrictStr | None = Field(
        None, max_length=SYSTEM_PROMPT_CHARS,
        description="System prompt, a template: {metadata.<key>} becomes the request's metadata value (empty "
                    "when the request has none).")
    system_mode: Literal["prepend", "replace"] = Field(
        "prepend", description="prepend: used unless the request has its own system message; replace: replaces "
                               "the request's system messages.")
    sampling: PersonaSampling = Field(default_factory=PersonaSampling)
    few_shot: list[FewShotTurn] = Field(
        default_factory=list, max_length=FEW_SHOT_TURNS,
        description="Example turns put between the system prompt and the conversation: user and assistant "
                    "alternating, starting with user, ending with assistant.")
    response_format: PersonaResponseFormat | None = Field(
        None, description="Used when the request has no response_format.")
    knowledge: PersonaKnowledge | None = Field(
        None, description="Knowledge snippets for the system message, searched at every chat request (null: "
                          "none).")
    store: StrictBool | None = Field(
        None, description="The avatar's store setting (keep its chat completions when a request does not say; "
                          "null: the tenant's default); left out: unchanged.")

    @field_validator("few_shot")
    @classmethod
    def _alternating(cls, turns: list[FewShotTurn]) -> list[FewShotTurn]:
        for i, turn in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ValueError(f"turn {i} must be {expected!r}: turns alternate user/assistant, starting "
                                 "with user")
        if turns and turns[-1].role != "assistant":
            raise ValueError("the last turn must be 'assistant'")
        return turns

    def stored(self) -> dict[str, Any]:
        """The settings as kept in a version row: sampling fields left out when not set, ``knowledge``
        (with its defaults filled in) only when set, ``store`` only when given."""
        out = self.model_dump(mode="json", by_alias=True, exclude={"store", "sampling", "response_format",
                                                                   "knowledge"})
        out["sampling"] = self.sampling.model_dump(mode="json", exclude_none=True)
        out["response_format"] = (None if self.response_format is None else
                                  self.response_format.model_dump(mode="json", by_alias=True, exclude_none=True))
        if self.knowledge is not None:
            out["knowledge"] = self.knowledge.model_dump(mode="json")
        if "store" in self.model_fields_set:
            out["store"] = self.store
        return out


class PersonaBody(PersonaSettings):
    """PUT /v1/avatars/{name}/persona."""

    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")

    def settings(self) -> PersonaSettings:
        data = self.model_dump(by_alias=True, exclude={"reason"}, exclude_unset=True)
        return PersonaSettings.model_validate(data)


class PersonaRollback(BaseModel):
    """POST /v1/avatars/{name}/persona/rollback."""

    model_config = ConfigDict(extra="forbid")

    version: StrictInt | None = Field(None, ge=1, le=2**31 - 1,
                                      description="Version to restore (default: the one before the active one).")
    reason: str = Field("", max_length=500, description="Why; kept in the avatar's history.")
