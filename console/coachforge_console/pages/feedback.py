"""Feedback: stored chat completions (filters), a completion with its request and answer to rate
1-5, mark gold, flag or correct, every rater's feedback; and the review queue."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from coachforge_console.client import ApiError
from coachforge_console.pages.common import optional_part, part, parts, seg
from coachforge_console.web import UserPage, act, form_int, form_str, router


def parse_metadata_filter(text: str) -> dict[str, str]:
    """``key=value`` pairs, comma separated."""
    out = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def first_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


@router.get("/feedback")
async def feedback_page(page: UserPage, model: str | None = None, metadata: str | None = None,
                        order: str = "desc", after: str | None = None) -> Response:
    params: dict[str, Any] = {"model": model or None, "order": "asc" if order == "asc" else "desc",
                              "limit": 50, "after": after or None}
    for key, value in parse_metadata_filter(metadata or "").items():
        params[f"metadata[{key}]"] = value
    completions = await part(page.api.get("/v1/chat/completions", **params))
    # An API without the review queue answers 404 (no completion with that id).
    queue = await optional_part(page.api.get("/v1/chat/completions/review_queue", limit=20))
    return page.render("feedback.html", title="Feedback", completions=completions, queue=queue, model=model or "",
                       metadata=metadata or "", order=params["order"])


@router.get("/feedback/{completion_id}")
async def completion_page(page: UserPage, completion_id: str) -> Response:
    base = f"/v1/chat/completions/{seg(completion_id)}"
    completion = await page.api.get(base)
    messages, feedback = await parts(page.api.get(f"{base}/messages", limit=100),
                                     page.api.get(f"{base}/feedback"))
    return page.render("completion.html", title=f"Completion {completion_id}", c=completion, messages=messages,
                       feedback=feedback, rater=page.session.voter or page.session.identity)


@router.post("/feedback/{completion_id}")
async def post_feedback(page: UserPage, completion_id: str) -> Response:
    form = await page.form()
    body: dict[str, Any] = {"gold": form_str(form, "gold") == "on", "flagged": form_str(form, "flagged") == "on"}
    rating = form_int(form, "rating")
    if rating is not None:
        body["rating"] = rating
    for name in ("correction", "comment", "rater"):
        if form_str(form, name):
            body[name] = form_str(form, name)
    back = f"/console/feedback/{seg(completion_id)}"
    if not any(body.get(k) for k in ("rating", "gold", "flagged", "correction")):
        page.notify("error", "Give a rating, mark it gold, flag it or write a correction.")
        return page.redirect(back)
    return await act(page, page.api.post(f"/v1/chat/completions/{seg(completion_id)}/feedback", body),
                     "Feedback saved.", back)


@router.post("/feedback/{completion_id}/review")
async def post_review(page: UserPage, completion_id: str) -> Response:
    form = await page.form()
    action = form_str(form, "action")
    body = {"action": action}
    if form_str(form, "comment"):
        body["comment"] = form_str(form, "comment")
    try:
        await page.api.post(f"/v1/chat/completions/{seg(completion_id)}/review", body)
    except ApiError as err:
        if err.status == 401:
            raise
        page.notify("error", err.message)
    else:
        page.notify("ok", "Taken off the review queue." if action == "dismiss" else "Back on the review queue.")
    return page.redirect(f"/console/feedback/{seg(completion_id)}")
