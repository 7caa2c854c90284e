"""Transcripts, PDFs and screenshots uploaded with the OpenAI SDK to the running stack become validated
chat JSONL, with a confidence per pair and the original kept as the source."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image
from test_ingest import CONVERSATION, EXPECTED, bubbles_screenshot  # type: ignore[import-not-found]

pytestmark = pytest.mark.stack


def chat_lines(http: httpx.Client, file_id: str) -> list[tuple[str, str]]:
    records = [json.loads(line) for line in http.get(f"/v1/files/{file_id}/content").text.splitlines()]
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in records]


def test_a_transcript_becomes_chat_pairs_and_keeps_its_source(client: OpenAI, http: httpx.Client) -> None:
    original = "\n".join(f"{'Anna' if role == 'user' else 'Ben'}: {msg}" for role, msg in CONVERSATION).encode()
    f = client.files.create(file=("session.txt", original), purpose="fine-tune",
                            extra_body={"assistant_speaker": "Ben"})
    assert f.status == "processed" and f.filename == "session.txt"
    validation = f.model_extra["validation"]  # type: ignore[index]
    assert validation["examples"] == 2 and validation["invalid_lines"] == 0
    ingest = validation["ingest"]
    assert (ingest["format"], ingest["layout"], ingest["pairs"], ingest["needs_review"]) == ("transcript", "colon",
                                                                                            2, 0)
    assert ingest["speakers"] == {"Anna": "user", "Ben": "assistant"}
    assert chat_lines(http, f.id) == EXPECTED
    source = http.get(ingest["source"]["url"])
    assert source.status_code == 200 and source.content == original
    report = http.get(f"/v1/files/{f.id}/report").json()
    assert [p["confidence"] for p in report["ingest"]["pairs_review"]] == [1.0, 1.0]
    # a JSONL upload has no separate source
    plain = client.files.create(file=("plain.jsonl", b"\n".join(
        json.dumps({"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}).encode()
        for u, a in EXPECTED)), purpose="fine-tune")
    missing = http.get(f"/v1/files/{plain.id}/source")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "source_not_found"
    client.files.delete(f.id)
    assert http.get(ingest["source"]["url"]).status_code == 404


def test_a_screenshot_upload_is_read_with_ocr(client: OpenAI, http: httpx.Client) -> None:
    f = client.files.create(file=("phone.png", bubbles_screenshot()), purpose="fine-tune")
    ingest = f.model_extra["validation"]["ingest"]  # type: ignore[index]
    assert (ingest["format"], ingest["layout"], ingest["pairs"]) == ("image", "bubbles", 2)
    assert chat_lines(http, f.id) == EXPECTED


def test_unreadable_uploads_are_refused_naming_the_field(client: OpenAI) -> None:
    blank = io.BytesIO()
    Image.new("RGB", (200, 100), "white").save(blank, format="PNG")
    with pytest.raises(openai.BadRequestError) as empty:
        client.files.create(file=("blank.png", blank.getvalue()), purpose="fine-tune")
    assert empty.value.body["param"] == "file" and "no text was found" in empty.value.body["message"]  # type: ignore
    three = b"Ann: a\nBob: b\nCid: c\nAnn: d\nBob: e\nCid: f\n"
    with pytest.raises(openai.BadRequestError) as unsure:
        client.files.create(file=("group.txt", three), purpose="fine-tune")
    assert unsure.value.body["param"] == "assistant_speaker"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as side:
        client.files.create(file=("phone.png", bubbles_screenshot()), purpose="fine-tune",
                            extra_body={"screenshot_right": "left"})
    assert side.value.body["param"] == "screenshot_right"  # type: ignore[index]
    assert not [f for f in client.files.list() if f.filename in ("blank.png", "group.txt")]
