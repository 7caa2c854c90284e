"""Request bodies of the stored completions API (checked by pydantic: a bad field is a 400 naming it)."""

from __future__ import annotations

from typing import Any, Literal

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
    least one of rating, gold, flagged or correction."""

    model_config = ConfigDict(extra="forbid")

    rating: StrictInt | None = Field(default=None, ge=1, le=5, description="1 (bad) to 5 (excellent).")
    gold: StrictBool = Field(default=False, description="Good enough (with its correction, if any) to train on.")
    correction: StrictStr | None = Field(default=None, min_length=1, max_length=CORRECTION_CHARS,
                                         description="The answer the rater would have wanted.")
    comment: StrictStr | None = Field(default=None, max_length=COMMENT_CHARS)
    flagged: StrictBool = Field(default=False, description="Flag the answer for review: it joins the review queue "
                                                           "until someone corrects it or a reviewer dismisses it.")
    rater: StrictStr | None = Field(default=None, min_length=1, max_length=RATER_CHARS,
                                    description="Who rates (default: the caller's API key); one row per "
                                                "completion and rater, replaced when the rater posts again.")


class CompletionSettingsIn(BaseModel):
    """``PUT /v1/chat/completions/settings``: the tenant's stored completion policy; fields left out
    keep their value (``null`` is no value: :func:`coachforge_inference.policies.put_settings`
    refuses it naming the field)."""

    model_config = ConfigDict(extra="forbid")

    store_by_default: StrictBool | None = Field(
        default=None, description="Keep chat completions whose request does not say store (an avatar's own "
                                  "store setting comes first).")
    retention_days: StrictInt | None = Field(
        default=None, ge=0, le=36_500,
        description="Delete stored completions (with their feedback) older than this many days; 0 keeps them "
                    "forever.")
    scrub_pii: StrictBool | None = Field(
        default=None, description="Replace e-mail addresses, phone numbers and URLs carrying credentials in the "
                                  "messages, answers and metadata values before a completion is kept.")

    def changes(self) -> dict[str, Any]:
        """The fields the request set."""
        return self.model_dump(include=self.model_fields_set)


class ReviewIn(BaseModel):
    """``POST /v1/chat/completions/{id}/review``: a reviewer's decision on a stored completion."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["dismiss", "reopen"] = Field(
        description="dismiss: off the review queue whatever its feedback says; reopen: back on it when its "
                    "feedback puts it there.")
    reviewer: StrictStr | None = Field(default=None, min_length=1, max_length=RATER_CHARS,
                                       description="Who decides (default: the caller's API key).")
    comment: StrictStr | None = Field(default=None, max_length=COMMENT_CHARS)
