"""Training load (CTL / ATL / TSB / ramp) from a daily TSS history.

The standard exponentially weighted model (Banister / TrainingPeaks "PMC")::

    ctl[d] = ctl[d-1] + (tss[d] - ctl[d-1]) / 42     # chronic load, "fitness"
    atl[d] = atl[d-1] + (tss[d] - atl[d-1]) / 7      # acute load, "fatigue"
    tsb[d] = ctl[d-1] - atl[d-1]                     # balance, "form", from yesterday's values
    ramp[d] = ctl[d] - ctl[d-7]                      # CTL change over the last 7 days

Both averages start at 0 the day before the first point; days without an entry count as 0 TSS.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

CTL_DAYS: Final = 42
ATL_DAYS: Final = 7
RAMP_DAYS: Final = 7


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """Load for one day; ``tsb`` uses the previous day's CTL and ATL."""

    day: dt.date
    tss: float
    ctl: float
    atl: float
    tsb: float
    ramp: float


def compute_load(
    daily_tss: Mapping[dt.date, float],
    *,
    until: dt.date,
    start: dt.date | None = None,
) -> list[LoadPoint]:
    """One :class:`LoadPoint` per day from ``start`` (default: the first day in ``daily_tss``)
    to ``until`` inclusive.

    Entries after ``until`` are ignored; entries before ``start`` are ignored too (the model
    starts from zero on ``start``).  Returns an empty list when there is no start day or when
    ``until`` is before it.  Negative TSS values are rejected.
    """
    for day, tss in daily_tss.items():
        if tss < 0:
            raise ValueError(f"negative TSS {tss} on {day.isoformat()}")
    if start is None:
        if not daily_tss:
            return []
        start = min(daily_tss)
    if until < start:
        return []

    points: list[LoadPoint] = []
    ctl_history: list[float] = []  # ctl_history[i] = CTL at the end of day start+i
    ctl = atl = 0.0
    day = start
    one_day = dt.timedelta(days=1)
    while day <= until:
        tss = float(daily_tss.get(day, 0.0))
        tsb = ctl - atl  # yesterday's values
        ctl = ctl + (tss - ctl) / CTL_DAYS
        atl = atl + (tss - atl) / ATL_DAYS
        index = len(ctl_history)
        ctl_week_ago = ctl_history[index - RAMP_DAYS] if index >= RAMP_DAYS else 0.0
        ctl_history.append(ctl)
        points.append(LoadPoint(day=day, tss=tss, ctl=ctl, atl=atl, tsb=tsb, ramp=ctl - ctl_week_ago))
        day += one_day
    return points


def load_on(daily_tss: Mapping[dt.date, float], day: dt.date) -> LoadPoint | None:
    """The :class:`LoadPoint` for ``day`` (``None`` without any history up to it)."""
    points = compute_load(daily_tss, until=day)
    return points[-1] if points else None
