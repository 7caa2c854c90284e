"""Avatars: the list, and an avatar's active model, candidate and traffic share, its forms
(activate, roll back, pin, unpin, set candidate), history with who/when/why, retrain policy and
runs with their decisions, and the live experiment (active vs candidate on feedback)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from coachforge_console.client import ApiError
from coachforge_console.pages.common import optional_part, parts, seg
from coachforge_console.web import UserPage, act, form_int, form_str, router


def _back(name: str) -> str:
    return f"/console/avatars/{seg(name)}"


@router.get("/avatars")
async def avatars_page(page: UserPage) -> Response:
    avatars, models = await parts(page.api.get("/v1/avatars"), page.api.get("/v1/models"))
    return page.render("avatars.html", title="Avatars", avatars=avatars,
                       model_ids=[m["id"] for m in (models.value or {}).get("data") or []])


@router.post("/avatars")
async def create_avatar(page: UserPage) -> Response:
    form = await page.form()
    name = form_str(form, "name")
    body: dict[str, Any] = {"name": name, "model": form_str(form, "model"),
                            "fallback": form_str(form, "fallback", "error") or "error",
                            "reason": form_str(form, "reason")}
    try:
        await page.api.post("/v1/avatars", body)
    except ApiError as err:
        if err.status == 401:
            raise
        page.notify("error", err.message)
        return page.redirect("/console/avatars")
    page.notify("ok", f"Avatar {name} created.")
    return page.redirect(_back(name))


@router.get("/avatars/{name}")
async def avatar_page(page: UserPage, name: str) -> Response:
    base = f"/v1/avatars/{seg(name)}"
    avatar = await page.api.get(base)
    history, models = await parts(page.api.get(f"{base}/history"), page.api.get("/v1/models"))
    policy = await optional_part(page.api.get(f"{base}/retrain-policy"))
    retrains = await optional_part(page.api.get(f"{base}/retrains", limit=20))
    experiment = await optional_part(page.api.get(f"{base}/experiment"))
    changes = (history.value or {}).get("data") or []  # newest first
    return page.render("avatar.html", title=f"Avatar {name}", avatar=avatar, history=history, changes=changes,
                       model_ids=[m["id"] for m in (models.value or {}).get("data") or []],
                       policy=policy, retrains=retrains, experiment=experiment)


@router.post("/avatars/{name}/activate")
async def activate(page: UserPage, name: str) -> Response:
    form = await page.form()
    model = form_str(form, "model")
    return await act(page, page.api.post(f"/v1/avatars/{seg(name)}/activate",
                                         {"model": model, "reason": form_str(form, "reason")}),
                     f"{name} now answers with {model}.", _back(name))


@router.post("/avatars/{name}/rollback")
async def rollback(page: UserPage, name: str) -> Response:
    form = await page.form()
    return await act(page, page.api.post(f"/v1/avatars/{seg(name)}/rollback", {"reason": form_str(form, "reason")}),
                     f"{name} rolled back.", _back(name))


@router.post("/avatars/{name}/pin")
async def pin(page: UserPage, name: str) -> Response:
    form = await page.form()
    model = form_str(form, "model")
    return await act(page, page.api.post(f"/v1/avatars/{seg(name)}/pin",
                                         {"model": model, "reason": form_str(form, "reason")}),
                     f"{name} pinned to {model}.", _back(name))


@router.post("/avatars/{name}/unpin")
async def unpin(page: UserPage, name: str) -> Response:
    form = await page.form()
    return await act(page, page.api.post(f"/v1/avatars/{seg(name)}/unpin", {"reason": form_str(form, "reason")}),
                     f"{name} unpinned.", _back(name))


@router.post("/avatars/{name}/candidate")
async def candidate(page: UserPage, name: str) -> Response:
    form = await page.form()
    model = form_str(form, "model") or None
    share = form_int(form, "traffic_share") or 0
    done = f"{name}: candidate {model} at {share}%." if model else f"{name}: candidate cleared."
    return await act(page, page.api.post(f"/v1/avatars/{seg(name)}/candidate",
                                         {"model": model, "traffic_share": share if model else 0,
                                          "reason": form_str(form, "reason")}), done, _back(name))


@router.post("/avatars/{name}/retrain")
async def retrain(page: UserPage, name: str) -> Response:
    form = await page.form()
    return await act(page, page.api.post(f"/v1/avatars/{seg(name)}/retrain", {"reason": form_str(form, "reason")}),
                     f"{name}: retrain started.", _back(name))
