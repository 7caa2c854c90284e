"""The versioned workout-modification schema the coach model answers with.

An answer is one compact JSON object::

    {"operations": [{"op": "reduce_intensity", "workout_id": "w3", "new_zone": 2,
                     "reason": "TSB -24", "confidence": 0.8}],
     "message": "You're carrying a lot of fatigue, so ..."}

Field names are short and every operation carries the same ``op``/``workout_id``/
``reason``/``confidence`` fields in the same order, because a ~135M-parameter model has
to learn to emit this shape from about a hundred examples.  Bump :data:`SCHEMA_VERSION`
whenever the JSON shape changes: stored datasets and adapters are tied to it.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION: Final = "1"
SCHEMA_NAME: Final = "workout_modification"

MAX_MESSAGE_CHARS: Final = 280
MAX_REASON_CHARS: Final = 80
MAX_OPERATIONS: Final = 7

OpName: TypeAlias = Literal[
    "reduce_intensity",
    "change_duration",
    "swap_workout",
    "move_workout",
    "add_rest_day",
    "replace_with_recovery",
]
OP_NAMES: Final[tuple[OpName, ...]] = (
    "reduce_intensity",
    "change_duration",
    "swap_workout",
    "move_workout",
    "add_rest_day",
    "replace_with_recovery",
)

WorkoutType: TypeAlias = Literal["intervals", "tempo", "endurance", "long", "recovery"]
WORKOUT_TYPES: Final[tuple[WorkoutType, ...]] = ("intervals", "tempo", "endurance", "long", "recovery")

_WorkoutId = Annotated[str, Field(min_length=1, max_length=32)]
_Reason = Annotated[str, Field(min_length=1, max_length=MAX_REASON_CHARS)]
_Confidence = Annotated[float, Field(ge=0.0, le=1.0)]
_Zone = Annotated[int, Field(ge=1, le=5)]


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReduceIntensity(_Op):
    """Keep the workout but lower its target zone."""

    op: Literal["reduce_intensity"] = "reduce_intensity"
    workout_id: _WorkoutId
    new_zone: _Zone
    reason: _Reason
    confidence: _Confidence


class ChangeDuration(_Op):
    """Keep the workout but change its duration (minutes)."""

    op: Literal["change_duration"] = "change_duration"
    workout_id: _WorkoutId
    new_duration_min: Annotated[int, Field(ge=10, le=360)]
    reason: _Reason
    confidence: _Confidence


class SwapWorkout(_Op):
    """Replace the workout's type (its zone becomes the type's default zone)."""

    op: Literal["swap_workout"] = "swap_workout"
    workout_id: _WorkoutId
    new_type: WorkoutType
    reason: _Reason
    confidence: _Confidence


class MoveWorkout(_Op):
    """Move the workout, unchanged, to another day."""

    op: Literal["move_workout"] = "move_workout"
    workout_id: _WorkoutId
    new_date: dt.date
    reason: _Reason
    confidence: _Confidence


class AddRestDay(_Op):
    """Turn the named workout's day into a rest day (the workout is dropped)."""

    op: Literal["add_rest_day"] = "add_rest_day"
    workout_id: _WorkoutId
    reason: _Reason
    confidence: _Confidence


class ReplaceWithRecovery(_Op):
    """Replace the workout by a zone-1 recovery session of the given duration."""

    op: Literal["replace_with_recovery"] = "replace_with_recovery"
    workout_id: _WorkoutId
    new_duration_min: Annotated[int, Field(ge=10, le=90)]
    reason: _Reason
    confidence: _Confidence


Operation: TypeAlias = Annotated[
    ReduceIntensity | ChangeDuration | SwapWorkout | MoveWorkout | AddRestDay | ReplaceWithRecovery,
    Field(discriminator="op"),
]


class Modification(BaseModel):
    """The coach's answer: zero or more operations on planned workouts plus a short message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    operations: list[Operation] = Field(default_factory=list, max_length=MAX_OPERATIONS)
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)

    def to_json(self) -> str:
        """The compact JSON form used as training target and API payload."""
        return self.model_dump_json(exclude_none=True)


class InvalidModification(ValueError):
    """Raised by :func:`parse_modification`; ``errors`` lists ``(location, message)`` pairs."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors: list[tuple[str, str]] = errors or []


def _strip_fences(text: str) -> str:
    s = text.strip()
    if s.startswith("```"):
        first_newline = s.find("\n")
        s = s[first_newline + 1 :] if first_newline != -1 else s[3:]
        if s.rstrip().endswith("```"):
            s = s.rstrip()[:-3]
    return s.strip()


def _summarise(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err["loc"]) or "<root>"
        out.append((loc, str(err["msg"])))
    return out


def parse_modification(text: str) -> Modification:
    """Parse a model's answer; tolerates surrounding whitespace and a Markdown code fence.

    Raises :class:`InvalidModification` (a ``ValueError``) with a one-line summary such as
    ``invalid workout modification: operations.0.reduce_intensity.new_zone: Input should be
    less than or equal to 5``.
    """
    if not isinstance(text, str):
        raise InvalidModification(f"invalid workout modification: expected str, got {type(text).__name__}")
    body = _strip_fences(text)
    if not body:
        raise InvalidModification("invalid workout modification: empty answer", [("<root>", "empty answer")])
    try:
        return Modification.model_validate_json(body)
    except ValidationError as exc:
        errors = _summarise(exc)
        shown = "; ".join(f"{loc}: {msg}" for loc, msg in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise InvalidModification(f"invalid workout modification: {shown}{more}", errors) from exc


def _for_decoding(node: Any) -> Any:
    """Make pydantic's schema friendly to constrained decoding.

    * drop the OpenAPI-only ``discriminator`` keyword and turn ``oneOf`` into ``anyOf``: the
      ``op`` constants make the branches mutually exclusive, so ``anyOf`` is equivalent, and
      it is the combinator every backend (xgrammar, llguidance, outlines) supports;
    * mark every property of every object as required (fields with defaults, such as ``op``
      and ``operations``, must still be emitted), as OpenAI's strict mode also expects.
    """
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "discriminator":
                continue
            out["anyOf" if key == "oneOf" else key] = _for_decoding(value)
        if out.get("type") == "object" and isinstance(out.get("properties"), dict):
            out["required"] = list(out["properties"])
        return out
    if isinstance(node, list):
        return [_for_decoding(item) for item in node]
    return node


_JSON_SCHEMA_CACHE: dict[str, Any] | None = None


def modification_json_schema() -> dict[str, Any]:
    """A self-contained JSON schema for :class:`Modification` (local ``$defs`` refs only).

    Suitable for vLLM's OpenAI-compatible ``response_format={"type": "json_schema",
    "json_schema": {"name": SCHEMA_NAME, "schema": modification_json_schema()}}``.
    Returns a fresh copy each call.
    """
    global _JSON_SCHEMA_CACHE
    if _JSON_SCHEMA_CACHE is None:
        raw = Modification.model_json_schema(mode="validation")
        schema: dict[str, Any] = _for_decoding(raw)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = SCHEMA_NAME
        schema["description"] = f"Polarize workout modification, schema version {SCHEMA_VERSION}"
        # Round-trip through JSON to guarantee it is plain JSON data.
        _JSON_SCHEMA_CACHE = json.loads(json.dumps(schema))
    return copy.deepcopy(_JSON_SCHEMA_CACHE)


def _narrow(schema: dict[str, Any], workout_ids: Sequence[str]) -> dict[str, Any]:
    ids = sorted(set(workout_ids))
    operations = schema["properties"]["operations"]
    if not ids:
        operations["maxItems"] = 0
        return schema
    operations["maxItems"] = min(MAX_OPERATIONS, len(ids))
    for definition in schema.get("$defs", {}).values():
        props = definition.get("properties", {})
        if "workout_id" in props:
            props["workout_id"] = {"type": "string", "enum": ids, "title": "Workout Id"}
    return schema


def response_format(workout_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """The OpenAI/vLLM ``response_format`` value that constrains decoding to this schema.

    With ``workout_ids`` the schema is narrowed for one request: ``workout_id`` may only name one
    of them, and there are at most as many operations as workouts (none without workouts).  Every
    answer it allows is still a valid :class:`Modification` of the same version.
    """
    schema = modification_json_schema()
    if workout_ids is not None:
        schema = _narrow(schema, workout_ids)
    return {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True},
    }
