"""Request bodies of the Evals API (OpenAI's shapes), validated the same way for REST and gRPC."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coachforge_shared.errors import InvalidArgument

M = TypeVar("M", bound=BaseModel)


def _metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is not None:
        if len(value) > 16:
            raise ValueError("at most 16 keys")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError(f"{key[:64]!r}: keys are at most 64 characters, values at most 512")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomDataSourceConfig(_Body):
    type: Literal["custom"]
    item_schema: dict[str, Any] = Field(description="JSON Schema every item of a run must match.")
    include_sample_schema: bool = Field(default=False, description="Testing criteria may refer to {{sample.*}}.")


class CreateEval(_Body):
    name: str | None = Field(default=None, max_length=200)
    data_source_config: CustomDataSourceConfig
    testing_criteria: list[dict[str, Any]] = Field(min_length=1, max_length=32)
    metadata: dict[str, str] | None = None

    _check_metadata = field_validator("metadata")(_metadata)


class UpdateEval(_Body):
    name: str | None = Field(default=None, max_length=200)
    metadata: dict[str, str] | None = None

    _check_metadata = field_validator("metadata")(_metadata)


class InputText(_Body):
    type: Literal["input_text", "output_text"]
    text: str


class TemplateMessage(_Body):
    type: Literal["message"] | None = None
    role: Literal["system", "developer", "user", "assistant"]
    content: str | InputText


class InputTemplate(_Body):
    type: Literal["template"]
    template: list[TemplateMessage] = Field(min_length=1)


class InputItemReference(_Body):
    type: Literal["item_reference"]
    item_reference: str = Field(pattern=r"^item(\.[A-Za-z0-9_]+)+$",
                                description="Where an item keeps its messages, e.g. item.messages.")


class ContentRow(_Body):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(_Body):
    type: Literal["file_content"]
    content: list[ContentRow] = Field(min_length=1)


class FileIdSource(_Body):
    type: Literal["file_id"]
    id: str = Field(min_length=1)


Source = Annotated[FileContentSource | FileIdSource, Field(discriminator="type")]


class SamplingParams(_Body):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    response_format: dict[str, Any] | None = None

    @field_validator("response_format")
    @classmethod
    def _format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") not in ("text", "json_object", "json_schema"):
            raise ValueError("type must be text, json_object or json_schema")
        return value


class CompletionsDataSource(_Body):
    type: Literal["completions"]
    model: str = Field(min_length=1, max_length=300)
    input_messages: Annotated[InputTemplate | InputItemReference, Field(discriminator="type")]
    sampling_params: SamplingParams | None = None
    source: Source


class JsonlDataSource(_Body):
    """Items that already carry their sample (``{"item": …, "sample": {"output_text": …}}``): graded only."""

    type: Literal["jsonl"]
    source: Source


class CreateRun(_Body):
    name: str | None = Field(default=None, max_length=200)
    metadata: dict[str, str] | None = None
    data_source: Annotated[CompletionsDataSource | JsonlDataSource, Field(discriminator="type")]

    _check_metadata = field_validator("metadata")(_metadata)


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("file_content", "file_id", "completions", "jsonl", "template", "item_reference",
                      "str", "InputText") or str(part).startswith(("function-", "literal[")):
            continue  # union branch tags, not fields
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def parse(model: type[M], body: Any) -> M:
    """``body`` as ``model``; a problem is an :class:`InvalidArgument` naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a JSON object.", param="body")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        errors = err.errors()
        first = errors[0]
        detail = "; ".join(f"{_param(tuple(e['loc']))}: {e['msg']}" for e in errors[:5])
        raise InvalidArgument(f"Invalid request: {detail}", param=_param(tuple(first["loc"])),
                              code="invalid_value") from None
