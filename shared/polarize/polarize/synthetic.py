"""Seeded synthetic coaching examples for fine-tuning and evaluation.

Each athlete is simulated: a 90-day daily TSS history with weekly structure (a rest day, one to
three hard days, a long day), three-week build / one-week recovery blocks that ramp the load,
missed days and sometimes an illness gap; CTL (42-day) / ATL (7-day) / TSB / ramp are then
*computed* from that history with :func:`~polarize.load.compute_load` (exactly as
the coach service does from completed workouts), and a wellness log (sleep, soreness, HRV,
resting HR, RPE) goes with it.  The HRV drop is measured against the athlete's 28-day HRV
average, as the coach service does.

The user message is built by the coach service's own context builder
(:func:`~polarize.context.build_context`: profile, flags, load trend, the last
14 days, the coming week's plan), so a model is trained on exactly the prompt it is served.

Two kinds of example:

* ``modification`` (the default share ``1 - free_text_share``): the JSON system prompt and, as
  the assistant's answer, the rule-based modification of :func:`recommend`.  Scenarios are
  dealt in turn by :data:`SCENARIO_WEIGHTS` (ill, fatigued twice, fresh, normal, taper), so that
  "no change" (normal and taper) is a third of the answers rather than the largest share and the
  three fatigued answers (easier, recovery, moved key session) are seen as often as the others.
  ``taper`` is a race within ``config.taper_days``: the rules keep the plan (no load increase),
  even for a fresh athlete.
* ``free_text`` (``round(n * free_text_share)``, default 15 %): a coaching question answered in
  plain words, templated from the athlete's numbers (:data:`CHAT_SYSTEM_PROMPT`), so a
  fine-tuned model keeps its conversational voice.

Same ``n``, ``seed`` and options give the same examples.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from .context import Day, DoneWorkout, Profile, build_context
from .load import LoadPoint, compute_load
from .prompt import CHAT_SYSTEM_PROMPT, SYSTEM_PROMPT
from .rules import (
    DEFAULT_CONFIG,
    AthleteState,
    Branch,
    PlannedWorkout,
    RuleConfig,
    classify_state,
    estimate_tss,
    is_tapering,
    recommend,
    weekday,
)
from .schema import Modification, WorkoutType

Scenario: TypeAlias = Literal["ill", "fatigued", "fresh", "normal", "taper"]
SCENARIOS: Final[tuple[Scenario, ...]] = ("ill", "fatigued", "fresh", "normal", "taper")
Kind: TypeAlias = Literal["modification", "free_text"]

QUESTIONS: Final[tuple[str | None, ...]] = (
    None,
    "Any changes to my week?",
    "Should I adjust my plan?",
    "Is my plan still right for me?",
    "What should I change this week?",
    "How does my week look?",
)
FREE_TEXT_TOPICS: Final[tuple[str, ...]] = ("form", "fitness", "sleep", "race", "week", "easy_days")
FREE_TEXT_QUESTIONS: Final[dict[str, tuple[str, ...]]] = {
    "form": ("Why do I feel tired lately?", "What does my TSB say about me right now?"),
    "fitness": ("Is my fitness going up?", "How is my CTL trending?"),
    "sleep": ("Does my sleep affect my training?", "How important is sleep for me this week?"),
    "race": ("Am I on track for my race?", "How should I approach the weeks before my race?"),
    "week": ("What is the focus of my week?", "Which session matters most this week?"),
    "easy_days": ("Why are so many of my sessions easy?", "Can I push harder on my easy days?"),
}
SCENARIO_WEIGHTS: Final[dict[Scenario, int]] = {"ill": 1, "fatigued": 2, "fresh": 1, "normal": 1, "taper": 1}
"""How many of every ``sum(SCENARIO_WEIGHTS.values())`` modification examples each scenario gets."""
DEFAULT_FREE_TEXT_SHARE: Final = 0.15
DEFAULT_TOKEN_BUDGET: Final = 600  # the coach service's default prompt budget
HISTORY_DAYS: Final = 90
HRV_BASELINE_DAYS: Final = 28  # the coach service's default HRV baseline window
NAMES: Final = ("Anna", "Ben", "Chloe", "David", "Elif", "Finn", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Leo",
                "Maya", "Nils", "Olga", "Pedro", "Rosa", "Sam", "Tara", "Yusuf")
GOALS: Final[dict[str, tuple[str, ...]]] = {
    "run": ("City 10k", "Spring half marathon", "Berlin Marathon", "Trail 30k"),
    "bike": ("Gran fondo", "Hill climb", "Century ride", "Gravel 150"),
    "tri": ("Olympic triathlon", "Half Ironman", "Sprint triathlon"),
}

_EPOCH: Final = dt.date(2025, 1, 6)
_MAX_TRIES: Final = 200

TokenCounter = Callable[[str], int]


def approximate_tokens(text: str) -> int:
    """Tokens of SmolLM2's tokenizer (the default served model) for these prompts, estimated: one per
    2 characters (dates and numbers are split digit by digit; measured ~1.95 characters per token).
    Pass the serving model's real counter to :func:`generate_examples` for an exact match."""
    return len(text) // 2 + 1


@dataclass(frozen=True, slots=True)
class SyntheticExample:
    chat: dict[str, list[dict[str, str]]]  # {"messages": [system, user, assistant]}
    state: AthleteState
    upcoming: tuple[PlannedWorkout, ...]
    today: dt.date
    expected: Modification | None  # the rule-based answer (``None`` for free-text examples)
    branch: Branch
    question: str | None = None
    scenario: Scenario = "normal"
    kind: Kind = "modification"
    daily_tss: tuple[tuple[dt.date, float], ...] = ()  # the simulated history, oldest first (today excluded)
    load: tuple[LoadPoint, ...] = ()  # compute_load(daily_tss, until=today)
    history: tuple[Day, ...] = ()  # the 14 days before today as the context shows them
    profile: Profile | None = None

    @property
    def answer(self) -> str:
        return self.chat["messages"][-1]["content"]


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True, slots=True)
class _Athlete:
    name: str
    profile: str  # run / bike / tri
    level: float  # typical daily TSS (the CTL the athlete trains at)
    sleep: float
    hrv: float
    rhr: int
    hard_days: tuple[int, ...]  # weekdays 0..6
    long_day: int
    rest_day: int


def _athlete(rng: random.Random) -> _Athlete:
    profile = rng.choice(("run", "run", "bike", "tri"))
    rest_day = rng.choice((0, 0, 4))
    long_day = rng.choice((5, 6)) if rest_day != 4 else 6
    options = [d for d in range(7) if d not in (rest_day, long_day)]
    count = rng.choice((1, 2, 2, 3))
    while True:
        hard = sorted(rng.sample(options, count))
        if all(b - a > 1 for a, b in itertools.pairwise(hard)) and all(abs(h - long_day) > 1 for h in hard):
            break
        count = max(1, count - (rng.random() < 0.3))
    return _Athlete(name=rng.choice(NAMES), profile=profile, level=float(rng.randint(35, 85)),
                    sleep=round(rng.uniform(6.9, 8.3), 1), hrv=float(rng.randint(45, 90)), rhr=rng.randint(40, 58),
                    hard_days=tuple(hard), long_day=long_day, rest_day=rest_day)


_WEIGHTS: Final = {"rest": 0.0, "recovery": 0.5, "endurance": 1.0, "hard": 1.35, "long": 1.9}
_BLOCK: Final = (0.95, 1.02, 1.1, 0.7)  # three build weeks, one recovery week


def _day_kind(a: _Athlete, day: dt.date) -> str:
    wd = day.weekday()
    if wd == a.rest_day:
        return "rest"
    if wd == a.long_day:
        return "long"
    if wd in a.hard_days:
        return "hard"
    return "recovery" if (wd + 1) % 7 in a.hard_days and wd % 2 else "endurance"


def _done(rng: random.Random, a: _Athlete, kind: str, tss: float) -> DoneWorkout:
    """A completed session of ``kind`` with ``tss``, its duration derived from its zone."""
    sport = a.profile if a.profile != "tri" else rng.choice(("run", "bike", "swim"))
    wtype: WorkoutType
    if kind == "hard":
        wtype = "intervals" if rng.random() < 0.65 else "tempo"
        zone = 4 if wtype == "intervals" else 3
    elif kind == "long":
        wtype, zone = "long", 2
    elif kind == "recovery":
        wtype, zone = "recovery", 1
    else:
        wtype, zone = "endurance", 2
    minutes = max(15, 5 * round(tss / estimate_tss(zone, 60) * 60 / 5))
    return DoneWorkout(sport=sport, type=wtype, zone=zone, duration_min=minutes, tss=float(round(tss)))


def _simulate(rng: random.Random, a: _Athlete, today: dt.date, scenario: Scenario,
              fatigue_by_load: bool) -> dict[dt.date, list[DoneWorkout]]:
    """Completed sessions of the ``HISTORY_DAYS`` days before today."""
    start = today - dt.timedelta(days=HISTORY_DAYS)
    growth = rng.uniform(0.0, 0.05)  # load growth per four-week block
    phase = rng.randrange(4)
    weight_week = sum(_WEIGHTS[_day_kind(a, start + dt.timedelta(days=i))] for i in range(7))
    missed = rng.uniform(0.02, 0.08)
    gap_start = gap_len = -1
    if rng.random() < 0.35:  # an illness or travel gap somewhere before the last three weeks
        gap_len = rng.randint(3, 7)
        gap_start = rng.randint(5, HISTORY_DAYS - 21 - gap_len)
    recent = {  # the shape of the last days: (days, load factor)
        "fresh": (rng.randint(7, 12), rng.uniform(0.25, 0.5)),
        "fatigued": (rng.randint(7, 10), rng.uniform(1.5, 1.95)) if fatigue_by_load else (0, 1.0),
        "taper": (rng.randint(7, 12), rng.uniform(0.45, 0.7)),
        "ill": (rng.randint(1, 4), 0.0),
        "normal": (0, 1.0),
    }[scenario]
    out: dict[dt.date, list[DoneWorkout]] = {}
    for i in range(HISTORY_DAYS):
        day = start + dt.timedelta(days=i)
        week = i // 7
        block = week // 4
        target = a.level * 7 * _BLOCK[(week + phase) % 4] * (1 + growth) ** (block - HISTORY_DAYS // 28)
        kind = _day_kind(a, day)
        tss = target * _WEIGHTS[kind] / weight_week * rng.uniform(0.85, 1.15)
        back = HISTORY_DAYS - i
        if back <= recent[0]:
            tss *= recent[1]
            if scenario in ("fresh", "taper") and kind == "hard" and rng.random() < 0.5:
                kind = "endurance"
        elif gap_start <= i < gap_start + gap_len or rng.random() < missed:
            tss = 0.0
        if kind != "rest" and tss >= 10:
            out[day] = [_done(rng, a, kind, tss)]
    return out


def _wellness(rng: random.Random, a: _Athlete, sessions: dict[dt.date, list[DoneWorkout]], today: dt.date,
              scenario: Scenario) -> tuple[dict[dt.date, Day], float, int, float]:
    """The wellness log of the ``HRV_BASELINE_DAYS`` days before today (as :class:`Day`) and today's
    sleep, soreness and HRV (ms)."""
    days: dict[dt.date, Day] = {}
    for back in range(HRV_BASELINE_DAYS, 0, -1):
        day = today - dt.timedelta(days=back)
        done = tuple(sessions.get(day, ()))
        tss = sum(w.tss for w in done)
        strain = tss / a.level if a.level else 0.0
        soreness = max(1, min(7, round(2 + 1.6 * strain + rng.uniform(-1, 1))))
        hard = any(w.zone >= 3 for w in done)
        rpe = (min(9, 7 + (rng.random() < 0.4)) if hard else rng.randint(3, 5)) if done else None
        notes = ""
        if scenario == "ill" and back <= 2 and rng.random() < 0.6:
            notes = rng.choice(("sore throat", "felt feverish", "head cold coming on", "stomach bug"))
        elif hard and rng.random() < 0.15:
            notes = rng.choice(("legs heavy", "strong intervals", "hit every rep", "windy, tough"))
        days[day] = Day(day=day, workouts=done, sleep_hours=round(a.sleep + rng.uniform(-0.7, 0.5), 1),
                        soreness=soreness, hrv_ms=float(round(a.hrv * rng.uniform(0.93, 1.07))),
                        resting_hr=a.rhr + rng.randint(-2, 2), rpe=rpe, notes=notes)
    baseline = sum(d.hrv_ms or 0.0 for d in days.values()) / len(days)
    sleep = round(a.sleep + rng.uniform(-0.6, 0.4), 1)
    soreness = rng.randint(2, 5)
    hrv = baseline * rng.uniform(0.9, 1.05)
    if scenario in ("fresh", "taper"):
        sleep, soreness, hrv = round(rng.uniform(7.0, 8.8), 1), rng.randint(1, 3), baseline * rng.uniform(0.94, 1.06)
    elif scenario == "ill":
        sleep, soreness = round(rng.uniform(5.5, 8.0), 1), rng.randint(3, 7)
    elif scenario == "fatigued":
        trigger = rng.choice(("soreness", "sleep", "hrv", "none"))
        if trigger == "soreness":
            soreness = rng.randint(8, 9)
        elif trigger == "sleep":
            sleep = round(rng.uniform(4.3, 5.8), 1)
        elif trigger == "hrv":
            hrv = baseline * rng.uniform(0.62, 0.78)
    return days, sleep, soreness, float(round(hrv))


def _plan(rng: random.Random, a: _Athlete, today: dt.date, scale: float) -> list[PlannedWorkout]:
    """The coming 7 days of the athlete's structure (rest, hard, long, easy days), at ``scale`` of the
    usual volume (a taper plans less); a key session sometimes."""
    key_hard = rng.random() < 0.3
    key_long = rng.random() < 0.4
    base_id = rng.randint(1, 89)
    level = a.level / 60
    workouts: list[PlannedWorkout] = []
    first_hard = True
    for offset in range(7):
        day = today + dt.timedelta(days=offset)
        kind = _day_kind(a, day)
        if kind == "rest" or (kind == "endurance" and rng.random() < 0.12):
            continue
        sport = a.profile if a.profile != "tri" else rng.choice(("run", "bike", "swim"))
        key = False
        wtype: WorkoutType
        if kind == "hard":
            wtype = "intervals" if rng.random() < 0.65 else "tempo"
            zone = (5 if rng.random() < 0.2 else 4) if wtype == "intervals" else 3
            low, high = 45, 80
            key = key_hard and first_hard
            first_hard = False
        elif kind == "long":
            wtype, zone = "long", 2
            low, high = {"run": (80, 120), "bike": (120, 240), "swim": (60, 75)}[sport]
            key = key_long
        elif kind == "endurance":
            wtype, zone = "endurance", 2
            low, high = (30, 60) if sport == "swim" else (45, 90)
        else:
            wtype, zone = "recovery", 1
            low, high = 30, 45
        minutes = int(max(20, min(240, 5 * round(rng.uniform(low, high) * scale * (0.8 + 0.35 * level) / 5))))
        tss = float(round(estimate_tss(zone, minutes) * rng.uniform(0.9, 1.1)))
        workouts.append(PlannedWorkout(id=f"w{base_id + len(workouts)}", date=day, sport=sport, type=wtype, zone=zone,
                                       duration_min=minutes, tss=tss, key_session=key))
    return workouts


def _shown(state: AthleteState) -> AthleteState:
    """``state`` at the precision the prompt shows it."""
    return AthleteState(ctl=round(state.ctl), atl=round(state.atl), tsb=round(state.tsb), ramp=round(state.ramp, 1),
                        sleep_hours=state.sleep_hours, soreness=state.soreness,
                        hrv_drop_pct=float(round(state.hrv_drop_pct)), ill_or_injured=state.ill_or_injured,
                        days_to_race=state.days_to_race)


def _fits(scenario: Scenario, state: AthleteState, config: RuleConfig) -> bool:
    branch = classify_state(state, config)
    if branch != classify_state(_shown(state), config):  # on a threshold: the prompt would not decide it
        return False
    if scenario == "taper":
        return is_tapering(state, config) and branch == "normal" and state.tsb > 0
    return branch == scenario and not is_tapering(state, config)


@dataclass(frozen=True, slots=True)
class _Sample:
    athlete: _Athlete
    today: dt.date
    state: AthleteState
    daily: dict[dt.date, float]
    load: list[LoadPoint]
    days: dict[dt.date, Day]
    profile: Profile
    upcoming: list[PlannedWorkout]


def _sample(rng: random.Random, scenario: Scenario, config: RuleConfig) -> _Sample:
    for _ in range(_MAX_TRIES):
        today = _EPOCH + dt.timedelta(days=rng.randrange(365))
        a = _athlete(rng)
        sessions = _simulate(rng, a, today, scenario, fatigue_by_load=rng.random() < 0.5)
        daily = {day: sum(w.tss for w in ws) for day, ws in sorted(sessions.items())}
        load = compute_load(daily, start=today - dt.timedelta(days=HISTORY_DAYS), until=today)
        days, sleep, soreness, hrv = _wellness(rng, a, sessions, today, scenario)
        baseline = sum(d.hrv_ms or 0.0 for d in days.values()) / len(days)
        hrv_drop = max(0.0, round((baseline - hrv) / baseline * 100, 1))
        race_in: int | None
        if scenario == "taper":
            race_in = rng.randint(3, config.taper_days)
        else:
            race_in = rng.choice((None, rng.randint(config.taper_days + 7, 160)))
        goal_date = today + dt.timedelta(days=race_in) if race_in is not None else None
        point = load[-1]
        state = AthleteState(ctl=point.ctl, atl=point.atl, tsb=point.tsb, ramp=point.ramp, sleep_hours=sleep,
                             soreness=soreness, hrv_drop_pct=hrv_drop, ill_or_injured=scenario == "ill",
                             days_to_race=race_in)
        if not _fits(scenario, state, config):
            continue
        sport = {"run": "run", "bike": "bike", "tri": "triathlon"}[a.profile]
        phase = "taper" if scenario == "taper" else rng.choice(("base", "build", "build", "peak"))
        profile = Profile(name=a.name, sport=sport, plan_name=rng.choice(("Polarized 12 weeks", "Season plan",
                                                                          "Coach plan")),
                          plan_phase=phase, goal=rng.choice(GOALS[a.profile]) if goal_date else "",
                          goal_date=goal_date)
        upcoming = _plan(rng, a, today, 0.65 if scenario == "taper" else 1.0)
        if len(upcoming) < 4:
            continue
        return _Sample(athlete=a, today=today, state=state, daily=daily, load=load, days=days, profile=profile,
                       upcoming=upcoming)
    raise AssertionError(f"no {scenario} athlete after {_MAX_TRIES} tries")  # pragma: no cover


# --------------------------------------------------------------------------- free-text answers


def free_text_answer(topic: str, state: AthleteState, upcoming: Sequence[PlannedWorkout], today: dt.date,
                     history: Sequence[Day], config: RuleConfig = DEFAULT_CONFIG) -> str:
    """A short coaching answer in plain words, templated from the athlete's numbers (deterministic)."""
    branch = classify_state(state, config)
    tsb = f"{state.tsb:+.0f}"
    first = "You're flagged ill or injured, so rest comes before any training. " if branch == "ill" else ""
    caution = " Right now you're carrying fatigue, so keep the next days easy and sleep well." if (
        branch == "fatigued") else ""
    if topic == "form":
        if state.tsb < config.fatigue_tsb:
            body = (f"Your TSB is {tsb}: your 7-day load (ATL {state.atl:.0f}) is well above your fitness "
                    f"(CTL {state.ctl:.0f}), so feeling tired is expected. A few easy days will bring it back.")
        elif state.tsb > config.fresh_tsb:
            body = (f"Your TSB is {tsb}, so you're fresh: recent load (ATL {state.atl:.0f}) is below your "
                    f"fitness (CTL {state.ctl:.0f}). Any tiredness is more likely sleep or stress than training.")
        else:
            body = (f"Your TSB is {tsb}, a normal training range: ATL {state.atl:.0f} against CTL "
                    f"{state.ctl:.0f} means productive fatigue you absorb with easy days.")
    elif topic == "fitness":
        trend = "rising" if state.ramp > 0.5 else "falling" if state.ramp < -0.5 else "stable"
        body = (f"Your fitness (CTL) is {state.ctl:.0f} and {trend}, {state.ramp:+.1f} over the last 7 days. "
                + ("That ramp is steep; keep it under about 5 per week to stay healthy."
                   if state.ramp > config.fresh_max_ramp else "That's a sustainable pace of change."))
    elif topic == "sleep":
        sleeps = [d.sleep_hours for d in history if d.sleep_hours is not None]
        avg = f"{sum(sleeps) / len(sleeps):.1f}h" if sleeps else "unknown"
        verdict = ("That's short: adaptation happens while you sleep, so aim for at least 7 hours."
                   if state.sleep_hours < config.fresh_min_sleep_hours
                   else "That's enough to absorb your training; keep the routine.")
        body = f"You slept {state.sleep_hours:.1f}h last night and {avg} on average over two weeks. {verdict}"
    elif topic == "race":
        if state.days_to_race is None:
            body = (f"You have no race planned yet. With CTL {state.ctl:.0f} and TSB {tsb}, pick a goal "
                    "8-16 weeks out and we'll build towards it.")
        elif is_tapering(state, config):
            body = (f"Your race is in {state.days_to_race} days, so you're in your taper: no extra load now. "
                    f"Keep some short intensity, cut volume, and arrive fresh (TSB {tsb} today).")
        else:
            body = (f"Your race is in {state.days_to_race} days. With CTL {state.ctl:.0f} you have time to build; "
                    f"the taper starts {config.taper_days} days before the race.")
    elif topic == "week":
        key = next((w for w in upcoming if w.key_session), None)
        hard = [w for w in upcoming if w.zone >= config.hard_zone]
        total = sum(w.tss for w in upcoming)
        if key is not None:
            focus = f"The key session is {weekday(key.date)}'s {key.sport} {key.type}: arrive rested for it."
        elif hard:
            plural = "s" if len(hard) > 1 else ""
            focus = f"The quality comes from {len(hard)} hard session{plural}; keep the rest easy."
        else:
            focus = "It's an easy week: relaxed volume only."
        body = f"Your week has {len(upcoming)} sessions and about {total:.0f} TSS. {focus}"
    else:  # easy_days
        easy = sum(1 for w in upcoming if w.zone <= 2)
        body = (f"{easy} of your {len(upcoming)} sessions this week are easy on purpose: polarized training keeps "
                "about 80% of the time in Z1-Z2 so the hard days can really be hard. Keep the easy days easy.")
    return first + body + caution


# --------------------------------------------------------------------------- examples


def make_chat(
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    question: str | None,
    answer: Modification | str | None = None,
    *,
    profile: Profile | None = None,
    history: Sequence[Day] = (),
    load: Sequence[LoadPoint] = (),
    count_tokens: TokenCounter = approximate_tokens,
    budget: int = DEFAULT_TOKEN_BUDGET,
    system: str = SYSTEM_PROMPT,
    config: RuleConfig = DEFAULT_CONFIG,
) -> dict[str, list[dict[str, str]]]:
    """The chat record: system + the context the coach service builds for inference, plus the
    assistant answer when given (a :class:`Modification` as compact JSON, or free text)."""
    ctx = build_context(state=state, upcoming=upcoming, today=today, count_tokens=count_tokens, budget=budget,
                        profile=profile, history=history, load=load, question=question, config=config)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": ctx.text}]
    if answer is not None:
        content = answer if isinstance(answer, str) else answer.model_dump_json(exclude_none=True)
        messages.append({"role": "assistant", "content": content})
    return {"messages": messages}


def generate_examples(
    n: int,
    seed: int,
    *,
    config: RuleConfig = DEFAULT_CONFIG,
    free_text_share: float = DEFAULT_FREE_TEXT_SHARE,
    count_tokens: TokenCounter = approximate_tokens,
    budget: int = DEFAULT_TOKEN_BUDGET,
) -> list[SyntheticExample]:
    """``n`` deterministic examples for ``seed`` (same arguments, same examples).

    ``round(n * free_text_share)`` of them are free-text questions, the rest rule-based JSON
    modifications dealt over :data:`SCENARIOS` by :data:`SCENARIO_WEIGHTS`.  ``count_tokens`` and
    ``budget`` are handed to the context builder; pass the serving model's tokenizer for an exact
    match with inference.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= free_text_share <= 1.0:
        raise ValueError(f"free_text_share must be in [0, 1], got {free_text_share}")
    rng = random.Random(seed)
    n_free = round(n * free_text_share)
    n_mod = n - n_free
    turns = [scenario for scenario in SCENARIOS for _ in range(SCENARIO_WEIGHTS[scenario])]
    plan: list[tuple[Kind, Scenario]] = [("modification", turns[i % len(turns)]) for i in range(n_mod)]
    plan += [("free_text", rng.choice(SCENARIOS)) for _ in range(n_free)]
    rng.shuffle(plan)
    examples: list[SyntheticExample] = []
    for kind, scenario in plan:
        s = _sample(rng, scenario, config)
        history = tuple(s.days.get(s.today - dt.timedelta(days=back), Day(day=s.today - dt.timedelta(days=back)))
                        for back in range(14, 0, -1))
        answer: Modification | str
        expected: Modification | None
        if kind == "modification":
            question = rng.choice(QUESTIONS)
            expected = recommend(s.state, s.upcoming, s.today, config=config)
            answer, system = expected, SYSTEM_PROMPT
        else:
            topic = rng.choice(FREE_TEXT_TOPICS)
            question = rng.choice(FREE_TEXT_QUESTIONS[topic])
            expected = None
            answer = free_text_answer(topic, s.state, s.upcoming, s.today, history, config)
            system = CHAT_SYSTEM_PROMPT
        chat = make_chat(s.state, s.upcoming, s.today, question, answer, profile=s.profile, history=history,
                         load=s.load, count_tokens=count_tokens, budget=budget, system=system, config=config)
        examples.append(SyntheticExample(
            chat=chat, state=s.state, upcoming=tuple(s.upcoming), today=s.today, expected=expected,
            branch=classify_state(s.state, config), question=question, scenario=scenario, kind=kind,
            daily_tss=tuple(sorted(s.daily.items())), load=tuple(s.load), history=history, profile=s.profile))
    return examples


def to_jsonl(examples: Iterable[SyntheticExample]) -> str:
    """OpenAI chat JSONL (one ``{"messages": [...]}`` object per line)."""
    return "".join(json.dumps(e.chat, ensure_ascii=False, separators=(",", ":")) + "\n" for e in examples)


def matches_expected(answer: Modification, expected: Modification) -> bool:
    """Same set of ``(op, workout_id)`` pairs (so an empty expected needs an empty answer)."""
    return {(op.op, op.workout_id) for op in answer.operations} == {
        (op.op, op.workout_id) for op in expected.operations
    }
