"""Transcripts, PDFs and chat screenshots read into conversation pairs (coachforge_dataset.ingest).

The PDF is rendered by fpdf2 and the screenshots are drawn with Pillow here, so the expected pairs
are exactly the text that was put in; the screenshots are read by the real RapidOCR models."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, ImageDraw, ImageFont

from coachforge_dataset.ingest import (
    GUESSED_ROLES,
    PDF_READING,
    IngestError,
    TextBox,
    assign_roles,
    detect_format,
    ingest,
    read_transcript,
    to_jsonl,
)

CONVERSATION = [
    ("user", "My legs feel heavy after yesterday."),
    ("assistant", "Take tomorrow easy: 40 minutes in zone 1."),
    ("user", "Can I still do the long run on Sunday?"),
    ("assistant", "Yes, keep it relaxed and shorten it to 90 minutes."),
]
EXPECTED = [(CONVERSATION[0][1], CONVERSATION[1][1]), (CONVERSATION[2][1], CONVERSATION[3][1])]


def pairs_of(result):  # type: ignore[no-untyped-def]
    return [(p.user, p.assistant) for p in result.pairs]


def test_whatsapp_export_with_dates_times_and_a_continued_line() -> None:
    text = (
        "12/03/2025, 09:15 - Athlete: My legs feel heavy after yesterday.\n"
        "12/03/2025, 09:17 - Coach: Take tomorrow easy: 40 minutes in zone 1.\n"
        "Note: no intervals this week.\n"
        "12/03/2025, 09:20 - Athlete: Can I still do the long run on Sunday?\n"
        "12/03/2025, 09:21 - Coach: Yes, keep it relaxed and shorten it to 90 minutes.\n"
    )
    result = ingest(text.encode(), "chat.txt")
    assert (result.format, result.layout, result.roles) == ("transcript", "colon",
                                                            {"Athlete": "user", "Coach": "assistant"})
    assert pairs_of(result) == [
        (CONVERSATION[0][1], CONVERSATION[1][1] + "\nNote: no intervals this week."), EXPECTED[1]]
    assert [p.confidence for p in result.pairs] == [1.0, 1.0]
    assert [p.source for p in result.pairs] == ["line 1 .. line 2", "line 4 .. line 5"]


def test_markdown_bold_names_and_bracketed_times() -> None:
    text = "\n".join(f"[09:1{n}] **{'Me' if role == 'user' else 'Anna'}**: {msg}"
                     for n, (role, msg) in enumerate(CONVERSATION))
    result = ingest(text.encode(), "notes.md")
    assert result.roles == {"Me": "user", "Anna": "assistant"}
    assert pairs_of(result) == EXPECTED


def test_block_layout_as_chat_apps_copy_it() -> None:
    text = ("Ben  9:15 AM\nMy legs feel heavy\nafter yesterday.\n\nCoach Kim  9:17 AM\n"
            "Take tomorrow easy: 40 minutes in zone 1.\n\nBen  9:20 AM\nCan I still do the long run on Sunday?\n\n"
            "Coach Kim  9:21 AM\nYes, keep it relaxed and shorten it to 90 minutes.\n")
    layout, turns = read_transcript(text)
    assert layout == "block" and [t.speaker for t in turns] == ["Ben", "Coach Kim", "Ben", "Coach Kim"]
    result = ingest(text.encode(), "slack.txt", assistant="coach kim")
    assert pairs_of(result) == [("My legs feel heavy\nafter yesterday.", CONVERSATION[1][1]), EXPECTED[1]]


def test_roles_guessed_from_who_opens_have_lower_confidence_and_can_be_named() -> None:
    text = "\n".join(f"{'Anna' if role == 'user' else 'Ben'}: {msg}" for role, msg in CONVERSATION)
    guessed = ingest(text.encode(), "chat.txt")
    assert guessed.roles == {"Anna": "user", "Ben": "assistant"} and guessed.role_confidence == GUESSED_ROLES
    assert [p.confidence for p in guessed.pairs] == [GUESSED_ROLES, GUESSED_ROLES]
    assert guessed.summary(0.8)["needs_review"] == 2
    named = ingest(text.encode(), "chat.txt", assistant="Anna")
    assert named.roles == {"Anna": "assistant", "Ben": "user"} and named.role_confidence == 1.0
    assert pairs_of(named) == [(CONVERSATION[1][1], CONVERSATION[2][1])]
    assert named.dropped == ["line 1: assistant turn without a question before it",
                             "line 4: user turn without an answer"]


def test_unreadable_conversations_are_refused_with_the_field_to_fix() -> None:
    with pytest.raises(IngestError, match="1 speaker") as one:
        ingest(b"Coach: hello\nCoach: anyone?\n", "chat.txt")
    assert one.value.param == "file"
    with pytest.raises(IngestError, match="not among the speakers") as unknown:
        ingest("\n".join(f"{'A' if r == 'user' else 'B'}x: {m}" for r, m in CONVERSATION).encode(), "c.txt",
               assistant="Carl")
    assert unknown.value.param == "assistant_speaker"
    with pytest.raises(IngestError, match="UTF-8"):
        ingest(b"Coach: caf\xe9\n", "chat.txt")
    with pytest.raises(IngestError, match="not a transcript"):
        ingest(b"{}", "data.csv")
    with pytest.raises(IngestError, match="none is recognisably the assistant"):
        assign_roles(read_transcript("Ann: a\nBob: b\nCid: c\nAnn: d\nBob: e\nCid: f")[1])


def test_format_detection_trusts_the_bytes_before_the_name() -> None:
    assert detect_format("x.txt", b"%PDF-1.7\n") == "pdf"
    assert detect_format("x.jsonl", b"\x89PNG\r\n\x1a\n") == "image"
    assert detect_format("chat.md", b"Coach: hi") == "transcript"
    assert detect_format("train.jsonl", b'{"messages"') is None


def test_a_rendered_pdf_gives_the_exact_pairs() -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=11)
    for role, msg in CONVERSATION[:2]:
        pdf.cell(0, 8, f"{'Athlete' if role == 'user' else 'Coach'}: {msg}", new_x="LMARGIN", new_y="NEXT")
    pdf.add_page()
    for role, msg in CONVERSATION[2:]:
        pdf.cell(0, 8, f"{'Athlete' if role == 'user' else 'Coach'}: {msg}", new_x="LMARGIN", new_y="NEXT")
    result = ingest(bytes(pdf.output()), "session.pdf")
    assert result.format == "pdf" and pairs_of(result) == EXPECTED
    assert [p.source for p in result.pairs] == ["page 1 line 1 .. page 1 line 2", "page 2 line 1 .. page 2 line 2"]
    assert {p.confidence for p in result.pairs} == {PDF_READING}
    with pytest.raises(IngestError, match="PDF could not be read"):
        ingest(b"%PDF-1.4 truncated", "broken.pdf")


FONT = ImageFont.load_default(size=22)


def bubbles_screenshot() -> bytes:
    """A phone messenger: the athlete on the left in grey, the coach on the right in blue."""
    image = Image.new("RGB", (720, 400), "white")
    draw = ImageDraw.Draw(image)
    y = 20
    for role, msg in CONVERSATION:
        width = draw.textlength(msg, font=FONT) + 30
        x = 20 if role == "user" else 700 - width
        draw.rounded_rectangle([x, y, x + width, y + 50], radius=14, fill="#e9e9eb" if role == "user" else "#0b84ff")
        draw.text((x + 15, y + 12), msg, font=FONT, fill="black" if role == "user" else "white")
        y += 90
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def labels_screenshot() -> bytes:
    """A desktop chat: every message under its author's name, all at the left edge."""
    image = Image.new("RGB", (760, 520), "white")
    draw = ImageDraw.Draw(image)
    bold = ImageFont.load_default(size=24)
    y = 20
    for role, msg in CONVERSATION:
        draw.text((24, y), "Athlete" if role == "user" else "Coach", font=bold, fill="#1d1c1d")
        draw.text((24, y + 36), msg, font=FONT, fill="#333333")
        y += 120
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def ocr_results() -> dict[str, object]:
    return {"bubbles": ingest(bubbles_screenshot(), "phone.png"),
            "labels": ingest(labels_screenshot(), "desktop.png")}


def test_a_messenger_screenshot_is_told_apart_by_sides(ocr_results: dict[str, object]) -> None:
    result = ocr_results["bubbles"]
    assert (result.format, result.layout) == ("image", "bubbles")  # type: ignore[attr-defined]
    assert pairs_of(result) == EXPECTED
    assert [p.source for p in result.pairs] == ["bubble 1 .. bubble 2", "bubble 3 .. bubble 4"]  # type: ignore
    assert all(0.9 < p.confidence <= 1.0 for p in result.pairs)  # type: ignore[attr-defined]


def test_a_desktop_screenshot_is_told_apart_by_name_labels(ocr_results: dict[str, object]) -> None:
    result = ocr_results["labels"]
    assert (result.format, result.layout) == ("image", "labels/block")  # type: ignore[attr-defined]
    assert result.roles == {"Athlete": "user", "Coach": "assistant"}  # type: ignore[attr-defined]
    assert pairs_of(result) == EXPECTED


def test_the_right_side_may_be_the_user() -> None:
    boxes = [TextBox("hello coach", 400, 10, 700, 40, 0.99), TextBox("hi, how was the run?", 20, 60, 300, 90, 0.9)]
    result = ingest(b"\x89PNG fake", "x.png", screenshot_right="user", ocr=lambda _data: (boxes, 720))
    assert pairs_of(result) == [("hello coach", "hi, how was the run?")]
    assert result.pairs[0].confidence == 0.9


def test_pairs_become_openai_chat_lines() -> None:
    result = ingest(b"Athlete: a\nCoach: b\n", "c.txt")
    assert [json.loads(line) for line in to_jsonl(result)] == [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    assert result.review(0.8) == [{"line": 1, "confidence": 1.0, "source": "line 1 .. line 2", "review": False}]
