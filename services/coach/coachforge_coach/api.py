"""REST: ``/v1/coach/…`` for the Polarize app."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from coachforge_coach import service
from coachforge_shared.http import CurrentPrincipal

router = APIRouter(prefix="/v1/coach", tags=["coach"])


@router.get("/schema")
def modification_schema(principal: CurrentPrincipal) -> dict[str, Any]:
    """The versioned JSON Schema of a workout modification (also vLLM's response_format)."""
    return service.schema()


@router.post("/validate")
def validate_modification(principal: CurrentPrincipal, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Check a proposed modification (``{"modification": "<json text>"}``) against the schema."""
    text = body.get("modification")
    valid, error = service.validate(text if isinstance(text, str) else "")
    return {"valid": valid, "error": error or None}
