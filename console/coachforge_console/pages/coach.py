"""Coach: an athlete's training load (CTL/ATL/TSB chart), the coming week, a recommendation preview
with each operation's rule verdict and the athlete's state (wellness flags), apply, and the
applied changes with undo."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from starlette.responses import Response

from coachforge_console.client import ApiError
from coachforge_console.pages.common import parts, seg
from coachforge_console.web import Page, UserPage, act, form_str, router

LOAD_DAYS = 90


def load_chart(load: dict[str, Any]) -> dict[str, Any]:
    points = load.get("points") or []
    x = [int(dt.datetime.combine(dt.date.fromisoformat(p["date"]), dt.time(), dt.UTC).timestamp()) for p in points]
    return {"x": x, "series": [{"label": "CTL (fitness)", "values": [p.get("ctl") for p in points]},
                               {"label": "ATL (fatigue)", "values": [p.get("atl") for p in points]},
                               {"label": "TSB (form)", "values": [p.get("tsb") for p in points]}]}


def parse_today(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"today: not a date (YYYY-MM-DD): {value!r}.") from None


def _back(athlete_id: str, today: dt.date | None) -> str:
    return f"/console/coach?athlete={seg(athlete_id)}" + (f"&today={today.isoformat()}" if today else "")


async def _athlete(page: Page, athlete_id: str, day: dt.date | None) -> dict[str, Any]:
    base = f"/v1/coach/athletes/{seg(athlete_id)}"
    athlete = await page.api.get(base)
    today = day or dt.datetime.now(dt.UTC).date()
    load, week, changes, models = await parts(
        page.api.get(f"{base}/load", days=LOAD_DAYS, today=day.isoformat() if day else None),
        page.api.get(f"{base}/workouts", **{"from": today.isoformat(),
                                             "to": (today + dt.timedelta(days=7)).isoformat()}),
        page.api.get(f"{base}/changes", limit=20), page.api.get("/v1/models"))
    avatars = await page.api.optional("/v1/avatars")
    return {"athlete": athlete, "athlete_id": athlete_id, "load": load, "today": day.isoformat() if day else "",
            "chart": load_chart(load.value) if load.ok else None, "week": week, "changes": changes,
            "model_ids": [m["id"] for m in (models.value or {}).get("data") or []]
            + [a["name"] for a in (avatars or {}).get("data") or []]}


@router.get("/coach")
async def coach_page(page: UserPage, athlete: str | None = None, today: str | None = None) -> Response:
    if not athlete:
        return page.render("coach.html", title="Coach", athlete_id="", athlete=None, recommendation=None,
                           today=today or "")
    return page.render("coach.html", title=f"Coach: {athlete}", recommendation=None,
                       **await _athlete(page, athlete, parse_today(today)))


@router.post("/coach/{athlete_id}/recommend")
async def recommend(page: UserPage, athlete_id: str) -> Response:
    form = await page.form()
    day = parse_today(form_str(form, "today"))
    body = {k: form_str(form, k) for k in ("model", "question", "today") if form_str(form, k)}
    try:
        recommendation = await page.api.post(f"/v1/coach/athletes/{seg(athlete_id)}/recommendations", body)
    except ApiError as err:
        if err.status == 401:
            raise
        page.notify("error", err.message)
        return page.redirect(_back(athlete_id, day))
    return page.render("coach.html", title=f"Coach: {athlete_id}", recommendation=recommendation,
                       request_id="console-" + secrets.token_hex(8), **await _athlete(page, athlete_id, day))


@router.post("/coach/{athlete_id}/apply")
async def apply(page: UserPage, athlete_id: str) -> Response:
    form = await page.form()
    day = parse_today(form_str(form, "today"))
    body = {"request_id": form_str(form, "request_id") or "console-" + secrets.token_hex(8),
            "recommendation_id": form_str(form, "recommendation_id")}
    if day:
        body["today"] = day.isoformat()
    return await act(page, page.api.post(f"/v1/coach/athletes/{seg(athlete_id)}/apply", body),
                     "Recommendation applied.", _back(athlete_id, day))


@router.post("/coach/{athlete_id}/changes/{change_id}/undo")
async def undo(page: UserPage, athlete_id: str, change_id: str) -> Response:
    form = await page.form()
    return await act(page, page.api.post(f"/v1/coach/changes/{seg(change_id)}/undo"), "Change undone.",
                     _back(athlete_id, parse_today(form_str(form, "today"))))
