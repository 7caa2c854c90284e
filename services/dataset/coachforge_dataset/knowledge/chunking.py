"""Split a text or markdown document into chunks for retrieval.

Deterministic and pure: the same text and settings give the same chunks. Token counts are an
approximation of a language model's tokens that needs no tokenizer: every run of letters and
digits is one token and so is every other visible character (:func:`approx_tokens`); it runs
slightly below a BPE tokenizer's count on English prose.

A chunk is a contiguous span of the source (``source[start:end]`` is its body) of at most
``chunk_tokens`` tokens, cut preferably where a paragraph ends, else where a sentence ends, else
between two tokens. The next chunk starts up to ``chunk_overlap`` tokens before the previous one
ended (at a sentence start inside that window when there is one), so a passage cut in two is
still whole in one of them. Markdown headings (``#`` to ``######`` outside code fences) are not
part of any body: they start a new section, and the chunks of a section carry its heading path
(``"Training > Taper"``) as the first line of their text."""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN = re.compile(r"\w+|[^\w\s]")
"""One approximate token: a run of letters/digits/underscores, or one other visible character."""
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
PARAGRAPH_GAP = re.compile(r"\n[ \t]*\n")
SENTENCE_END = frozenset(".!?")
HEADING_SEPARATOR = " > "


def approx_tokens(text: str) -> int:
    """The approximate token count of ``text`` (see the module's docstring)."""
    return sum(1 for _ in TOKEN.finditer(text))


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document."""

    ordinal: int
    """Position in the document, from 0."""
    heading: str
    """Heading path of the chunk's section (``"Training > Taper"``), empty outside any heading."""
    body: str
    """``source[start:end]``."""
    start: int
    """Offset of the body's first character in the source text."""
    end: int
    """Offset just past the body's last character."""

    @property
    def text(self) -> str:
        """What is indexed and handed to a prompt: the heading path on its own line, then the body."""
        return f"{self.heading}\n{self.body}" if self.heading else self.body

    @property
    def tokens(self) -> int:
        return approx_tokens(self.text)


@dataclass(frozen=True)
class _Section:
    heading: str
    start: int
    end: int


def _sections(text: str) -> list[_Section]:
    """The spans between headings, each with the path of headings above it."""
    sections: list[_Section] = []
    path: list[tuple[int, str]] = []
    start = 0
    fenced: str | None = None
    offset = 0
    for line in text.splitlines(keepends=True):
        line_start, offset = offset, offset + len(line)
        content = line.rstrip("\r\n")
        fence = FENCE.match(content)
        if fence:
            if fenced is None:
                fenced = fence.group(1)
            elif fence.group(1) == fenced:
                fenced = None
            continue
        match = HEADING.match(content) if fenced is None else None
        if match is None:
            continue
        sections.append(_Section(HEADING_SEPARATOR.join(t for _, t in path), start, line_start))
        level, title = len(match.group(1)), " ".join(match.group(2).split())
        path = [(lvl, t) for lvl, t in path if lvl < level]
        if title:
            path.append((level, title))
        start = offset
    sections.append(_Section(HEADING_SEPARATOR.join(t for _, t in path), start, len(text)))
    return sections


def chunk_text(text: str, chunk_tokens: int = 200, chunk_overlap: int = 40) -> list[Chunk]:
    """The chunks of ``text`` (none for a text with no visible character outside headings).

    ``chunk_tokens`` bounds each chunk's :attr:`Chunk.tokens` (its heading line included, which
    takes at most half of it); ``chunk_overlap`` (less than half of ``chunk_tokens``) is the most
    tokens a chunk repeats from the end of the previous one in the same section."""
    if chunk_tokens < 2:
        raise ValueError("chunk_tokens must be at least 2")
    if not 0 <= chunk_overlap * 2 < chunk_tokens:
        raise ValueError("chunk_overlap must be at least 0 and less than half of chunk_tokens")
    chunks: list[Chunk] = []
    for section in _sections(text):
        spans = [m.span() for m in TOKEN.finditer(text, section.start, section.end)]
        if not spans:
            continue
        heading = section.heading
        heading_tokens = approx_tokens(heading)
        if heading_tokens > chunk_tokens // 2:  # a very long heading is shortened to half the budget
            kept = [m.group() for m in TOKEN.finditer(heading)][: chunk_tokens // 2]
            heading, heading_tokens = " ".join(kept), len(kept)
        budget = chunk_tokens - heading_tokens
        overlap = min(chunk_overlap, (budget - 1) // 2)
        for first, last in _windows(text, spans, budget, overlap):
            start, end = spans[first][0], spans[last - 1][1]
            chunks.append(Chunk(len(chunks), heading, text[start:end], start, end))
    return chunks


def _breaks(text: str, spans: list[tuple[int, int]]) -> tuple[list[bool], list[bool]]:
    """For each token index i > 0: whether a paragraph starts there, whether a sentence (or a line)
    starts there. Index 0 starts both."""
    paragraph = [True] + [False] * (len(spans) - 1)
    sentence = [True] + [False] * (len(spans) - 1)
    for i in range(1, len(spans)):
        gap = text[spans[i - 1][1]:spans[i][0]]
        if PARAGRAPH_GAP.search(gap):
            paragraph[i] = sentence[i] = True
        elif "\n" in gap or text[spans[i - 1][0]:spans[i - 1][1]] in SENTENCE_END:
            sentence[i] = True
    return paragraph, sentence


def _windows(text: str, spans: list[tuple[int, int]], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Token index ranges ``[first, last)`` of the chunks of one section."""
    n = len(spans)
    paragraph, sentence = _breaks(text, spans)
    windows: list[tuple[int, int]] = []
    first = 0
    while True:
        limit = first + budget
        if limit >= n:
            windows.append((first, n))
            return windows
        # cut before the last paragraph start, else sentence start, in the window's second half
        floor = first + max(1, budget // 2)
        end = next((i for i in range(limit, floor - 1, -1) if paragraph[i]), None)
        if end is None:
            end = next((i for i in range(limit, floor - 1, -1) if sentence[i]), limit)
        windows.append((first, end))
        if overlap == 0:
            first = end
            continue
        # start again at the first sentence start of the last `overlap` tokens, else `overlap` tokens back
        back = max(end - overlap, first + 1)
        first = next((i for i in range(back, end) if sentence[i]), back)
