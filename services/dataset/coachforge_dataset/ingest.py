"""Conversations that are not JSONL: chat transcripts, PDFs and screenshots → OpenAI chat pairs.

An upload for fine-tuning may be a plain-text transcript (``.txt``/``.md``), a PDF or an image of a
chat. :func:`ingest` reads it into speaker turns, decides which speaker is the assistant, and pairs
each run of user turns with the assistant's answer::

    Athlete: My legs feel heavy.          {"messages": [{"role": "user", "content": "My legs feel heavy."},
    Coach: Take tomorrow easy.       →                  {"role": "assistant", "content": "Take tomorrow easy."}]}

Every pair carries a confidence (how sure the reading and the roles are) and where it came from
(line, page, image region), so a reviewer can check the uncertain ones. The pairs are then
validated like any uploaded JSONL (:func:`to_jsonl`).

Transcript layouts read (the one that matches most lines wins):

``colon``   ``Coach: text`` — optionally after a timestamp (``[09:15]``, ``12/03/2025, 09:15 -``, a
            WhatsApp export) or with a markdown-bold name (``**Coach**: text``); lines that do not
            start with a recurring speaker continue the previous turn;
``block``   a line holding only a recurring speaker name (optionally with a time, as chat apps copy
            it), then the message's lines.

PDF text is extracted with ``pypdf`` page by page and read as a transcript. Images are read with
RapidOCR (its models ship with the package): messages aligned to the right are one speaker and
messages on the left the other (phone messengers; the right side is the account that took the
screenshot, by default the assistant), or, when every line starts at the left edge, recurring name
labels above the messages tell the speakers apart (desktop chat apps).
"""

from __future__ import annotations

import io
import json
import re
import statistics
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Format = Literal["transcript", "pdf", "image"]
Role = Literal["user", "assistant"]

TRANSCRIPT_SUFFIXES: Final = (".txt", ".md", ".markdown", ".log")
PDF_SUFFIXES: Final = (".pdf",)
IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ASSISTANT_NAMES: Final = frozenset({"coach", "assistant", "ai", "bot", "trainer", "gpt", "model", "avatar", "polarize"})
USER_NAMES: Final = frozenset({"user", "athlete", "client", "me", "human", "customer", "you", "runner", "rider"})
MAX_SPEAKER_CHARS: Final = 32
GUESSED_ROLES: Final = 0.6
"""Confidence of roles told apart only by who speaks first (the user opens the conversation)."""
PDF_READING: Final = 0.95
"""How much a PDF's extracted text is trusted against typed text (line breaks and spacing may move)."""

_TIME = r"\[?\d{1,2}[:.]\d{2}(?::\d{2})?(?:\s?[APap]\.?[Mm]\.?)?\]?"
_DATE = r"\[?\d{1,4}[/.\-]\d{1,2}[/.\-]\d{1,4},?\]?"
_DASH = "[-\u2013\u2014]"  # hyphen, en dash, em dash
_STAMP = rf"(?:(?:{_DATE}\s*)?{_TIME}\s*(?:{_DASH}\s*)?|{_DATE}\s*(?:{_DASH}\s*)?)"
_NAME = rf"[^\W\d_][\w .'\u2019-]{{0,{MAX_SPEAKER_CHARS - 1}}}?"
_BOLD = r"(?:\*\*|__)?"
COLON_LINE: Final = re.compile(
    rf"^\s*(?:{_STAMP})?\s*{_BOLD}(?P<speaker>{_NAME}){_BOLD}\s*:{_BOLD}\s+(?P<text>\S.*)$")
BLOCK_LINE: Final = re.compile(rf"^\s*{_BOLD}(?P<speaker>{_NAME}){_BOLD}\s*(?:{_TIME})?\s*$")


class IngestError(ValueError):
    """The upload cannot be read as a conversation; ``param`` names the request field to fix."""

    def __init__(self, message: str, param: str = "file") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Turn:
    """One message: who wrote it, what, how sure the reading is, and where it was found."""

    speaker: str
    text: str
    confidence: float = 1.0
    where: str = ""


@dataclass(frozen=True, slots=True)
class Pair:
    """A user message and the assistant's answer, with the confidence of both and where they came from."""

    user: str
    assistant: str
    confidence: float
    source: str

    def record(self) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": self.user}, {"role": "assistant", "content": self.assistant}]}


@dataclass
class Ingested:
    """What :func:`ingest` read: the pairs, the roles it gave each speaker, and what it left out."""

    format: Format
    layout: str
    pairs: list[Pair]
    roles: dict[str, Role]
    role_confidence: float
    dropped: list[str] = field(default_factory=list)

    def review(self, threshold: float) -> list[dict[str, Any]]:
        """One entry per pair (its line in the converted file, confidence, source), flagged for review
        below ``threshold``."""
        return [{"line": n, "confidence": p.confidence, "source": p.source, "review": p.confidence < threshold}
                for n, p in enumerate(self.pairs, start=1)]

    def summary(self, threshold: float) -> dict[str, Any]:
        return {"format": self.format, "layout": self.layout, "pairs": len(self.pairs),
                "speakers": dict(sorted(self.roles.items())), "role_confidence": self.role_confidence,
                "needs_review": sum(p.confidence < threshold for p in self.pairs), "review_threshold": threshold,
                "dropped": self.dropped}


def detect_format(filename: str, head: bytes) -> Format | None:
    """The non-JSONL format of an upload by its first bytes and name, ``None`` for JSONL."""
    name = filename.lower()
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"BM")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if name.endswith(PDF_SUFFIXES):
        return "pdf"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(TRANSCRIPT_SUFFIXES):
        return "transcript"
    return None


# --------------------------------------------------------------------------- transcripts


def _speaker(raw: str) -> str:
    return " ".join(raw.strip(" *_").split())


def _recurring(names: Sequence[str]) -> set[str]:
    """The names taken as speakers: those that recur or name a role (a one-off ``Note:`` continues a
    message); in a short exchange of at most three names where fewer than two recur, all of them."""
    counts = Counter(n.casefold() for n in names)
    known = {n for n, c in counts.items() if c >= 2 or n in ASSISTANT_NAMES or n in USER_NAMES}
    return set(counts) if len(known) < 2 and len(counts) <= 3 else known


def _colon_turns(lines: Sequence[str], where: Callable[[int], str]) -> list[Turn]:
    matches = [COLON_LINE.match(line) for line in lines]
    speakers = _recurring([_speaker(m["speaker"]) for m in matches if m])
    turns: list[Turn] = []
    for number, (line, m) in enumerate(zip(lines, matches, strict=True), start=1):
        if m and _speaker(m["speaker"]).casefold() in speakers:
            turns.append(Turn(_speaker(m["speaker"]), m["text"].strip(), where=where(number)))
        elif line.strip() and turns:
            last = turns[-1]
            turns[-1] = Turn(last.speaker, f"{last.text}\n{line.strip()}", last.confidence, last.where)
    return turns


def _block_turns(lines: Sequence[str], where: Callable[[int], str]) -> list[Turn]:
    matches = [BLOCK_LINE.match(line) for line in lines]
    speakers = _recurring([_speaker(m["speaker"]) for m in matches if m])
    turns: list[Turn] = []
    current: tuple[str, int] | None = None
    body: list[str] = []

    def close() -> None:
        if current is not None and body:
            turns.append(Turn(current[0], "\n".join(body), where=where(current[1])))

    for number, (line, m) in enumerate(zip(lines, matches, strict=True), start=1):
        if m and _speaker(m["speaker"]).casefold() in speakers:
            close()
            current, body = (_speaker(m["speaker"]), number), []
        elif line.strip() and current is not None:
            body.append(line.strip())
    close()
    return turns


def read_transcript(text: str, where: Callable[[int], str] = lambda n: f"line {n}") -> tuple[str, list[Turn]]:
    """The layout that reads most of ``text``'s lines into turns, and those turns."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    candidates = [("colon", _colon_turns(lines, where)), ("block", _block_turns(lines, where))]
    layout, turns = max(candidates, key=lambda c: (len({t.speaker for t in c[1]}) >= 2, len(c[1])))
    return layout, turns


# --------------------------------------------------------------------------- roles and pairs


def assign_roles(turns: Sequence[Turn], assistant: str | None = None) -> tuple[dict[str, Role], float]:
    """Which speaker is the assistant: the one named ``assistant``; else the one whose name says so
    (coach, assistant, bot, …) or the other one of two where the other's name says user (athlete,
    user, me, …); else, of two speakers, the one who does not open the conversation (confidence
    :data:`GUESSED_ROLES`). Raises :class:`IngestError` when it cannot tell."""
    speakers = list(dict.fromkeys(t.speaker for t in turns))
    if len(speakers) < 2:
        raise IngestError(f"found {len(speakers)} speaker(s) {speakers}: a conversation needs a user and an "
                          "assistant; check the layout (e.g. 'Athlete: …' / 'Coach: …' lines)")
    folded = {s.casefold(): s for s in speakers}
    if assistant is not None:
        chosen = folded.get(" ".join(assistant.split()).casefold())
        if chosen is None:
            raise IngestError(f"assistant_speaker {assistant!r} is not among the speakers found: {speakers}",
                              param="assistant_speaker")
        return {s: ("assistant" if s == chosen else "user") for s in speakers}, 1.0
    named = [s for s in speakers if s.casefold() in ASSISTANT_NAMES]
    users = [s for s in speakers if s.casefold() in USER_NAMES]
    if len(named) == 1:
        return {s: ("assistant" if s == named[0] else "user") for s in speakers}, 1.0
    if len(speakers) == 2 and len(users) == 1:
        return {s: ("user" if s == users[0] else "assistant") for s in speakers}, 1.0
    if len(speakers) == 2:
        opener = turns[0].speaker
        return {s: ("user" if s == opener else "assistant") for s in speakers}, GUESSED_ROLES
    raise IngestError(f"{len(speakers)} speakers {speakers} and none is recognisably the assistant: name it "
                      "with the assistant_speaker field", param="assistant_speaker")


def pair_turns(turns: Sequence[Turn], roles: dict[str, Role], role_confidence: float) -> tuple[list[Pair], list[str]]:
    """Each run of user turns with the run of assistant turns answering it (consecutive turns of one
    role are joined with a newline); an opening assistant turn and a last unanswered question are left
    out and reported."""
    runs: list[tuple[Role, list[Turn]]] = []
    for turn in turns:
        role = roles[turn.speaker]
        if runs and runs[-1][0] == role:
            runs[-1][1].append(turn)
        else:
            runs.append((role, [turn]))
    pairs: list[Pair] = []
    dropped: list[str] = []
    index = 0
    while index < len(runs):
        role, run = runs[index]
        if role == "assistant":
            dropped.append(f"{run[0].where}: assistant turn without a question before it")
            index += 1
            continue
        if index + 1 >= len(runs):
            dropped.append(f"{run[0].where}: user turn without an answer")
            break
        answer = runs[index + 1][1]
        confidence = role_confidence * min(t.confidence for t in (*run, *answer))
        pairs.append(Pair(user="\n".join(t.text for t in run), assistant="\n".join(t.text for t in answer),
                          confidence=round(confidence, 3), source=f"{run[0].where} .. {answer[-1].where}"))
        index += 2
    return pairs, dropped


# --------------------------------------------------------------------------- PDFs


def pdf_text(data: bytes) -> list[str]:
    """The text of every page (``pypdf``), in order."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        return [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise IngestError(f"the PDF could not be read: {exc}") from None


# --------------------------------------------------------------------------- screenshots


@dataclass(frozen=True, slots=True)
class TextBox:
    """One line of text OCR found: its bounding box (pixels) and the recognition score."""

    text: str
    left: float
    top: float
    right: float
    bottom: float
    score: float


OcrReader = Callable[[bytes], tuple[list[TextBox], int]]
"""Image bytes → the text lines found and the image's width."""

_ocr_lock = threading.Lock()
_ocr_engine: Any = None


def rapidocr_reader(data: bytes) -> tuple[list[TextBox], int]:
    """Read an image with RapidOCR (one engine per process, loaded on first use)."""
    global _ocr_engine
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise IngestError(f"the image could not be read: {exc}") from None
    with _ocr_lock:
        if _ocr_engine is None:
            from rapidocr import RapidOCR

            _ocr_engine = RapidOCR(params={"Global.log_level": "warning"})
        result = _ocr_engine(np.asarray(image)[:, :, ::-1])  # RGB → BGR, as OpenCV reads
    boxes: list[TextBox] = []
    for points, text, score in zip(result.boxes if result.boxes is not None else [], result.txts or (),
                                   result.scores or (), strict=True):
        xs = [float(p[0]) for p in points]
        ys = [float(p[1]) for p in points]
        boxes.append(TextBox(text.strip(), min(xs), min(ys), max(xs), max(ys), float(score)))
    return boxes, image.width


def _bubbles(boxes: Sequence[TextBox], width: int) -> list[tuple[str, list[TextBox]]]:
    """Boxes grouped into messages: the side a box sits on, and consecutive boxes on one side that
    are closer than a line's height belong to one message."""
    out: list[tuple[str, list[TextBox]]] = []
    for box in sorted(boxes, key=lambda b: (b.top, b.left)):
        side = "right" if box.left > 0.25 * width else "left"
        if out and out[-1][0] == side:
            prev = out[-1][1][-1]
            height = prev.bottom - prev.top
            if box.top - prev.bottom < 0.8 * height:
                out[-1][1].append(box)
                continue
        out.append((side, [box]))
    return out


def read_image(data: bytes, *, right: Role = "assistant", reader: OcrReader | None = None) -> tuple[str, list[Turn]]:
    """The turns of a chat screenshot and its layout (``bubbles`` or ``labels``)."""
    boxes, width = (reader or rapidocr_reader)(data)
    boxes = [b for b in boxes if b.text]
    if not boxes:
        raise IngestError("no text was found in the image")
    if all(b.left <= 0.25 * width for b in boxes):
        # every line starts at the left edge: name labels above the messages (desktop chat apps)
        ordered = sorted(boxes, key=lambda b: (b.top, b.left))
        scores = {f"region {n}": b.score for n, b in enumerate(ordered, start=1)}
        layout, turns = read_transcript("\n".join(b.text for b in ordered), where=lambda n: f"region {n}")
        turns = [Turn(t.speaker, t.text, round(scores.get(t.where, 1.0), 3), t.where) for t in turns]
        return f"labels/{layout}", turns
    turns = []
    for number, (side, group) in enumerate(_bubbles(boxes, width), start=1):
        speaker = right if side == "right" else ("user" if right == "assistant" else "assistant")
        text = " ".join(b.text for b in group)
        turns.append(Turn(speaker, text, round(statistics.fmean(b.score for b in group), 3), f"bubble {number}"))
    return "bubbles", turns


# --------------------------------------------------------------------------- the whole upload


def ingest(data: bytes, filename: str, *, assistant: str | None = None, screenshot_right: Role = "assistant",
           ocr: OcrReader | None = None) -> Ingested:
    """Read an upload that is not JSONL into conversation pairs (see the module's docstring).

    ``assistant`` names the assistant's speaker when the names do not tell; ``screenshot_right`` is
    the role of right-aligned messages in a screenshot. Raises :class:`IngestError` when the upload is
    not one of these formats or holds no pair."""
    fmt = detect_format(filename, data[:16])
    if fmt is None:
        raise IngestError(f"{filename!r} is not a transcript (.txt, .md), PDF or image")
    role_confidence = 1.0
    if fmt == "image":
        layout, turns = read_image(data, right=screenshot_right, reader=ocr)
        if layout == "bubbles":
            roles: dict[str, Role] = {"user": "user", "assistant": "assistant"}
        else:
            roles, role_confidence = assign_roles(turns, assistant)
    else:
        if fmt == "pdf":
            layout, turns = "", []
            for page_no, page in enumerate(pdf_text(data), start=1):
                found, page_turns = read_transcript(page, where=lambda n, p=page_no: f"page {p} line {n}")
                layout = layout or found
                turns += [Turn(t.speaker, t.text, PDF_READING, t.where) for t in page_turns]
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise IngestError(f"a transcript must be UTF-8 text: byte {exc.start} is not") from None
            layout, turns = read_transcript(text)
        roles, role_confidence = assign_roles(turns, assistant)
    pairs, dropped = pair_turns(turns, roles, role_confidence)
    if not pairs:
        raise IngestError(f"no user message followed by an assistant answer was found in {filename!r}")
    return Ingested(format=fmt, layout=layout or "colon", pairs=pairs, roles=roles, role_confidence=role_confidence,
                    dropped=dropped)


def to_jsonl(ingested: Ingested) -> Iterator[bytes]:
    """The pairs as OpenAI chat JSONL lines (what is stored and validated like an uploaded JSONL)."""
    for pair in ingested.pairs:
        yield json.dumps(pair.record(), ensure_ascii=False).encode() + b"\n"
