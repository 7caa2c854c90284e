"""Seeded synthetic coaching examples for fine-tuning and evaluation.

Each :class:`SyntheticExample` holds an OpenAI chat-format record in ``chat`` (only the
``messages`` key, so it can be written to a chat JSONL file as is) plus the inputs and the
rule-based answer (``expected``) so an evaluator can score a model against :func:`recommend`.

Scenarios are balanced across the four rule branches (ill, fatigued, fresh, normal): with
``n`` examples each branch gets ``n // 4`` or ``n // 4 + 1`` of them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .prompt import SYSTEM_PROMPT, render_context
from .rules import (
    BRANCHES,
    DEFAULT_CONFIG,
    AthleteState,
    Branch,
    PlannedWorkout,
    RuleConfig,
    classify_state,
    estimate_tss,
    recommend,
)
from .schema import Modification, WorkoutType

QUESTIONS: Final[tuple[str | None, ...]] = (
    None,
    "Any changes to my week?",
    "Should I adjust my plan?",
    "Is my plan still right for me?",
    "What should I change this week?",
    "How does my week look?",
)

_EPOCH: Final = dt.date(2025, 1, 6)


@dataclass(frozen=True, slots=True)
class SyntheticExample:
    chat: dict[str, list[dict[str, str]]]  # {"messages": [system, user, assistant]}
    state: AthleteState
    upcoming: tuple[PlannedWorkout, ...]
    today: dt.date
    expected: Modification
    branch: Branch
    question: str | None = None


def _state(rng: random.Random, branch: Branch) -> AthleteState:
    """A random athlete state whose :func:`classify_state` is ``branch``.

    Values are drawn at the precision the prompt shows (whole TSB/CTL/ATL/HRV, sleep and ramp
    to 0.1) so that the rendered context determines the branch exactly.
    """
    ctl = rng.randint(30, 95)
    ramp = round(rng.uniform(-2.0, 6.0), 1)
    hrv = float(rng.randint(0, 15))
    ill = False
    if branch == "normal":
        tsb = rng.randint(-18, 9)
        sleep = round(rng.uniform(6.3, 8.8), 1)
        soreness = rng.randint(2, 6)
    elif branch == "fresh":
        tsb = rng.randint(11, 25)
        sleep = round(rng.uniform(7.0, 9.0), 1)
        soreness = rng.randint(1, 3)
        hrv = float(rng.randint(0, 8))
        ramp = round(rng.uniform(-4.0, 4.5), 1)
    elif branch == "ill":
        tsb = rng.randint(-25, 15)
        sleep = round(rng.uniform(5.5, 8.5), 1)
        soreness = rng.randint(2, 7)
        ill = True
    else:  # fatigued: one red flag, sometimes two
        tsb = rng.randint(-18, 5)
        sleep = round(rng.uniform(6.2, 8.5), 1)
        soreness = rng.randint(2, 6)
        triggers = ["tsb", "soreness", "sleep", "hrv"]
        chosen = [rng.choice(triggers)]
        if rng.random() < 0.3:
            chosen.append(rng.choice([t for t in triggers if t != chosen[0]]))
        for trigger in chosen:
            if trigger == "tsb":
                tsb = rng.randint(-40, -21)
                ramp = round(rng.uniform(3.0, 9.0), 1)
            elif trigger == "soreness":
                soreness = rng.randint(8, 9)
            elif trigger == "sleep":
                sleep = round(rng.uniform(4.3, 5.9), 1)
            else:
                hrv = float(rng.randint(20, 35))
    return AthleteState(
        ctl=float(ctl),
        atl=float(ctl - tsb),
        tsb=float(tsb),
        ramp=ramp,
        sleep_hours=sleep,
        soreness=soreness,
        hrv_drop_pct=hrv,
        ill_or_injured=ill,
    )


def _hard_days(rng: random.Random, count: int) -> list[int]:
    """``count`` day offsets in 0..6, no two adjacent (a polarized week)."""
    while True:
        days = sorted(rng.sample(range(7), count))
        if all(b - a > 1 for a, b in itertools.pairwise(days)):
            return days


def _minutes(rng: random.Random, low: int, high: int) -> int:
    return 5 * rng.randint(low // 5, high // 5)


def _plan(rng: random.Random, today: dt.date) -> list[PlannedWorkout]:
    """A realistic 7-day polarized plan starting today: 1-3 hard days (never adjacent), one
    long day, 0-2 rest days, the rest endurance or recovery."""
    profile = rng.choice(("run", "bike", "tri"))
    hard = _hard_days(rng, rng.choice((1, 2, 2, 2, 3)))
    free = [d for d in range(7) if d not in hard]
    long_day = rng.choice([d for d in free if d >= 4] or free)
    free.remove(long_day)
    rest = set(rng.sample(free, rng.choice((0, 1, 1, 2))))
    key_hard = rng.random() < 0.3
    key_long = rng.random() < 0.4
    base_id = rng.randint(1, 89)

    workouts: list[PlannedWorkout] = []
    first_hard = True
    for offset in range(7):
        if offset in rest:
            continue
        sport = profile if profile != "tri" else rng.choice(("run", "bike", "swim"))
        key = False
        wtype: WorkoutType
        if offset in hard:
            wtype = "intervals" if rng.random() < 0.65 else "tempo"
            zone = (5 if rng.random() < 0.2 else 4) if wtype == "intervals" else 3
            minutes = _minutes(rng, 45, 80)
            key = key_hard and first_hard
            first_hard = False
        elif offset == long_day:
            wtype, zone = "long", 2
            low, high = {"run": (80, 120), "bike": (120, 240), "swim": (60, 75)}[sport]
            minutes = _minutes(rng, low, high)
            key = key_long
        elif rng.random() < 0.7:
            wtype, zone = "endurance", 2
            minutes = _minutes(rng, 30, 60) if sport == "swim" else _minutes(rng, 45, 90)
        else:
            wtype, zone = "recovery", 1
            minutes = _minutes(rng, 30, 45)
        tss = float(round(estimate_tss(zone, minutes) * rng.uniform(0.9, 1.1)))
        workouts.append(
            PlannedWorkout(
                id=f"w{base_id + len(workouts)}",
                date=today + dt.timedelta(days=offset),
                sport=sport,
                type=wtype,
                zone=zone,
                duration_min=minutes,
                tss=tss,
                key_session=key,
            )
        )
    return workouts


def make_chat(
    state: AthleteState,
    upcoming: Sequence[PlannedWorkout],
    today: dt.date,
    question: str | None,
    answer: Modification | None = None,
) -> dict[str, list[dict[str, str]]]:
    """The chat record: system + user, plus the assistant answer when given (training)."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": render_context(state, upcoming, today, question)},
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer.model_dump_json(exclude_none=True)})
    return {"messages": messages}


def generate_examples(n: int, seed: int, *, config: RuleConfig = DEFAULT_CONFIG) -> list[SyntheticExample]:
    """``n`` deterministic examples for ``seed`` (same arguments, same examples)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    branches: list[Branch] = [BRANCHES[i % len(BRANCHES)] for i in range(n)]
    rng.shuffle(branches)
    examples: list[SyntheticExample] = []
    for branch in branches:
        today = _EPOCH + dt.timedelta(days=rng.randrange(365))
        state = _state(rng, branch)
        actual = classify_state(state, config)
        if actual != branch:  # pragma: no cover - guarded by the generator's ranges
            raise AssertionError(f"generated a {actual} state for the {branch} scenario: {state}")
        upcoming = _plan(rng, today)
        question = rng.choice(QUESTIONS)
        expected = recommend(state, upcoming, today, config=config)
        examples.append(
            SyntheticExample(
                chat=make_chat(state, upcoming, today, question, expected),
                state=state,
                upcoming=tuple(upcoming),
                today=today,
                expected=expected,
                branch=branch,
                question=question,
            )
        )
    return examples


def to_jsonl(examples: Iterable[SyntheticExample]) -> str:
    """OpenAI chat JSONL (one ``{"messages": [...]}`` object per line)."""
    return "".join(json.dumps(e.chat, ensure_ascii=False, separators=(",", ":")) + "\n" for e in examples)


def matches_expected(answer: Modification, expected: Modification) -> bool:
    """Same set of ``(op, workout_id)`` pairs (so an empty expected needs an empty answer)."""
    return {(op.op, op.workout_id) for op in answer.operations} == {
        (op.op, op.workout_id) for op in expected.operations
    }
