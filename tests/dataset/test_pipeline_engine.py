"""The compact pipeline (run_pipeline, run_pipeline_to_files) gives exactly what chaining the
list stages of ``clean`` and ``split`` gives, in one process or several."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coachforge_dataset.pipeline import (
    Example,
    LineIssue,
    compute_stats,
    dedupe_exact,
    dedupe_near,
    export_jsonl,
    filter_quality,
    parse_line,
    run_pipeline,
    run_pipeline_to_files,
    scrub_pii,
    split_examples,
    whitespace_tokens,
)
from coachforge_dataset.pipeline.clean import minhash, normalized_text
from coachforge_dataset.pipeline.fast import first_occurrences, minhash_signatures
from coachforge_dataset.pipeline.stats import example_tokens

WORDS = ["easy", "ride", "tempo", "interval", "sleep", "recover", "long", "run", "swim", "bike", "zone", "two",
         "three", "week", "rest", "legs", "heavy"]


def corpus(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    lines: list[bytes] = []
    made: list[dict[str, Any]] = []
    for i in range(n):
        roll = rng.random()
        if made and roll < 0.1:
            lines.append(json.dumps(rng.choice(made)).encode())
        elif made and roll < 0.3:
            obj = json.loads(json.dumps(rng.choice(made)))
            words = obj["messages"][-1]["content"].split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            if rng.random() < 0.5:
                words.append("ok")
            obj["messages"][-1]["content"] = " ".join(words)
            lines.append(json.dumps(obj).encode())
        elif roll < 0.33:
            lines.append(rng.choice([b"", b"{oops", b'{"messages": []}', b"\xff"]))
        else:
            user = " ".join(rng.choices(WORDS, k=rng.randint(1, 20)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(1, 40)))
            if rng.random() < 0.1:
                answer += " mail me at a.b@example.com"
            if rng.random() < 0.1:
                answer = "I'm sorry, but " + answer
            obj = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
            if rng.random() < 0.5:
                obj["conversation_id"] = f"c{i % 17}"
            made.append(obj)
            lines.append(json.dumps(obj).encode())
    return lines


def reference(lines: list[bytes], *, dedupe: bool, near_dup_threshold: float, min_quality: float,
              scrub: bool, validation_fraction: float, seed: int, max_tokens: int | None) -> dict[str, Any]:
    """The pipeline as a chain of the list stages (the definition the compact pipeline must meet)."""
    issues: list[LineIssue] = []
    examples: list[Example] = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        ex, errs = parse_line(n, raw, "openai")
        if ex is not None and max_tokens is not None and example_tokens(ex, whitespace_tokens) > max_tokens:
            errs = [LineIssue(n, "messages", f"{example_tokens(ex, whitespace_tokens)} tokens, over the limit "
                                             f"of {max_tokens}")]
            ex = None
        issues.extend(errs)
        if ex is not None:
            examples.append(ex)
    reports = []
    if dedupe:
        examples, r1 = dedupe_exact(examples)
        examples, r2 = dedupe_near(examples, near_dup_threshold)
        reports += [r1, r2]
    examples, r3 = filter_quality(examples, min_quality)
    reports.append(r3)
    if scrub:
        examples, r4 = scrub_pii(examples)
        reports.append(r4)
    train, validation = split_examples(examples, validation_fraction, seed)
    return {"issues": issues, "reports": reports, "train": train, "validation": validation,
            "stats": compute_stats(train + validation, whitespace_tokens)}


@pytest.mark.parametrize("settings", [
    dict(dedupe=True, near_dup_threshold=0.9, min_quality=0.0, scrub=False, validation_fraction=0.1, seed=0,
         max_tokens=None),
    dict(dedupe=True, near_dup_threshold=0.7, min_quality=0.4, scrub=True, validation_fraction=0.3, seed=5,
         max_tokens=40),
    dict(dedupe=True, near_dup_threshold=1.0, min_quality=0.0, scrub=True, validation_fraction=0.0, seed=1,
         max_tokens=None),
    dict(dedupe=False, near_dup_threshold=0.9, min_quality=0.2, scrub=False, validation_fraction=0.2, seed=2,
         max_tokens=None),
])
@pytest.mark.parametrize("workers", [1, 2])
def test_same_result_as_the_list_stages(settings: dict[str, Any], workers: int) -> None:
    lines = corpus(5000 if workers == 2 else 1500, seed=settings["seed"])
    want = reference(lines, **settings)
    got = run_pipeline(lines, format="openai", dedupe=settings["dedupe"],
                       near_dup_threshold=settings["near_dup_threshold"], min_quality=settings["min_quality"],
                       scrub_pii=settings["scrub"], validation_fraction=settings["validation_fraction"],
                       seed=settings["seed"], max_tokens=settings["max_tokens"], workers=workers)
    assert got.issues == want["issues"]
    assert got.reports == want["reports"]
    assert got.train == want["train"] and got.validation == want["validation"]
    assert got.stats == want["stats"]
    if settings["dedupe"]:
        assert got.lineage.exact_duplicates > 0
        assert got.lineage.near_duplicates > 0 or settings["near_dup_threshold"] == 1.0


def test_files_variant_writes_the_openai_export(tmp_path: Path) -> None:
    lines = corpus(800, seed=3)
    listed = run_pipeline(lines, scrub_pii=True, min_quality=0.3, seed=4, validation_fraction=0.25)
    files = run_pipeline_to_files(lines, tmp_path / "out", scrub_pii=True, min_quality=0.3, seed=4,
                                  validation_fraction=0.25)
    assert files.train_path.read_text() == export_jsonl(listed.train, "openai")
    assert files.validation_path.read_text() == export_jsonl(listed.validation, "openai")
    assert files.lineage == listed.lineage and files.reports == listed.reports and files.stats == listed.stats
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"train.jsonl", "validation.jsonl"}
    bare = run_pipeline_to_files(lines, tmp_path / "bare", stats=False)
    assert bare.stats.examples == 0 and bare.lineage.train > 0


def test_minhash_matches_datasketch() -> None:
    examples = [ex for n, raw in enumerate(corpus(300, seed=9), 1) if (ex := parse_line(n, raw)[0]) is not None]
    fast = minhash_signatures([normalized_text(ex) for ex in examples])
    slow = np.stack([minhash(ex).hashvalues for ex in examples])
    assert fast.dtype == slow.dtype and np.array_equal(fast, slow)


def test_first_occurrences_settles_prefix_clashes() -> None:
    a, b = b"\x01" * 8 + b"a" * 24, b"\x01" * 8 + b"b" * 24
    assert first_occurrences(b"".join([a, b, a, b, b"\x02" * 32, a])).tolist() == [0, 1, 0, 1, 4, 0]


def test_results_are_dataclasses_with_plain_values() -> None:
    result = run_pipeline(corpus(200, seed=1))
    assert json.dumps(dataclasses.asdict(result.lineage)) and json.dumps([dataclasses.asdict(r)
                                                                           for r in result.reports])


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1,
                                       max_size=12), max_size=14).map(lambda ws: " ".join(" ".join(ws).split())),
                      min_size=1, max_size=6))
def test_compiled_minhash_matches_datasketch_on_any_text(texts: list[str]) -> None:
    from datasketch import MinHash

    from coachforge_dataset.pipeline.fast import _minhash_numpy, _shingle_bytes

    got = minhash_signatures(texts)
    assert np.array_equal(got, _minhash_numpy(texts, 128, 1))
    for text, row in zip(texts, got, strict=True):
        m = MinHash(num_perm=128, seed=1)
        m.update_batch(sorted(set(_shingle_bytes(text))))
        assert np.array_equal(row, m.hashvalues)
