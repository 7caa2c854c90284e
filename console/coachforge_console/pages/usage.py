"""Usage: cost and tokens per day stacked by model (or avatar), a date range, and the rows as CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from starlette.responses import Response

from coachforge_console.client import ApiError
from coachforge_console.web import UserPage, router

MAX_DAYS = 366
STACKS = ("model", "avatar", "purpose")
CSV_COLUMNS = ("date", "model", "avatar", "purpose", "messages", "input_tokens", "output_tokens", "cost_usd")


def date_range(start: str | None, end: str | None) -> tuple[dt.date, dt.date]:
    """The range asked for (default: the last 30 days, UTC), both ends included."""
    today = dt.datetime.now(dt.UTC).date()
    try:
        last = dt.date.fromisoformat(end) if end else today
        first = dt.date.fromisoformat(start) if start else last - dt.timedelta(days=29)
    except ValueError as err:
        raise ApiError(400, f"Dates are YYYY-MM-DD: {err}.") from None
    if first > last:
        raise ApiError(400, "The start date is after the end date.")
    if (last - first).days >= MAX_DAYS:
        raise ApiError(400, f"Choose at most {MAX_DAYS} days.")
    return first, last


def stacked(rows: list[dict[str, Any]], first: dt.date, last: dt.date, by: str, value: str) -> dict[str, Any]:
    """Chart data: one x per day (unix seconds, UTC midnight) and one series per model/avatar, zero-filled."""
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    index = {d.isoformat(): i for i, d in enumerate(days)}
    totals: dict[str, list[float]] = {}
    for row in rows:
        i = index.get(str(row.get("date")))
        if i is None:
            continue
        key = str(row.get(by) or ("(none)" if by == "avatar" else "-"))
        series = totals.setdefault(key, [0.0] * len(days))
        if value == "tokens":
            series[i] += float(row.get("input_tokens") or 0) + float(row.get("output_tokens") or 0)
        else:
            series[i] += float(row.get(value) or 0)
    x = [int(dt.datetime.combine(d, dt.time(), dt.UTC).timestamp()) for d in days]
    ordered = sorted(totals.items(), key=lambda kv: -sum(kv[1]))
    return {"x": x, "series": [{"label": k, "values": v} for k, v in ordered],
            "unit": "USD" if value == "cost_usd" else "tokens"}


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c, "")) for c in CSV_COLUMNS])
    return out.getvalue()


@router.get("/usage")
async def usage_page(page: UserPage, start_date: str | None = None, end_date: str | None = None,
                     by: str = "model", purpose: str | None = None) -> Response:
    first, last = date_range(start_date, end_date)
    by = by if by in STACKS else "model"
    usage = await page.api.get("/v1/usage", start_date=first.isoformat(), end_date=last.isoformat(),
                               purpose=purpose or None)
    rows = usage.get("data") or []
    return page.render("usage.html", title="Usage", usage=usage, rows=rows, start=first.isoformat(),
                       end=last.isoformat(), by=by, purpose=purpose or "", stacks=STACKS,
                       cost=stacked(rows, first, last, by, "cost_usd"), tokens=stacked(rows, first, last, by, "tokens"))


@router.get("/usage.csv")
async def usage_csv(page: UserPage, start_date: str | None = None, end_date: str | None = None,
                    purpose: str | None = None) -> Response:
    first, last = date_range(start_date, end_date)
    usage = await page.api.get("/v1/usage", start_date=first.isoformat(), end_date=last.isoformat(),
                               purpose=purpose or None)
    name = f"coachforge-usage-{first.isoformat()}-{last.isoformat()}.csv"
    return Response(to_csv(usage.get("data") or []), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
