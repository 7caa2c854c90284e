"""Daily usage: ``usage.recorded`` events summed into one row per tenant/day/model/avatar/purpose, and
queries (an eval run's samples and judges, purpose "evaluation", are kept apart from applications'
requests, purpose "app").

The consumer adds each event with one atomic ``INSERT … ON CONFLICT DO UPDATE`` inside the
EventConsumer's idempotency transaction, so a redelivered event is counted once and two
consumers adding to the same row never lose an increment.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.inference.v1 import inference_pb2
from coachforge_inference.models import UsageDaily
from coachforge_inference.service import APP, PURPOSES
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.events import InvalidEvent
from coachforge_shared.ids import utcnow

GROUP_FIELDS = ("model", "avatar", "purpose")


def on_usage_recorded(s: Session, env: Envelope, event: inference_pb2.UsageRecorded) -> None:
    """Add one answered request to its day's row (the day of the event, UTC). An event with a
    negative token count or a negative or non-finite cost is refused (dead-lettered): it would
    lower a tenant's bill."""
    if event.prompt_tokens < 0 or event.completion_tokens < 0:
        raise InvalidEvent(f"usage.recorded with negative token counts (prompt {event.prompt_tokens}, completion "
                           f"{event.completion_tokens}).")
    if not math.isfinite(event.cost_usd) or event.cost_usd < 0:
        raise InvalidEvent(f"usage.recorded with an invalid cost_usd ({event.cost_usd}).")
    day = (env.occurred_at.ToDatetime(tzinfo=UTC).date() if env.HasField("occurred_at")
           else utcnow().date())
    s.execute(_upsert(s.get_bind().dialect.name), dict(
        tenant_id=env.tenant_id, day=day, model=event.model, avatar=event.avatar,
        purpose=event.purpose or APP, messages=1,
        input_tokens=event.prompt_tokens, output_tokens=event.completion_tokens, cost_usd=event.cost_usd,
        updated_at=utcnow()))


@functools.cache
def _upsert(dialect: str) -> Any:
    """The ``INSERT … ON CONFLICT DO UPDATE`` adding one request to its row, built once per dialect
    (building it per event cost more CPU than running it)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(UsageDaily)
    table = UsageDaily.__table__
    return stmt.on_conflict_do_update(
        index_elements=["tenant_id", "day", "model", "avatar", "purpose"],
        set_={"messages": table.c.messages + stmt.excluded.messages,
              "input_tokens": table.c.input_tokens + stmt.excluded.input_tokens,
              "output_tokens": table.c.output_tokens + stmt.excluded.output_tokens,
              "cost_usd": table.c.cost_usd + stmt.excluded.cost_usd,
              "updated_at": stmt.excluded.updated_at})


@dataclass(frozen=True)
class UsageQuery:
    start_date: date | None = None
    end_date: date | None = None
    model: str | None = None
    avatar: str | None = None
    group_by: tuple[str, ...] = GROUP_FIELDS
    """Rows are always per day; also split by these (a subset of model, avatar, purpose)."""
    purpose: str | None = None
    """Only this purpose ("app" or "evaluation"); None = every purpose."""


def parse_date(value: str | None, param: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{param} must be a date YYYY-MM-DD, got {value!r}", param=param) from None


def parse_group_by(value: str | None) -> tuple[str, ...]:
    if value is None or value == "":
        return GROUP_FIELDS
    fields = tuple(dict.fromkeys(f.strip() for f in value.split(",") if f.strip()))
    bad = [f for f in fields if f not in (*GROUP_FIELDS, "day")]
    if bad:
        raise InvalidArgument(f"group_by accepts day, {', '.join(GROUP_FIELDS)}; got {', '.join(bad)}",
                              param="group_by")
    return tuple(f for f in fields if f != "day")


def parse_purpose(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in PURPOSES:
        raise InvalidArgument(f"purpose must be one of {', '.join(PURPOSES)}; got {value!r}", param="purpose")
    return value


def make_query(start_date: str | None = None, end_date: str | None = None, model: str | None = None,
               avatar: str | None = None, group_by: str | None = None, purpose: str | None = None) -> UsageQuery:
    q = UsageQuery(parse_date(start_date, "start_date"), parse_date(end_date, "end_date"), model or None,
                   avatar if avatar is not None and avatar != "" else None, parse_group_by(group_by),
                   parse_purpose(purpose))
    if q.start_date and q.end_date and q.start_date > q.end_date:
        raise InvalidArgument("start_date is after end_date", param="start_date")
    return q


def daily_usage(db: Database, tenant_id: str, q: UsageQuery) -> list[dict[str, Any]]:
    """The tenant's rows matching ``q``, by day then model then avatar then purpose."""
    t = UsageDaily
    keys = [t.day] + [getattr(t, f) for f in q.group_by]
    stmt = select(*keys, func.sum(t.messages), func.sum(t.input_tokens), func.sum(t.output_tokens),
                  func.sum(t.cost_usd)).where(t.tenant_id == tenant_id)
    if q.start_date:
        stmt = stmt.where(t.day >= q.start_date)
    if q.end_date:
        stmt = stmt.where(t.day <= q.end_date)
    if q.model:
        stmt = stmt.where(t.model == q.model)
    if q.avatar is not None:
        stmt = stmt.where(t.avatar == q.avatar)
    if q.purpose is not None:
        stmt = stmt.where(t.purpose == q.purpose)
    stmt = stmt.group_by(*keys).order_by(*keys)
    rows = []
    with db.session() as s:
        for r in s.execute(stmt):
            row: dict[str, Any] = {"date": r[0].isoformat()}
            for i, f in enumerate(q.group_by, start=1):
                row[f] = r[i]
            n = len(q.group_by) + 1
            row.update(messages=int(r[n]), input_tokens=int(r[n + 1]), output_tokens=int(r[n + 2]),
                       cost_usd=round(float(r[n + 3]), 10))
            rows.append(row)
    return rows
