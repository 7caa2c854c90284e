"""Chunking of knowledge documents: bounded chunks cut at paragraph or sentence ends, overlap
between neighbours, no empty chunk, offsets that map back to the source, markdown headings
carried as titles; deterministic."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coachforge_dataset.knowledge.chunking import Chunk, approx_tokens, chunk_text


def sentences(n: int, topic: str = "volume") -> str:
    return " ".join(f"Sentence {i} is about {topic} in the week before a race." for i in range(n))


def check_invariants(text: str, chunks: list[Chunk], chunk_tokens: int, chunk_overlap: int) -> None:
    for c in chunks:
        assert c.body.strip() and text[c.start:c.end] == c.body  # offsets map back; never empty
        assert c.body == c.body.strip()
        assert c.text == (f"{c.heading}\n{c.body}" if c.heading else c.body)
        assert 0 < c.tokens <= chunk_tokens
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for prev, nxt in pairwise(chunks):
        if prev.heading == nxt.heading:
            assert nxt.start > prev.start
            if nxt.start < prev.end:  # the overlap: at most chunk_overlap tokens
                assert approx_tokens(text[nxt.start:prev.end]) <= chunk_overlap


def test_token_approximation_counts_words_and_punctuation() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("Zone 2, not zone 3!") == 7
    assert approx_tokens("VO2max 5x4' @ 105%") == 6  # VO2max, 5x4, ', @, 105, %


def test_a_short_text_is_one_chunk_and_blank_text_none() -> None:
    (only,) = chunk_text("  Easy days stay easy.\n", chunk_tokens=50, chunk_overlap=10)
    assert (only.ordinal, only.heading, only.body, only.start, only.end) == (0, "", "Easy days stay easy.", 2, 22)
    assert only.tokens == 5
    assert chunk_text(" \n\t\n ") == []
    assert chunk_text("# Only a heading\n\n## And another\n") == []


def test_long_text_overlaps_and_cuts_at_sentence_ends() -> None:
    text = sentences(30)  # 13 tokens a sentence
    chunks = chunk_text(text, chunk_tokens=60, chunk_overlap=15)
    check_invariants(text, chunks, 60, 15)
    assert len(chunks) > 5
    for prev, nxt in pairwise(chunks):
        assert nxt.start < prev.end  # every neighbour repeats the end of the one before
    for c in chunks[:-1]:
        assert c.body.endswith("race.")  # cut where a sentence ends
    # together the chunks cover the whole text
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_overlap_starts_at_a_sentence_when_one_is_in_reach() -> None:
    text = " ".join(f"Short one {i}." for i in range(40))  # 4 tokens a sentence
    chunks = chunk_text(text, chunk_tokens=30, chunk_overlap=10)
    check_invariants(text, chunks, 30, 10)
    for prev, nxt in pairwise(chunks):
        assert nxt.body.startswith("Short one") and nxt.start < prev.end


def test_without_overlap_chunks_follow_each_other() -> None:
    text = sentences(20)
    chunks = chunk_text(text, chunk_tokens=40, chunk_overlap=0)
    check_invariants(text, chunks, 40, 0)
    for prev, nxt in pairwise(chunks):
        assert nxt.start >= prev.end and not text[prev.end:nxt.start].strip()


def test_a_paragraph_end_is_preferred_to_a_later_sentence_end() -> None:
    first = sentences(3, "taper")  # 39 tokens
    text = first + "\n\n" + sentences(3, "sleep")
    chunks = chunk_text(text, chunk_tokens=60, chunk_overlap=0)
    assert chunks[0].body == first
    assert chunks[1].body == sentences(3, "sleep")


def test_one_very_long_sentence_is_cut_between_words() -> None:
    text = " ".join(f"word{i}" for i in range(100))
    chunks = chunk_text(text, chunk_tokens=32, chunk_overlap=8)
    check_invariants(text, chunks, 32, 8)
    assert [approx_tokens(c.body) for c in chunks[:2]] == [32, 32]
    assert chunks[1].body.startswith("word24 ")  # 8 tokens back from where the first ended


def test_markdown_headings_become_the_chunks_titles() -> None:
    text = ("# Training zones\n\nZone 2 is easy.\n\n## Taper\n\nCut volume, keep intensity.\n\n"
            "```\n# a comment in code, not a heading\n```\n\n# Sleep #\n\nEight hours.\n")
    chunks = chunk_text(text, chunk_tokens=100, chunk_overlap=10)
    check_invariants(text, chunks, 100, 10)
    assert [(c.heading, c.body) for c in chunks] == [
        ("Training zones", "Zone 2 is easy."),
        ("Training zones > Taper", "Cut volume, keep intensity.\n\n```\n# a comment in code, not a heading\n```"),
        ("Sleep", "Eight hours."),
    ]
    assert chunks[1].text.startswith("Training zones > Taper\nCut volume")


def test_a_chunk_with_its_heading_stays_within_the_budget() -> None:
    text = "# " + " ".join(["Heading"] * 40) + "\n\n" + sentences(10)
    chunks = chunk_text(text, chunk_tokens=40, chunk_overlap=5)
    check_invariants(text, chunks, 40, 5)
    assert approx_tokens(chunks[0].heading) == 20  # shortened to half of the budget


def test_same_input_same_chunks() -> None:
    text = "# A\n\n" + sentences(25) + "\n\n## B\n\n" + sentences(7, "sleep")
    assert chunk_text(text, 50, 12) == chunk_text(text, 50, 12)


@pytest.mark.parametrize(("tokens", "overlap"), [(1, 0), (40, 20), (40, -1)])
def test_bad_settings_are_refused(tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text("text", tokens, overlap)


words = st.sampled_from(["zone", "2", "taper", "race.", "sleep!", "Recovery?", "VO2max,", "#", "##", "```",
                         "\n", "\n\n", "# Heading\n", "\n## Sub\n", "é", "-", "  "])


@settings(max_examples=200, deadline=None)
@given(st.lists(words, max_size=300), st.integers(4, 80), st.integers(0, 39))
def test_chunks_keep_their_invariants_on_any_text(parts: list[str], chunk_tokens: int, overlap: int) -> None:
    overlap = min(overlap, (chunk_tokens - 1) // 2)
    text = " ".join(parts)
    chunks = chunk_text(text, chunk_tokens, overlap)
    check_invariants(text, chunks, chunk_tokens, overlap)
