"""Deterministic, conversation-grouped train/validation split."""

from __future__ import annotations

import random

import pytest

from coachforge_dataset.pipeline import Example, Message, group_key, split_examples


def ex(i: int, cid: str | None) -> Example:
    return Example((Message("user", f"question {i}"), Message("assistant", f"answer {i}")), "openai", cid)


EXAMPLES = [ex(i, f"conv{i % 40}" if i % 3 else None) for i in range(600)]


def test_fraction_is_roughly_respected_and_everything_is_kept() -> None:
    train, val = split_examples(EXAMPLES, 0.2, seed=1)
    assert len(train) + len(val) == len(EXAMPLES)
    groups = {group_key(e) for e in EXAMPLES}
    val_groups = {group_key(e) for e in val}
    assert 0.1 < len(val_groups) / len(groups) < 0.3


def test_conversations_never_straddle() -> None:
    train, val = split_examples(EXAMPLES, 0.3, seed=5)
    assert {e.conversation_id for e in train if e.conversation_id} .isdisjoint(
        {e.conversation_id for e in val if e.conversation_id})


def test_stable_under_reordering_and_seeded() -> None:
    shuffled = EXAMPLES[:]
    random.Random(0).shuffle(shuffled)
    train_a, val_a = split_examples(EXAMPLES, 0.1, seed=7)
    train_b, val_b = split_examples(shuffled, 0.1, seed=7)
    assert set(val_a) == set(val_b) and set(train_a) == set(train_b)
    assert split_examples(EXAMPLES, 0.1, seed=7) == (train_a, val_a)
    assert set(split_examples(EXAMPLES, 0.1, seed=8)[1]) != set(val_a)


def test_examples_without_id_group_by_content() -> None:
    a, b = ex(1, None), ex(1, None)
    assert group_key(a) == group_key(b) and group_key(a).startswith("hash:")
    assert group_key(ex(2, "c")) == "conv:c"


def test_bounds() -> None:
    assert split_examples(EXAMPLES, 0.0) == (EXAMPLES, [])
    with pytest.raises(ValueError):
        split_examples(EXAMPLES, 1.0)
