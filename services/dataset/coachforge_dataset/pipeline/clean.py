"""Cleaning stages: exact and near duplicates, a quality score and filter, PII scrubbing (the
detection and replacement itself is :mod:`coachforge_shared.pii`, shared with inference).

Each stage takes a list of :class:`Example` and returns ``(kept, StageReport)``; kept examples
stay in input order and the first occurrence of a duplicate wins, so every stage is
deterministic.  ``StageReport.samples`` holds up to :data:`MAX_SAMPLES` removed (or, for PII,
changed) examples, identified by their index in the stage's input.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Final

from datasketch import MinHash, MinHashLSH

from coachforge_shared.pii import PII_KINDS as PII_KINDS  # (re-exported: the pipeline's PII stage names them)
from coachforge_shared.pii import scrub_text as scrub_text

from .formats import PLUGIN_FORMATS, Example, Message

MAX_SAMPLES: Final = 5
PREVIEW_CHARS: Final = 120
NUM_PERM: Final = 128
MINHASH_SEED: Final = 1
SHINGLE_WORDS: Final = 5
SHORT_SHINGLE_WORDS: Final = 3
SHORT_TEXT_WORDS: Final = 10
DEFAULT_NEAR_DUP_THRESHOLD: Final = 0.9
LSH_MAX_THRESHOLD: Final = 0.95

BOILERPLATE_PHRASES: Final[tuple[str, ...]] = (
    "as an ai language model",
    "as an ai model",
    "as a language model",
    "i cannot help with",
    "i can't help with",
    "i can not help with",
    "i'm sorry, but",
    "i am sorry, but",
    "i'm unable to",
    "i am unable to",
    "i cannot fulfill",
    "i cannot assist with",
)
BOILERPLATE_FACTOR: Final = 0.2


@dataclass(frozen=True)
class RemovedSample:
    """One removed (or changed) example: its index in the stage's input, why, and a preview."""

    index: int
    reason: str
    preview: str


@dataclass(frozen=True)
class StageReport:
    """What a stage did: how many examples it removed, a few samples, and per-kind counts."""

    stage: str
    removed: int
    samples: tuple[RemovedSample, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)


def normalized_text(example: Example) -> str:
    """All turns as ``role: content`` lines, lower-cased, whitespace collapsed to single spaces."""
    joined = "\n".join(f"{m.role}: {m.content}" for m in example.messages)
    return " ".join(joined.lower().split())


def content_hash(example: Example) -> str:
    """SHA-256 (hex) of :func:`normalized_text`: equal for examples that differ only in case/spacing."""
    return hashlib.sha256(normalized_text(example).encode("utf-8")).hexdigest()


def preview(example: Example) -> str:
    """A one-line preview of an example for reports (at most :data:`PREVIEW_CHARS` characters)."""
    text = " | ".join(f"{m.role}: {' '.join(m.content.split())}" for m in example.messages)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "\u2026"


_preview = preview


class _Samples:
    def __init__(self) -> None:
        self.items: list[RemovedSample] = []

    def add(self, index: int, reason: str, example: Example) -> None:
        if len(self.items) < MAX_SAMPLES:
            self.items.append(RemovedSample(index, reason, _preview(example)))


def dedupe_exact(examples: list[Example]) -> tuple[list[Example], StageReport]:
    """Drop examples whose :func:`content_hash` was already seen (the first one is kept)."""
    seen: dict[str, int] = {}
    kept: list[Example] = []
    samples = _Samples()
    for i, ex in enumerate(examples):
        key = content_hash(ex)
        if key in seen:
            samples.add(i, f"exact duplicate of example {seen[key]}", ex)
            continue
        seen[key] = i
        kept.append(ex)
    removed = len(examples) - len(kept)
    return kept, StageReport("exact_dedupe", removed, tuple(samples.items), {"exact_duplicates": removed})


def shingles(text: str) -> set[str]:
    """Word shingles of a normalised text: 5-word, or 3-word when it has under 10 words.

    A text shorter than 3 words is one shingle (the whole text).
    """
    words = text.split()
    size = SHINGLE_WORDS if len(words) >= SHORT_TEXT_WORDS else SHORT_SHINGLE_WORDS
    if len(words) < size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def minhash(example: Example, num_perm: int = NUM_PERM, seed: int = MINHASH_SEED) -> MinHash:
    """The MinHash of an example's shingles (fixed seed, so identical across runs)."""
    m = MinHash(num_perm=num_perm, seed=seed)
    m.update_batch([s.encode("utf-8") for s in sorted(shingles(normalized_text(example)))])
    return m


def dedupe_near(
    examples: list[Example], threshold: float = DEFAULT_NEAR_DUP_THRESHOLD, num_perm: int = NUM_PERM
) -> tuple[list[Example], StageReport]:
    """Drop examples whose estimated Jaccard similarity to an earlier kept one is >= ``threshold``.

    LSH proposes candidates; each candidate is confirmed with the MinHash estimate, and the
    earliest confirmed match is reported.  Examples are processed in input order.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    # datasketch needs at least two bands, which a threshold of 1.0 does not give: the LSH
    # only proposes candidates, confirmed below against the real threshold.
    lsh = MinHashLSH(threshold=min(threshold, LSH_MAX_THRESHOLD), num_perm=num_perm)
    hashes: dict[str, MinHash] = {}
    kept: list[Example] = []
    samples = _Samples()
    for i, ex in enumerate(examples):
        m = minhash(ex, num_perm)
        matches = sorted(
            (int(key), similarity)
            for key in lsh.query(m)
            if (similarity := m.jaccard(hashes[key])) >= threshold
        )
        if matches:
            first, similarity = matches[0]
            samples.add(i, f"near duplicate of example {first} (similarity {similarity:.2f})", ex)
            continue
        key = str(i)
        lsh.insert(key, m)
        hashes[key] = m
        kept.append(ex)
    removed = len(examples) - len(kept)
    return kept, StageReport("near_dedupe", removed, tuple(samples.items), {"near_duplicates": removed})


@dataclass(frozen=True)
class Quality:
    """A quality score in [0, 1] and its parts.

    * ``length_balance``: 1 when total assistant characters are between 1/10 and 10x the user
      characters, falling linearly (ratio / 0.1, or 10 / ratio) outside that band; 0 without text.
    * ``repetition``: the share of repeated word 3-grams in the assistant text (0 = none).
    * ``boilerplate``: the assistant text contains a refusal/boilerplate phrase.
    * ``schema_valid``: whether the last assistant turn is a valid structured answer of a format
      plug-in (``check_answer``: first the plug-in of the example's own format, then the others
      by name; Polarize's ``coach`` plug-in checks answers of coach lines and any JSON object
      with an ``"operations"`` key as workout modifications); ``None`` when no plug-in claims it.
      ``answer_schema`` is then that plug-in's ``answer_label``.

    ``score = (length_balance + (1 - repetition)) / 2``, times 0.2 with boilerplate, and 0 when
    ``schema_valid`` is ``False``; rounded to 4 decimals.
    """

    score: float
    length_balance: float
    repetition: float
    boilerplate: bool
    schema_valid: bool | None
    answer_schema: str | None = None


def check_answer(example: Example, answer: str) -> tuple[bool | None, str | None]:
    """``(valid, answer_label)`` from the first format plug-in that claims the answer, else ``(None, None)``."""
    own = example.source_format
    for name in sorted(PLUGIN_FORMATS, key=lambda n: (n != own, n)):
        plugin = PLUGIN_FORMATS[name]
        valid = plugin.check_answer(answer, own_format=name == own)
        if valid is not None:
            return valid, plugin.answer_label
    return None, None


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 when the text has no n-gram)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def quality(example: Example) -> Quality:
    """Score one example; see :class:`Quality` for the definition."""
    assistant = "\n".join(m.content for m in example.messages if m.role == "assistant")
    user = "\n".join(m.content for m in example.messages if m.role == "user")
    a, u = len(assistant.strip()), len(user.strip())
    if a == 0 or u == 0:
        balance = 0.0
    else:
        ratio = a / u
        balance = ratio / 0.1 if ratio < 0.1 else 10.0 / ratio if ratio > 10.0 else 1.0
    repetition = repetition_ratio(assistant)
    lowered = " ".join(assistant.lower().replace("\u2019", "'").split())
    boilerplate = any(phrase in lowered for phrase in BOILERPLATE_PHRASES)
    last = next((m.content for m in reversed(example.messages) if m.role == "assistant"), "")
    schema_valid, answer_schema = check_answer(example, last)
    score = (balance + (1.0 - repetition)) / 2.0
    if boilerplate:
        score *= BOILERPLATE_FACTOR
    if schema_valid is False:
        score = 0.0
    return Quality(round(min(max(score, 0.0), 1.0), 4), round(balance, 4), round(repetition, 4), boilerplate,
                   schema_valid, answer_schema)


def quality_score(example: Example) -> float:
    """Just the score of :func:`quality`."""
    return quality(example).score


def quality_reason(q: Quality, min_quality: float) -> str:
    """Why an example scored below ``min_quality``, for the quality stage's samples."""
    parts = [f"score {q.score:.2f} < {min_quality:.2f}"]
    if q.boilerplate:
        parts.append("refusal/boilerplate phrase")
    if q.schema_valid is False:
        parts.append(f"invalid {q.answer_schema or 'structured answer'}")
    if q.repetition > 0.3:
        parts.append(f"repetition {q.repetition:.2f}")
    if q.length_balance < 0.5:
        parts.append(f"length balance {q.length_balance:.2f}")
    return "; ".join(parts)


def filter_quality(examples: list[Example], min_quality: float) -> tuple[list[Example], StageReport]:
    """Keep examples whose quality score is >= ``min_quality``."""
    kept: list[Example] = []
    samples = _Samples()
    for i, ex in enumerate(examples):
        q = quality(ex)
        if q.score >= min_quality:
            kept.append(ex)
            continue
        samples.add(i, quality_reason(q, min_quality), ex)
    removed = len(examples) - len(kept)
    return kept, StageReport("quality", removed, tuple(samples.items), {"low_quality": removed})


def scrub_example(example: Example) -> tuple[Example, Counter[str]]:
    """The example with every turn scrubbed (the same object when nothing changed), and counts per kind."""
    changed: Counter[str] = Counter()
    messages: list[Message] = []
    for m in example.messages:
        text, counts = scrub_text(m.content)
        changed.update(counts)
        messages.append(m if text == m.content else replace(m, content=text))
    if not changed:
        return example, changed
    return replace(example, messages=tuple(messages)), changed


def scrub_pii(examples: list[Example]) -> tuple[list[Example], StageReport]:
    """Scrub every turn of every example; nothing is removed.

    ``report.removed`` is 0, ``report.counts`` has one entry per kind in :data:`PII_KINDS`, and
    ``report.samples`` lists up to 5 changed examples (after scrubbing).
    """
    total: Counter[str] = Counter()
    out: list[Example] = []
    samples = _Samples()
    for i, ex in enumerate(examples):
        new, changed = scrub_example(ex)
        if changed:
            total.update(changed)
            samples.add(i, ", ".join(f"{kind} x{changed[kind]}" for kind in PII_KINDS if changed[kind]), new)
        out.append(new)
    return out, StageReport("pii", 0, tuple(samples.items), {kind: total[kind] for kind in PII_KINDS})
