"""Arena: blind A/B comparisons. Create one (2-4 models, prompts), vote one pair at a time (keys
1 / 2 / 0 for left / right / tie, or the buttons), and the standings with their intervals."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from coachforge_console.client import ApiError
from coachforge_console.pages.common import parts, seg
from coachforge_console.web import Page, UserPage, form_float, form_int, form_str, router

MAX_PROMPTS = 500


def parse_prompts(text: str) -> list[list[dict[str, str]]]:
    """One user prompt per block of lines; blocks are separated by a blank line."""
    blocks, current = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return [[{"role": "user", "content": block}] for block in blocks]


def voter_of(page: Page, given: str | None) -> str:
    """Who votes: the name given (kept in the session for the next pairs), else the session's, else
    the signed-in key's identity."""
    name = (given or "").strip()[:256]
    if name and name != page.session.voter:
        page.session.voter = name
        page.dirty = True
    return name or page.session.voter or page.session.identity


@router.get("/arena")
async def arena_page(page: UserPage) -> Response:
    comparisons, models, avatars = await parts(page.api.get("/v1/comparisons", order="desc", limit=50),
                                               page.api.get("/v1/models"), page.api.get("/v1/avatars"))
    return page.render("arena.html", title="Arena", comparisons=comparisons,
                       model_ids=[m["id"] for m in (models.value or {}).get("data") or []]
                       + [a["name"] for a in (avatars.value or {}).get("data") or []])


@router.post("/arena")
async def create_comparison(page: UserPage) -> Response:
    form = await page.form()
    models = [m for m in form.getlist("models") if isinstance(m, str) and m.strip()]
    prompts = parse_prompts(form_str(form, "prompts"))
    body: dict[str, Any] = {"models": models, "prompts": prompts[:MAX_PROMPTS]}
    if form_str(form, "name"):
        body["name"] = form_str(form, "name")
    sampling: dict[str, Any] = {}
    temperature = form_float(form, "temperature")
    if temperature is not None:
        sampling["temperature"] = temperature
    max_tokens = form_int(form, "max_completion_tokens")
    if max_tokens is not None:
        sampling["max_completion_tokens"] = max_tokens
    if sampling:
        body["sampling"] = sampling
    try:
        created = await page.api.post("/v1/comparisons", body)
    except ApiError as err:
        if err.status == 401:
            raise
        page.notify("error", err.message)
        return page.redirect("/console/arena")
    page.notify("ok", f"Comparison {created['id']} created; its answers are being generated.")
    return page.redirect(f"/console/arena/{seg(created['id'])}")


async def _state(page: Page, comparison_id: str, voter: str) -> dict[str, Any]:
    base = f"/v1/comparisons/{seg(comparison_id)}"
    comparison = await page.api.get(base)
    pair, pair_error = None, None
    if comparison.get("status") == "ready":
        try:
            pair = await page.api.get(f"{base}/next", voter=voter)
        except ApiError as err:
            if err.status == 401:
                raise
            pair_error = err.message
    return {"comparison": comparison, "pair": pair, "pair_error": pair_error, "voter": voter,
            "done": comparison.get("status") == "ready" and pair is None and pair_error is None}


@router.get("/arena/{comparison_id}")
async def comparison_page(page: UserPage, comparison_id: str, voter: str | None = None) -> Response:
    state = await _state(page, comparison_id, voter_of(page, voter))
    return page.render("comparison.html", title=f"Arena {comparison_id}", **state)


@router.get("/arena/{comparison_id}/vote")
async def vote_fragment(page: UserPage, comparison_id: str) -> Response:
    """The voting panel alone (htmx), polled while the answers are being generated."""
    state = await _state(page, comparison_id, voter_of(page, None))
    return page.render("_vote.html", **state)


@router.post("/arena/{comparison_id}/vote")
async def vote(page: UserPage, comparison_id: str) -> Response:
    form = await page.form()
    voter = voter_of(page, form_str(form, "voter"))
    body = {"pair_id": form_str(form, "pair_id"), "voter": voter, "winner": form_str(form, "winner")}
    try:
        await page.api.post(f"/v1/comparisons/{seg(comparison_id)}/votes", body)
    except ApiError as err:
        if err.status == 401:
            raise
        page.notify("error", err.message)
    if page.htmx:
        state = await _state(page, comparison_id, voter)
        response = page.render("_vote.html", **state)
        response.headers["HX-Trigger"] = "voted"
        return response
    return page.redirect(f"/console/arena/{seg(comparison_id)}")


@router.get("/arena/{comparison_id}/results")
async def results_fragment(page: UserPage, comparison_id: str) -> Response:
    comparison = await page.api.get(f"/v1/comparisons/{seg(comparison_id)}")
    return page.render("_results.html", comparison=comparison)
