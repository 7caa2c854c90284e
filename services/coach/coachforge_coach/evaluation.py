"""Evaluation of a coach model through a running coach service (``coachforge coach eval``).

Six scenarios in the spirit of progressive overload and deload, each with the direction the
week's training stress should move:

============== ======================================================== =========
scenario       athlete                                                  expected
============== ======================================================== =========
fresh          well rested, TSB > +10 after an easy fortnight           up
overreached    a very hard week on top of steady training (TSB < -20)   down
sick           flagged ill                                              down
poor_sleep     under 5 h of sleep last night                            down
key_session    normal load, two key sessions in the week                same
taper          race in 6 days, plan phase "taper"                       not up
============== ======================================================== =========

Every scenario is imported as its own athlete (``eval-<scenario>-<variant>``, idempotently) and
the coach is asked for a recommendation with the model under test. Scores:

* **valid**: the model's answer matched the modification schema;
* **rule-accepted operations**: operations of valid answers that passed every safety rule;
* **direction**: the week's TSS with the model's accepted operations moved the expected way
  (an answer that was not valid does not agree).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx

from polarize.schema import parse_modification

Direction = Literal["up", "down", "same"]
Expected = Literal["up", "down", "same", "not_up"]

TODAY: Final = dt.date(2025, 6, 2)  # a Monday; every request names it, so the scenarios never age
SCENARIOS: Final[tuple[tuple[str, Expected], ...]] = (
    ("fresh", "up"), ("overreached", "down"), ("sick", "down"), ("poor_sleep", "down"),
    ("key_session", "same"), ("taper", "not_up"))
TOLERANCE: Final = 0.01  # a change of the week's TSS below 1 % counts as "same"


def _day(offset: int) -> str:
    return (TODAY + dt.timedelta(days=offset)).isoformat()


def _workout(athlete: str, wid: str, offset: int, kind: str, zone: int, minutes: int, tss: float, *,
             status: str = "planned", key: bool = False, sport: str = "run") -> dict[str, Any]:
    return {"external_id": wid, "athlete_id": athlete, "status": status, "date": _day(offset), "sport": sport,
            "type": kind, "zone": zone, "duration_min": minutes, "tss": tss, "key_session": key}


def scenario_batch(name: str, variant: int = 0) -> tuple[str, dict[str, Any]]:
    """The athlete id and the import batch of one scenario variant (deterministic)."""
    athlete = f"eval-{name}-{variant}"
    steady = 55.0 + 5 * variant
    recent = {"fresh": 20.0, "overreached": 150.0 + 10 * variant}.get(name, steady)
    sleep = 4.6 + 0.1 * variant if name == "poor_sleep" else 8.0 if name == "fresh" else 7.4
    soreness = 2 if name in ("fresh", "taper") else 4
    done = [_workout(athlete, f"{athlete}-d{back}", -back, "endurance", 2, 60, recent if back <= 10 else steady,
                     status="completed") for back in range(120, 0, -1)]
    if name == "taper":  # the last 10 days were lighter already
        done = [{**w, "tss": steady * 0.6} if w["date"] >= _day(-10) else w for w in done]
    p = f"{athlete}-p"
    key_sessions = name == "key_session"
    plan = [
        _workout(athlete, f"{p}1", 0, "endurance", 2, 60 + 5 * variant, 50),
        _workout(athlete, f"{p}2", 1, "intervals", 4, 60, 85, key=key_sessions),
        _workout(athlete, f"{p}3", 2, "endurance", 2, 50, 42),
        _workout(athlete, f"{p}4", 3, "tempo", 3, 60, 70),
        _workout(athlete, f"{p}5", 4, "recovery", 1, 40, 20),
        _workout(athlete, f"{p}6", 5, "long", 2, 110 + 10 * variant, 95, key=key_sessions),
    ]
    if name == "taper":
        plan = [{**w, "duration_min": max(30, w["duration_min"] * 2 // 3), "tss": round(w["tss"] * 0.66)}
                for w in plan]
    wellness = [{"athlete_id": athlete, "date": _day(-back), "sleep_hours": 7.5, "soreness": 3, "hrv_ms": 62.0,
                 "resting_hr": 47} for back in range(14, 0, -1)]
    wellness.append({"athlete_id": athlete, "date": _day(0), "sleep_hours": sleep, "soreness": soreness,
                     "hrv_ms": 62.0, "resting_hr": 47})
    phase, goal, goal_date = ("taper", "City 10k", _day(6)) if name == "taper" else ("build", "Autumn half",
                                                                                       _day(90))
    return athlete, {
        "athletes": [{"external_id": athlete, "name": f"Eval {name}", "sport": "run",
                      "ill_or_injured": name == "sick",
                      "plan": {"name": "Eval plan", "phase": phase, "goal": goal, "goal_date": goal_date}}],
        "workouts": done + plan, "wellness": wellness}


def direction(weekly_tss: dict[str, float]) -> Direction:
    before, after = weekly_tss["before"], weekly_tss["after"]
    if after > before * (1 + TOLERANCE):
        return "up"
    if after < before * (1 - TOLERANCE):
        return "down"
    return "same"


def agrees(got: Direction | None, expected: Expected) -> bool:
    if got is None:
        return False
    return got in ("down", "same") if expected == "not_up" else got == expected


@dataclass
class Case:
    scenario: str
    variant: int
    expected: Expected
    valid: bool
    source: str
    fallback: str | None
    proposed: int
    accepted: int
    got: Direction | None

    @property
    def agrees(self) -> bool:
        return agrees(self.got, self.expected)


@dataclass
class Report:
    model: str
    cases: list[Case] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return sum(c.valid for c in self.cases)

    @property
    def proposed(self) -> int:
        return sum(c.proposed for c in self.cases)

    @property
    def accepted(self) -> int:
        return sum(c.accepted for c in self.cases)

    @property
    def agreeing(self) -> int:
        return sum(c.agrees for c in self.cases)


def judge(rec: dict[str, Any], scenario: str, variant: int, expected: Expected) -> Case:
    """Score one recommendation of the coach API for the model under test."""
    answer = rec.get("model_answer") or {}
    valid = bool(answer.get("valid"))
    fallback = (rec.get("fallback") or {}).get("reason")
    got: Direction | None = None
    proposed = accepted = 0
    if rec["source"] == "model":
        proposed = len(rec["operations"])
        accepted = sum(1 for o in rec["operations"] if o["accepted"])
        got = direction(rec["weekly_tss"])
    elif valid and fallback == "rejected_by_rules":
        # the model's operations were all rejected: with it, nothing would have changed
        proposed = len(parse_modification(answer.get("content") or "").operations)
        got = "same"
    return Case(scenario=scenario, variant=variant, expected=expected, valid=valid, source=rec["source"],
                fallback=fallback, proposed=proposed, accepted=accepted, got=got)


def run(base_url: str, api_key: str, model: str, *, variants: int = 2, timeout: float = 600.0) -> Report:
    """Import the scenarios and ask the coach service (REST) for a recommendation of each with ``model``."""
    report = Report(model=model)
    root = base_url.rstrip("/").removesuffix("/v1")
    with httpx.Client(base_url=root, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout) as client:
        for scenario, expected in SCENARIOS:
            for variant in range(variants):
                athlete, batch = scenario_batch(scenario, variant)
                client.post("/v1/coach/import", json=batch).raise_for_status()
                r = client.post(f"/v1/coach/athletes/{athlete}/recommendations",
                                json={"model": model, "today": TODAY.isoformat(),
                                      "question": "Should I change anything this week?"})
                r.raise_for_status()
                report.cases.append(judge(r.json(), scenario, variant, expected))
    return report


def _pct(n: int, total: int) -> str:
    return f"{n}/{total} ({100 * n / total:.0f}%)" if total else "0/0 (-)"


def format_report(report: Report) -> str:
    lines = [f"coach eval: {report.model}", "",
             f"{'scenario':<14} {'expected':<8} {'valid':>6} {'accepted ops':>13} {'direction':>10}  source"]
    for c in report.cases:
        source = c.source if c.fallback is None else f"rules ({c.fallback})"
        lines.append(f"{c.scenario + '/' + str(c.variant):<14} {c.expected:<8} {'yes' if c.valid else 'no':>6} "
                     f"{f'{c.accepted}/{c.proposed}':>13} {(c.got or '-'):>6} {'ok' if c.agrees else 'x':>3}  "
                     f"{source}")
    total = len(report.cases)
    lines += ["",
              f"valid answers             {_pct(report.valid, total)}",
              f"rule-accepted operations  {_pct(report.accepted, report.proposed)}",
              f"expected direction        {_pct(report.agreeing, total)}"]
    return "\n".join(lines)
