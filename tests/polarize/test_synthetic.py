"""Synthetic coaching examples: determinism, balance, loads computed from the simulated history,
the free-text mix, the serving context format, and every answer valid and safe."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections import Counter

import pytest

from polarize.context import build_context
from polarize.load import compute_load
from polarize.prompt import CHAT_SYSTEM_PROMPT, SYSTEM_PROMPT
from polarize.rules import (
    BRANCHES,
    DEFAULT_CONFIG,
    check_operation,
    classify_state,
    is_tapering,
    recommend,
)
from polarize.schema import (
    AddRestDay,
    ChangeDuration,
    InvalidModification,
    Modification,
    ReduceIntensity,
    parse_modification,
)
from polarize.synthetic import (
    DEFAULT_TOKEN_BUDGET,
    FREE_TEXT_QUESTIONS,
    HISTORY_DAYS,
    SCENARIO_WEIGHTS,
    SCENARIOS,
    SyntheticExample,
    approximate_tokens,
    generate_examples,
    matches_expected,
    to_jsonl,
)


@pytest.fixture(scope="module")
def everything() -> list[SyntheticExample]:
    return generate_examples(200, seed=7)


@pytest.fixture(scope="module")
def examples(everything: list[SyntheticExample]) -> list[SyntheticExample]:
    """The rule-based (JSON) examples."""
    return [e for e in everything if e.kind == "modification"]


def test_deterministic_by_seed() -> None:
    a = generate_examples(30, seed=3)
    b = generate_examples(30, seed=3)
    assert [e.chat for e in a] == [e.chat for e in b]
    assert a == b
    c = generate_examples(30, seed=4)
    assert [e.chat for e in a] != [e.chat for e in c]
    assert to_jsonl(a) == to_jsonl(b)
    assert any(e.kind == "free_text" for e in a)  # free-text answers are deterministic too


def test_deterministic_for_every_option() -> None:
    def counter(text: str) -> int:
        return len(text.split())

    a = generate_examples(20, seed=5, free_text_share=0.3, count_tokens=counter, budget=200)
    b = generate_examples(20, seed=5, free_text_share=0.3, count_tokens=counter, budget=200)
    assert to_jsonl(a) == to_jsonl(b) and a == b


def test_sizes() -> None:
    assert generate_examples(0, seed=1) == []
    assert len(generate_examples(5, seed=1)) == 5
    with pytest.raises(ValueError):
        generate_examples(-1, seed=1)
    for share in (-0.1, 1.5):
        with pytest.raises(ValueError):
            generate_examples(5, seed=1, free_text_share=share)


def _dealt_by_weight(counts: Counter[str], n: int) -> bool:
    rounds = n // sum(SCENARIO_WEIGHTS.values())
    return all(rounds * w <= counts[s] <= (rounds + 1) * w for s, w in SCENARIO_WEIGHTS.items())


@pytest.mark.parametrize("n", [6, 12, 100, 101])
def test_balanced_across_scenarios(n: int) -> None:
    examples = generate_examples(n, seed=n, free_text_share=0.0)
    counts = Counter(e.scenario for e in examples)
    assert set(counts) == set(SCENARIOS)
    assert _dealt_by_weight(counts, n), counts
    assert {e.branch for e in examples} == set(BRANCHES)
    # "no change" (normal and taper) does not dominate: the other answers are two thirds
    assert counts["normal"] + counts["taper"] <= n / 3 + 2, counts


@pytest.mark.parametrize(("n", "share", "free"), [(100, 0.15, 15), (100, 0.2, 20), (7, 0.15, 1), (40, 0.0, 0),
                                                  (10, 1.0, 10)])
def test_free_text_mix(n: int, share: float, free: int) -> None:
    examples = generate_examples(n, seed=3, free_text_share=share)
    assert len(examples) == n
    kinds = Counter(e.kind for e in examples)
    assert kinds["free_text"] == free and kinds["modification"] == n - free
    modification = [e for e in examples if e.kind == "modification"]
    assert _dealt_by_weight(Counter(e.scenario for e in modification), len(modification))


def test_default_mix_is_fifteen_percent(everything: list[SyntheticExample]) -> None:
    assert Counter(e.kind for e in everything) == {"modification": 170, "free_text": 30}


def test_free_text_answers(everything: list[SyntheticExample]) -> None:
    free = [e for e in everything if e.kind == "free_text"]
    questions = {q for qs in FREE_TEXT_QUESTIONS.values() for q in qs}
    assert len({e.answer for e in free}) >= 0.8 * len(free)  # templated from each athlete's own numbers
    for e in free:
        system, user, assistant = e.chat["messages"]
        assert system["content"] == CHAT_SYSTEM_PROMPT and e.expected is None
        assert e.question in questions and user["content"].endswith(f"Athlete: {e.question}")
        with pytest.raises(InvalidModification):
            parse_modification(assistant["content"])
        assert 40 <= len(assistant["content"]) <= 400
        numbers = [f"{e.state.tsb:+.0f}", f"{e.state.ctl:.0f}", f"{e.state.sleep_hours:.1f}h", f"{len(e.upcoming)}"]
        assert any(n in assistant["content"] for n in numbers), assistant["content"]
        if e.state.ill_or_injured:
            assert "ill or injured" in assistant["content"]


def test_loads_are_computed_from_the_daily_history(everything: list[SyntheticExample]) -> None:
    for e in everything:
        daily = dict(e.daily_tss)
        start = e.today - dt.timedelta(days=HISTORY_DAYS)
        assert all(start <= day < e.today and tss > 0 for day, tss in daily.items())
        load = compute_load(daily, start=start, until=e.today)
        assert list(e.load) == load and len(load) == HISTORY_DAYS + 1
        today = load[-1]
        assert (e.state.ctl, e.state.atl, e.state.tsb, e.state.ramp) == (today.ctl, today.atl, today.tsb, today.ramp)
        # the history the prompt shows is the same simulated training
        assert [d.day for d in e.history] == [e.today - dt.timedelta(days=b) for b in range(14, 0, -1)]
        for d in e.history:
            assert sum(w.tss for w in d.workouts) == daily.get(d.day, 0.0)


def test_histories_are_realistic(everything: list[SyntheticExample]) -> None:
    for e in everything:
        daily = dict(e.daily_tss)
        start = e.today - dt.timedelta(days=HISTORY_DAYS)
        weeks = [[daily.get(start + dt.timedelta(days=7 * w + d), 0.0) for d in range(7)]
                 for w in range(HISTORY_DAYS // 7)]
        assert all(any(t == 0 for t in week) for week in weeks)  # a rest day every week
        assert all(max(week) > 1.3 * (sum(week) / 7) for week in weeks if sum(week))  # a long or hard day
        assert 15 <= e.state.ctl <= 110 and all(t <= 400 for t in daily.values())
    # missed days and gaps make some weeks lighter than the structure alone
    assert any(sum(1 for t in dict(e.daily_tss).values() if t) < HISTORY_DAYS * 5 / 7 for e in everything)


def test_scenarios_are_what_they_say(examples: list[SyntheticExample]) -> None:
    for e in examples:
        tapering = is_tapering(e.state)
        assert tapering == (e.scenario == "taper")
        assert e.branch == ("normal" if e.scenario == "taper" else e.scenario)
        if e.scenario == "fatigued":
            assert e.state.tsb < -20 or e.state.soreness >= 8 or e.state.sleep_hours < 6 or e.state.hrv_drop_pct >= 20
    fatigued = [e for e in examples if e.scenario == "fatigued"]
    assert any(e.state.tsb < -20 for e in fatigued)  # overreached by load, not only by wellness
    assert any(e.state.tsb >= -20 for e in fatigued)
    assert all(e.state.tsb > 10 for e in examples if e.scenario == "fresh")


def test_taper_keeps_the_plan_and_blocks_increases(examples: list[SyntheticExample]) -> None:
    tapers = [e for e in examples if e.scenario == "taper"]
    assert len(tapers) >= 25
    for e in tapers:
        assert e.state.days_to_race is not None and 0 <= e.state.days_to_race <= DEFAULT_CONFIG.taper_days
        assert e.expected is not None and e.expected.operations == []
        assert "tapering" in e.expected.message
        assert f"Readiness: tapering, race in {e.state.days_to_race}d" in e.chat["messages"][1]["content"]
        assert e.profile is not None and e.profile.plan_phase == "taper"
        easy = next((w for w in e.upcoming if w.type in ("endurance", "long")), None)
        if easy is not None:
            longer = ChangeDuration(workout_id=easy.id, new_duration_min=easy.duration_min + 10, reason="more",
                                    confidence=0.5)
            assert check_operation(Modification(operations=[longer], message="x"), e.state, list(e.upcoming), e.today)


def test_branches_produce_their_actions(examples: list[SyntheticExample]) -> None:
    by_branch: dict[str, list[SyntheticExample]] = {b: [] for b in BRANCHES}
    for e in examples:
        assert classify_state(e.state) == e.branch
        assert e.expected is not None
        by_branch[e.branch].append(e)
    assert all(not e.expected.operations for e in by_branch["normal"])
    assert all(
        e.expected.operations and all(op.op == "add_rest_day" for op in e.expected.operations) for e in by_branch["ill"]
    )
    fresh_ops = Counter(tuple(op.op for op in e.expected.operations) for e in by_branch["fresh"])
    assert fresh_ops[("change_duration",)] >= 0.8 * len(by_branch["fresh"]), fresh_ops
    fatigued_ops = Counter(op.op for e in by_branch["fatigued"] for op in e.expected.operations)
    reduce_or_recover = fatigued_ops["reduce_intensity"] + fatigued_ops["replace_with_recovery"]
    assert reduce_or_recover >= 0.5 * len(by_branch["fatigued"]), fatigued_ops
    assert fatigued_ops["reduce_intensity"] > 0
    assert fatigued_ops["replace_with_recovery"] > 0
    assert fatigued_ops["move_workout"] > 0


def test_chat_format(everything: list[SyntheticExample]) -> None:
    for e in everything:
        assert list(e.chat) == ["messages"]
        messages = e.chat["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in messages)
        # the user message is what the coach service's context builder gives the served model
        ctx = build_context(state=e.state, upcoming=e.upcoming, today=e.today, count_tokens=approximate_tokens,
                            budget=DEFAULT_TOKEN_BUDGET, profile=e.profile, history=e.history, load=e.load,
                            question=e.question)
        assert ctx.fits and messages[1]["content"] == ctx.text
        if e.kind == "modification":
            assert e.expected is not None
            assert messages[0]["content"] == SYSTEM_PROMPT
            assert messages[2]["content"] == e.expected.model_dump_json(exclude_none=True)
        else:
            assert messages[0]["content"] == CHAT_SYSTEM_PROMPT
    lines = to_jsonl(everything).splitlines()
    assert len(lines) == len(everything)
    assert json.loads(lines[0]) == everything[0].chat


def test_token_counter_and_budget_reach_the_context_builder() -> None:
    roomy = generate_examples(6, seed=2, budget=10_000)
    tight = generate_examples(6, seed=2, budget=10)
    for r, t in zip(roomy, tight, strict=True):
        user = r.chat["messages"][1]["content"]
        assert user.startswith("Athlete ") and "Last 14 days:" in user and "Trend: " in user
        assert user.count("\n20") == 14 and user.count("\nw") == len(r.upcoming)  # a line per day and workout
        assert t.chat["messages"][1]["content"].startswith("Today ")  # the minimal form
        assert r.state == t.state and r.expected == t.expected


def test_every_answer_parses_and_is_safe(examples: list[SyntheticExample]) -> None:
    for e in examples:
        assert e.expected is not None
        answer = parse_modification(e.chat["messages"][2]["content"])
        assert answer == e.expected
        assert answer == recommend(e.state, list(e.upcoming), e.today)
        assert check_operation(answer, e.state, list(e.upcoming), e.today) == []
        assert matches_expected(answer, e.expected)


def test_plans_are_realistic(examples: list[SyntheticExample]) -> None:
    for e in examples:
        ids = [w.id for w in e.upcoming]
        assert len(set(ids)) == len(ids) and 4 <= len(ids) <= 7
        assert all(e.today <= w.date < e.today.fromordinal(e.today.toordinal() + 7) for w in e.upcoming)
        hard = sorted(w.date.toordinal() for w in e.upcoming if w.zone >= 3)
        assert all(b - a > 1 for a, b in itertools.pairwise(hard))  # no back-to-back hard days
        assert all(w.tss > 0 and 20 <= w.duration_min <= 240 for w in e.upcoming)


def test_matches_expected() -> None:
    keep = Modification(operations=[], message="Keep going.")
    rest = Modification(operations=[AddRestDay(workout_id="w1", reason="ill", confidence=0.9)], message="Rest.")
    reduce = Modification(
        operations=[ReduceIntensity(workout_id="w1", new_zone=2, reason="tired", confidence=0.7)], message="Easy."
    )
    assert matches_expected(Modification(operations=[], message="Other words."), keep)
    assert not matches_expected(rest, keep)
    assert not matches_expected(keep, rest)
    assert not matches_expected(reduce, rest)  # same workout, different op
    other_values = Modification(
        operations=[AddRestDay(workout_id="w1", reason="sick", confidence=0.5)], message="Different message."
    )
    assert matches_expected(other_values, rest)
