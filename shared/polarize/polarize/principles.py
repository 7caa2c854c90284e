"""Training principles in the coach's context: what to search a knowledge base for, and how the
snippets found read in the prompt.

The query is built from the athlete's readiness as the rules see it (the words of
:func:`polarize.prompt.readiness`: ``ill/injured``, ``fatigued`` with its red flags, ``fresh``,
``tapering``, else ``normal``), each with a few fixed words a principles document uses for it (a
knowledge base's search matches words as they are written, without stemming), then the athlete's
question::

    fatigued fatigue recovery sleep
    Should I skip today's intervals?

The section is ``Principles:`` and one line per snippet, best first, its text on one line::

    Principles:
    - Training principles > Fatigue flags When two or more red flags show, …

Both are pure and deterministic: equal inputs give equal text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .rules import DEFAULT_CONFIG, AthleteState, RuleConfig, fatigue_flags, is_fresh, is_tapering

HEADING: Final = "Principles:"
MAX_QUESTION_CHARS: Final = 1000
"""The most characters of the athlete's question the query keeps (its start)."""
READINESS_TERMS: Final = {
    "ill/injured": "ill injured illness injury return recovery",
    "fatigued": "fatigued fatigue recovery",
    "fresh": "fresh progressive overload increase",
    "tapering": "tapering taper race",
    "normal": "polarized easy hard intensity",
}
"""The query's words for each readiness word."""
FLAG_TERMS: Final = {"tsb": "TSB load", "soreness": "soreness", "sleep": "sleep", "hrv": "HRV"}
"""The query's words for each fatigue red flag (by the flag's first word, lowercased)."""


def readiness_words(state: AthleteState, config: RuleConfig = DEFAULT_CONFIG) -> list[str]:
    """The readiness words of :func:`polarize.prompt.readiness`, in its order, without the details."""
    words: list[str] = []
    if state.ill_or_injured:
        words.append("ill/injured")
    if fatigue_flags(state, config):
        words.append("fatigued")
    if is_fresh(state, config):
        words.append("fresh")
    if is_tapering(state, config):
        words.append("tapering")
    return words or ["normal"]


def principles_query(state: AthleteState, question: str | None = None, config: RuleConfig = DEFAULT_CONFIG) -> str:
    """What to search a principles knowledge base for: the readiness's words (each with its
    :data:`READINESS_TERMS`, a fatigued athlete's red flags with their :data:`FLAG_TERMS`) on one
    line, then the athlete's question (whitespace collapsed, at most :data:`MAX_QUESTION_CHARS`
    characters) on the next when there is one."""
    terms = [READINESS_TERMS[w] for w in readiness_words(state, config)]
    for flag in fatigue_flags(state, config):
        extra = FLAG_TERMS.get(flag.split(" ", 1)[0].lower())
        if extra:
            terms.append(extra)
    query = " ".join(terms)
    if question is not None and question.strip():
        query += "\n" + " ".join(question.split())[:MAX_QUESTION_CHARS]
    return query


def principle_line(text: str) -> str:
    """One snippet as a line of the section: ``- `` and its text with whitespace collapsed."""
    return "- " + " ".join(text.split())


def principles_section(principles: Sequence[str]) -> str:
    """The ``Principles:`` section of ``principles`` (snippet texts, best first); "" for none."""
    if not principles:
        return ""
    return "\n".join([HEADING, *(principle_line(p) for p in principles)])
