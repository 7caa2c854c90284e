"""Cleaning stages: exact/near duplicates, quality score and filter, PII scrubbing."""

from __future__ import annotations

import json

from coachforge_dataset.pipeline import (
    Example,
    Message,
    content_hash,
    dedupe_exact,
    dedupe_near,
    filter_quality,
    quality,
    scrub_pii,
    scrub_text,
)

LOREM = ("the athlete should keep the long ride easy this weekend and add an extra recovery day "
         "before the next interval block because fatigue is high and sleep has been short")


def ex(user: str, assistant: str, fmt: str = "openai", cid: str | None = None) -> Example:
    return Example((Message("user", user), Message("assistant", assistant)), fmt, cid)


def test_exact_dedupe_normalises_case_and_whitespace() -> None:
    a = ex("Hello   there", "General Kenobi")
    b = ex("hello there", "general\nkenobi")
    c = ex("hello there", "something else")
    assert content_hash(a) == content_hash(b) != content_hash(c)
    kept, report = dedupe_exact([a, b, c, b])
    assert kept == [a, c]
    assert report.removed == 2 and report.counts == {"exact_duplicates": 2}
    assert report.samples[0].index == 1 and "duplicate of example 0" in report.samples[0].reason


def test_near_dedupe() -> None:
    base = ex("plan question " + LOREM, LOREM)
    near = ex("plan question " + LOREM, LOREM + " ok")
    other = ex("what shoes should i buy for a marathon", "pick a pair that fits well and is comfortable")
    kept, report = dedupe_near([base, near, other], threshold=0.8)
    assert kept == [base, other]
    assert report.removed == 1 and "near duplicate of example 0" in report.samples[0].reason
    # deterministic, and a strict threshold keeps both
    assert dedupe_near([base, near, other], threshold=0.8)[0] == kept
    assert len(dedupe_near([base, near, other], threshold=1.0)[0]) == 3


def test_near_dedupe_short_texts_use_3_shingles() -> None:
    a = ex("hi", "hello how are you today")
    b = ex("hi", "hello how are you today")
    kept, _ = dedupe_near([a, b])
    assert kept == [a]


def test_samples_are_capped_at_five() -> None:
    dup = ex("same", "same answer")
    _, report = dedupe_exact([dup] * 10)
    assert report.removed == 9 and len(report.samples) == 5


def test_quality_components() -> None:
    good = quality(ex("How should I train this week?", "Keep most sessions easy and add one interval day."))
    assert good.score == 1.0 and good.schema_valid is None and not good.boilerplate
    refusal = quality(ex("Plan my week", "I'm sorry, but as an AI language model I cannot help with that."))
    assert refusal.boilerplate and refusal.score < 0.3
    repeated = quality(ex("Say something", "go go go go go go go go go go go go go go go go"))
    assert repeated.repetition > 0.8 and repeated.score < 0.6
    unbalanced = quality(ex("x " * 500, "ok"))
    assert unbalanced.length_balance < 0.1


def test_quality_schema_validity_for_coach_answers() -> None:
    valid = json.dumps({"operations": [], "message": "Rest well."})
    invalid = json.dumps({"operations": [{"op": "fly"}], "message": "x"})
    assert quality(ex("ctx " * 20, valid, fmt="coach")).schema_valid is True
    assert quality(ex("ctx " * 20, "Rest well.", fmt="coach")).schema_valid is False
    # not from the coach format, but the answer is a JSON object with "operations"
    bad = quality(ex("ctx " * 20, f"```json\n{invalid}\n```"))
    assert bad.schema_valid is False and bad.score == 0.0
    assert quality(ex("q", '{"answer": 1}')).schema_valid is None


def test_filter_quality() -> None:
    good = ex("How should I train this week?", "Keep most sessions easy and add one interval day.")
    bad = ex("Plan my week", "As an AI language model, I cannot help with that.")
    kept, report = filter_quality([good, bad], min_quality=0.5)
    assert kept == [good]
    assert report.removed == 1 and "boilerplate" in report.samples[0].reason
    assert filter_quality([good, bad], min_quality=0.0)[0] == [good, bad]


def test_scrub_text() -> None:
    text = ("Mail jane.doe+x@example.co.uk or call +44 20 7946 0958 / (555) 123-4567. "
            "See https://ex.com/a?token=abc&x=1 and https://ex.com/doc?page=2. "
            "Ride on 2025-03-10, 120 150 watts.")
    out, counts = scrub_text(text)
    assert out == ("Mail [EMAIL] or call [PHONE] / [PHONE]. See [URL] and https://ex.com/doc?page=2. "
                   "Ride on 2025-03-10, 120 150 watts.")
    assert counts == {"email": 1, "phone": 2, "url": 1}
    for url in ("https://s3.x/y?X-Amz-Signature=zz", "http://a.b/c?sig=1", "http://a.b/?access_token=q",
                "http://a.b/?key=k", "http://a.b/?refresh_token=k"):
        assert scrub_text(url)[0] == "[URL]"


def test_scrub_pii_stage_counts_and_keeps_everything() -> None:
    a = ex("write to bob@example.com", "ok, or 555-123-4567")
    b = ex("clean", "text")
    out, report = scrub_pii([a, b])
    assert [m.content for m in out[0].messages] == ["write to [EMAIL]", "ok, or [PHONE]"]
    assert out[1] is b
    assert report.removed == 0
    assert report.counts == {"email": 1, "phone": 1, "url": 0}
    assert report.samples[0].index == 0 and "email x1" in report.samples[0].reason
