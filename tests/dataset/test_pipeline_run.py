"""The whole pipeline: policies, lineage, determinism and stats."""

from __future__ import annotations

import json
import random
from typing import Any

from coachforge_dataset.pipeline import Example, Message, compute_stats, run_pipeline, whitespace_tokens

LONG = ("keep the long ride easy this weekend and add an extra recovery day before the next interval "
        "block because fatigue is high and sleep has been short for several nights in a row now")


def chat(user: str, assistant: str, cid: str | None = None) -> bytes:
    obj: dict[str, object] = {"messages": [{"role": "user", "content": user},
                                           {"role": "assistant", "content": assistant}]}
    if cid:
        obj["conversation_id"] = cid
    return json.dumps(obj).encode()


def dataset() -> list[bytes]:
    lines = [chat(f"Question number {i} about training block {i}?", f"Answer {i}: ride easy, sleep {i % 7} hours.",
                  f"c{i % 25}") for i in range(100)]
    lines += [
        chat("Question number 0 about training block 0?", "Answer 0: ride easy, sleep 0 hours.", "c0"),  # exact
        chat("Tell me about the weekend " + LONG, LONG),
        chat("tell me about the weekend " + LONG, LONG + " ok"),  # near duplicate
        chat("Plan my week please", "I'm sorry, but as an AI language model I cannot help with that."),
        chat("Contact?", "Mail coach@example.com or see https://x.io/p?token=secret123 soon."),
        b"",
        b"{broken",
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}).encode(),
        chat("word " * 100, "long answer"),  # over max_tokens
    ]
    return lines


SETTINGS: dict[str, Any] = dict(format=None, policy="lenient", dedupe=True, near_dup_threshold=0.8,
                                   min_quality=0.5, scrub_pii=True, validation_fraction=0.2, seed=3,
                                   max_tokens=80, count_tokens=whitespace_tokens)


def test_lenient_lineage() -> None:
    result = run_pipeline(dataset(), **SETTINGS)
    lin = result.lineage
    assert result.format == "openai" and not result.rejected
    assert (lin.source_lines, lin.blank_lines, lin.invalid, lin.valid) == (109, 1, 3, 105)
    assert (lin.exact_duplicates, lin.near_duplicates, lin.low_quality) == (1, 1, 1)
    assert lin.pii_replacements == {"email": 1, "phone": 0, "url": 1}
    assert lin.train + lin.validation == 102 == len(result.train) + len(result.validation)
    assert lin.validation > 0
    assert {i.line for i in result.issues} == {107, 108, 109}
    assert any("over the limit of 80" in i.reason for i in result.issues)
    assert [r.stage for r in result.reports] == ["exact_dedupe", "near_dedupe", "quality", "pii"]
    scrubbed = [e for e in result.train + result.validation if "[EMAIL]" in e.messages[1].content]
    assert scrubbed and "[URL]" in scrubbed[0].messages[1].content
    train_ids = {e.conversation_id for e in result.train if e.conversation_id}
    assert train_ids.isdisjoint({e.conversation_id for e in result.validation if e.conversation_id})
    assert result.stats.examples == 102 and result.stats.format_mix == {"openai": 102}


def test_strict_rejects_with_all_issues() -> None:
    result = run_pipeline(dataset(), **{**SETTINGS, "policy": "strict"})
    assert result.rejected and result.train == [] and result.validation == []
    assert len(result.issues) == 3 and result.lineage.invalid == 3
    clean = run_pipeline(dataset()[:100], **{**SETTINGS, "policy": "strict"})
    assert not clean.rejected and clean.issues == []


def test_deterministic() -> None:
    a = run_pipeline(dataset(), **SETTINGS)
    b = run_pipeline(iter(dataset()), **SETTINGS)
    assert a == b


def test_split_membership_stable_under_reordering() -> None:
    lines = dataset()[:100]
    shuffled = lines[:]
    random.Random(1).shuffle(shuffled)
    a = run_pipeline(lines, **SETTINGS)
    b = run_pipeline(shuffled, **SETTINGS)
    assert set(a.validation) == set(b.validation) and set(a.train) == set(b.train)


def test_mixed_formats_with_override_and_defaults() -> None:
    lines = [json.dumps({"instruction": "Explain tapering", "output": "Reduce volume, keep intensity."}).encode(),
             json.dumps({"instruction": "Explain base", "input": "briefly", "output": "Mostly easy."}).encode(),
             json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}).encode()]
    detected = run_pipeline(lines, validation_fraction=0.0)
    assert detected.format == "alpaca" and detected.lineage.invalid == 1
    assert any("looks like sharegpt" in i.reason for i in detected.issues)
    forced = run_pipeline(lines, format="sharegpt", validation_fraction=0.0)
    assert forced.lineage.invalid == 2 and len(forced.train) == 1
    tie = run_pipeline(lines[1:], validation_fraction=0.0)
    assert tie.format == "sharegpt"  # ties go to the format listed first in FORMATS


def test_stats() -> None:
    examples = [
        Example((Message("system", "be brief"), Message("user", "how are you"), Message("assistant", "fine")),
                "openai", None),
        Example((Message("user", "x " * 100), Message("assistant", "y")), "alpaca", None),
    ]
    stats = compute_stats(examples, whitespace_tokens)
    assert (stats.examples, stats.turns, stats.tokens_total) == (2, 5, 107)
    assert stats.tokens_per_role == {"system": 2, "user": 103, "assistant": 2}
    assert stats.token_histogram["0-63"] == 1 and stats.token_histogram["64-127"] == 1
    assert stats.token_histogram["4096+"] == 0
    assert stats.format_mix == {"alpaca": 1, "openai": 1}
    assert sum(stats.quality_histogram.values()) == 2 and len(stats.quality_histogram) == 10
    assert stats.quality_histogram["0.9-1.0"] == 1
