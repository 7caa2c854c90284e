"""Synthetic coaching examples: determinism, balance, and every answer valid and safe."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

from coachforge_shared.coach.prompt import SYSTEM_PROMPT, render_context
from coachforge_shared.coach.rules import BRANCHES, check_operation, classify_state, recommend
from coachforge_shared.coach.schema import AddRestDay, Modification, ReduceIntensity, parse_modification
from coachforge_shared.coach.synthetic import SyntheticExample, generate_examples, matches_expected, to_jsonl


@pytest.fixture(scope="module")
def examples() -> list[SyntheticExample]:
    return generate_examples(200, seed=7)


def test_deterministic_by_seed() -> None:
    a = generate_examples(30, seed=3)
    b = generate_examples(30, seed=3)
    assert [e.chat for e in a] == [e.chat for e in b]
    assert a == b
    c = generate_examples(30, seed=4)
    assert [e.chat for e in a] != [e.chat for e in c]
    assert to_jsonl(a) == to_jsonl(b)


def test_sizes() -> None:
    assert generate_examples(0, seed=1) == []
    assert len(generate_examples(5, seed=1)) == 5
    with pytest.raises(ValueError):
        generate_examples(-1, seed=1)


@pytest.mark.parametrize("n", [4, 10, 100, 101])
def test_balanced_across_branches(n: int) -> None:
    counts = Counter(e.branch for e in generate_examples(n, seed=n))
    assert set(counts) == set(BRANCHES)
    assert all(n // 4 <= c <= n // 4 + 1 for c in counts.values()), counts


def test_branches_produce_their_actions(examples: list[SyntheticExample]) -> None:
    by_branch: dict[str, list[SyntheticExample]] = {b: [] for b in BRANCHES}
    for e in examples:
        assert classify_state(e.state) == e.branch
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


def test_chat_format(examples: list[SyntheticExample]) -> None:
    for e in examples:
        assert list(e.chat) == ["messages"]
        messages = e.chat["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in messages)
        assert messages[0]["content"] == SYSTEM_PROMPT
        assert messages[1]["content"] == render_context(e.state, e.upcoming, e.today, e.question)
        assert messages[2]["content"] == e.expected.model_dump_json(exclude_none=True)
    lines = to_jsonl(examples).splitlines()
    assert len(lines) == len(examples)
    assert json.loads(lines[0]) == examples[0].chat


def test_every_answer_parses_and_is_safe(examples: list[SyntheticExample]) -> None:
    for e in examples:
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
