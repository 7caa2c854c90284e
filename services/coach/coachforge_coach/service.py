"""Coach logic available so far: the modification schema and validation of a proposal."""

from __future__ import annotations

from typing import Any

from coachforge_shared.coach.schema import (
    SCHEMA_VERSION,
    InvalidModification,
    modification_json_schema,
    parse_modification,
)


def schema() -> dict[str, Any]:
    return {"version": SCHEMA_VERSION, "schema": modification_json_schema()}


def validate(text: str) -> tuple[bool, str]:
    """Whether ``text`` is a modification matching the schema, and why not."""
    try:
        parse_modification(text)
    except InvalidModification as err:
        return False, str(err)
    return True, ""
