"""Request bodies of the stored completions API (checked by pydantic: a bad field is a 400 naming it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

CORRECTION_CHARS = 100_000
COMMENT_CHARS = 10_000
RATER_CHARS = 256


class UpdateCompletion(BaseModel):
    """``POST /v1/chat/completions/{id}``: the metadata that replaces the completion's (null clears it)."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, Any] | None
    """Checked by :func:`coachforge_inference.validation.check_metadata` (16 pairs, 64/512 characters)."""


class FeedbackIn(BaseModel):
    """``POST /v1/chat/completions/{id}/feedback``: one rater's verdict on a stored completion; at
    least one of rating, gold or correction."""

    model_config = ConfigDict(extra="forbid")

    rating: StrictInt | None = Field(default=None, ge=1, le=5, description="1 (bad) to 5 (excellent).")
    gold: StrictBool = Field(default=False, description="Good enough (with its correction, if any) to train on.")
    correction: StrictStr | None = Field(default=None, min_length=1, max_length=CORRECTION_CHARS,
                                         description="The answer the rater would have wanted.")
    comment: StrictStr | None = Field(default=None, max_length=COMMENT_CHARS)
    rater: StrictStr | None = Field(default=None, min_length=1, max_length=RATER_CHARS,
                                    description="Who rates (default: the caller's API key); one row per "
                                                "completion and rater, replaced when the rater posts again.")
