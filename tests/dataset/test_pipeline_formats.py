"""Format detection and conversion to the internal chat form."""

from __future__ import annotations

import json

import pytest

from coachforge_dataset.pipeline import Example, Message, detect_file_format, detect_format, parse_line
from polarize.prompt import SYSTEM_PROMPT
from polarize.schema import parse_modification

MOD = {"operations": [{"op": "reduce_intensity", "workout_id": "w3", "new_zone": 2, "reason": "TSB -24",
                       "confidence": 0.8}], "message": "Easy today, you are tired."}


def b(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_openai_with_weight_and_conversation_id() -> None:
    obj = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello", "weight": 0}],
           "metadata": {"conversation_id": "c1"}}
    ex, issues = parse_line(1, b(obj))
    assert issues == []
    assert ex == Example((Message("system", "s"), Message("user", "hi"), Message("assistant", "hello", 0)),
                         "openai", "c1")


def test_sharegpt() -> None:
    obj = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "conversation_id": 7}
    ex, issues = parse_line(3, b(obj))
    assert issues == [] and ex is not None
    assert ex.messages == (Message("user", "q"), Message("assistant", "a"))
    assert ex.source_format == "sharegpt" and ex.conversation_id == "7"


@pytest.mark.parametrize(("inp", "user"), [("", "Do it"), ("ctx", "Do it\n\nctx")])
def test_alpaca(inp: str, user: str) -> None:
    ex, issues = parse_line(1, b({"instruction": "Do it", "input": inp, "output": "done"}))
    assert issues == [] and ex is not None
    assert ex.messages == (Message("user", user), Message("assistant", "done"))


def test_chatml() -> None:
    text = ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nline1\nline2<|im_end|>\n"
            "<|im_start|>assistant\nA<|im_end|>")
    ex, issues = parse_line(1, b({"text": text}))
    assert issues == [] and ex is not None
    assert ex.messages == (Message("system", "S"), Message("user", "line1\nline2"), Message("assistant", "A"))


def test_coach_format() -> None:
    ex, issues = parse_line(1, b({"athlete_context": "Today ...", "question": "Can I  run?", "modification": MOD}))
    assert issues == [] and ex is not None
    assert ex.source_format == "coach"
    assert ex.messages[0] == Message("system", SYSTEM_PROMPT)
    assert ex.messages[1].content == "Today ...\nAthlete: Can I run?"
    assert parse_modification(ex.messages[2].content).operations[0].workout_id == "w3"
    assert ex.messages[2].content == parse_modification(json.dumps(MOD)).to_json()  # compact JSON
    assert ex.messages[2].content.startswith('{"operations":[{"op":"reduce_intensity","workout_id":"w3"')


def test_coach_invalid_modification_is_a_line_error() -> None:
    bad = {**MOD, "operations": [{**MOD["operations"][0], "new_zone": 9}]}  # type: ignore[dict-item]
    ex, issues = parse_line(4, b({"athlete_context": "ctx", "modification": bad}))
    assert ex is None
    assert issues and all(i.line == 4 for i in issues)
    assert any(i.field.startswith("modification.operations.0") for i in issues)


def test_every_problem_of_a_line_is_reported() -> None:
    obj = {"messages": [{"role": "robot", "content": ""}, {"role": "user", "content": "x", "weight": 3}]}
    ex, issues = parse_line(2, b(obj))
    assert ex is None
    assert {i.field for i in issues} == {"messages[0].role", "messages[0].content", "messages[1].weight"}
    assert "unknown role 'robot'" in issues[0].reason


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "messages", "no assistant turn"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                       {"role": "user", "content": "q2"}]}, "messages[2].role", "last turn must be the assistant's"),
        ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
         "conversations[1].from", "last turn"),
        ({"instruction": "x"}, "output", "missing or empty"),
        ({"text": "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nunterminated"}, "text", "malformed"),
        ({"foo": 1}, "line", "unrecognised format"),
    ],
)
def test_structural_errors(obj: dict[str, object], field: str, reason: str) -> None:
    ex, issues = parse_line(1, b(obj))
    assert ex is None
    assert any(i.field == field and reason in i.reason for i in issues), issues


def test_invalid_json_and_utf8() -> None:
    _, issues = parse_line(5, b"{not json")
    assert issues[0].line == 5 and issues[0].field == "line" and "invalid JSON" in issues[0].reason
    _, issues = parse_line(6, b'{"messages": "\xff"}')
    assert "not valid UTF-8" in issues[0].reason
    _, issues = parse_line(7, b"[1, 2]")
    assert "expected a JSON object" in issues[0].reason


def test_detect_format_and_file_majority() -> None:
    assert detect_format({"messages": []}) == "openai"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"instruction": "a", "output": "b"}) == "alpaca"
    assert detect_format({"text": "<|im_start|>user\nx<|im_end|>"}) == "chatml"
    assert detect_format({"athlete_context": "x", "modification": {}}) == "coach"
    assert detect_format({"text": "plain"}) == "unknown"
    lines = [b"", b"garbage", b({"instruction": "a", "output": "b"}),
             b({"conversations": []}), b({"conversations": []})]
    assert detect_file_format(lines) == "sharegpt"
    assert detect_file_format(lines, max_lines=1) == "alpaca"
    assert detect_file_format([b"x"]) is None


def test_explicit_format_override_reports_mismatch() -> None:
    ex, issues = parse_line(1, b({"conversations": [{"from": "human", "value": "q"}]}), "openai")
    assert ex is None
    assert any(i.field == "messages" for i in issues)
    assert any("looks like sharegpt" in i.reason for i in issues)
