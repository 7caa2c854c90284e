"""Overview: running and queued jobs, models serving, gold examples collected, spend today, win
rate of the latest comparisons."""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.responses import Response

from coachforge_console.client import Api
from coachforge_console.pages.common import parts, seg
from coachforge_console.web import UserPage, router

GOLD_SCAN_PAGES = 5


async def gold_examples(api: Api) -> dict[str, Any]:
    """Stored completions some rater marked gold, among the newest ``GOLD_SCAN_PAGES`` x 100."""
    gold = corrected = scanned = 0
    after = None
    more = False
    for _ in range(GOLD_SCAN_PAGES):
        page = await api.get("/v1/chat/completions", order="desc", limit=100, after=after)
        data = page.get("data") or []
        for c in data:
            fb = c.get("feedback") or {}
            gold += 1 if fb.get("gold_count") else 0
            corrected += 1 if fb.get("has_correction") else 0
        scanned += len(data)
        more = bool(page.get("has_more"))
        if not more or not data:
            break
        after = data[-1]["id"]
    return {"gold": gold, "corrected": corrected, "scanned": scanned, "more": more}


async def latest_comparisons(api: Api, count: int = 3) -> list[dict[str, Any]]:
    listed = await api.get("/v1/comparisons", order="desc", limit=count)
    out = []
    for c in listed.get("data") or []:
        out.append(await api.get(f"/v1/comparisons/{seg(c['id'])}"))
    return out


@router.get("")
@router.get("/")
async def overview(page: UserPage) -> Response:
    api = page.api
    today = dt.datetime.now(dt.UTC).date().isoformat()
    jobs, avatars, models, usage, gold, comparisons = await parts(
        api.get("/v1/fine_tuning/jobs", limit=100), api.get("/v1/avatars"), api.get("/v1/models"),
        api.get("/v1/usage", start_date=today, end_date=today), gold_examples(api), latest_comparisons(api))
    active_jobs = [j for j in (jobs.value or {}).get("data") or [] if j.get("status") in
                   ("validating_files", "queued", "running")]
    serving: dict[str, list[str]] = {}
    for a in (avatars.value or {}).get("data") or []:
        for model, role in ((a.get("active_model"), "active"), (a.get("candidate_model"), "candidate")):
            if model:
                share = f" {a.get('candidate_share')}%" if role == "candidate" else ""
                serving.setdefault(model, []).append(f"{a['name']} ({role}{share})")
    fine_tuned = [m for m in (models.value or {}).get("data") or [] if m.get("base_model")]
    return page.render("overview.html", title="Overview", jobs=jobs, active_jobs=active_jobs,
                       running=sum(1 for j in active_jobs if j.get("status") == "running"),
                       queued=sum(1 for j in active_jobs if j.get("status") != "running"),
                       avatars=avatars, serving=serving, models=models, fine_tuned=fine_tuned, usage=usage,
                       gold=gold, comparisons=comparisons, today=today)
