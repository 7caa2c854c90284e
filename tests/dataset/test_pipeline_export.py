"""Export then re-import gives the same examples, for every export format."""

from __future__ import annotations

import json

import pytest

from coachforge_dataset.pipeline import Example, ExportError, Message, export_jsonl, export_lines, parse_line

SINGLE = [
    Example((Message("user", "hi"), Message("assistant", "hello")), "openai", None),
    Example((Message("system", "Be brief.\nAlways."), Message("user", "Q\n\nwith blank line"),
             Message("assistant", " spaced answer \n")), "sharegpt", "conv-1"),
    Example((Message("user", "unicode é ✓ \"quotes\""), Message("assistant", "{\"operations\":[]}")), "coach", "42"),
]
MULTI = [
    Example((Message("system", "s"), Message("user", "a"), Message("assistant", "b"), Message("user", "c"),
             Message("assistant", "d")), "openai", "m1"),
]


def reimport(text: str) -> list[Example]:
    out: list[Example] = []
    for i, line in enumerate(text.splitlines(), start=1):
        ex, issues = parse_line(i, line.encode())
        assert issues == [] and ex is not None
        out.append(ex)
    return out


def same(a: Example, b: Example) -> bool:
    return bool(a.messages == b.messages and a.conversation_id == b.conversation_id)


@pytest.mark.parametrize(("fmt", "examples"), [
    ("openai", SINGLE + MULTI), ("chatml", SINGLE + MULTI), ("alpaca", SINGLE),
])
def test_round_trip(fmt: str, examples: list[Example]) -> None:
    back = reimport(export_jsonl(examples, fmt))
    assert len(back) == len(examples)
    assert all(same(a, b) for a, b in zip(examples, back, strict=True))
    assert {b.source_format for b in back} == {fmt}


def test_openai_keeps_weights() -> None:
    ex = Example((Message("user", "q"), Message("assistant", "a", 0), Message("user", "q2"),
                  Message("assistant", "a2", 1)), "openai", None)
    [line] = export_lines([ex], "openai")
    assert json.loads(line)["messages"][1] == {"role": "assistant", "content": "a", "weight": 0}
    assert reimport(line)[0] == ex


def test_chatml_exact_form() -> None:
    [line] = export_lines([SINGLE[0]], "chatml")
    assert json.loads(line) == {"text": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>"}


def test_alpaca_system_prefix() -> None:
    [line] = export_lines([SINGLE[1]], "alpaca")
    record = json.loads(line)
    assert record["instruction"] == "### System:\nBe brief.\nAlways.\n\n### Instruction:\nQ\n\nwith blank line"
    assert record["input"] == "" and record["conversation_id"] == "conv-1"


def test_alpaca_rejects_multi_turn_naming_the_index() -> None:
    with pytest.raises(ExportError, match="example 3: alpaca needs a single-turn example") as err:
        export_jsonl(SINGLE + MULTI, "alpaca")
    assert err.value.index == 3


def test_lossy_weights_need_opt_in() -> None:
    ex = Example((Message("user", "q"), Message("assistant", "a", 1)), "openai", None)
    with pytest.raises(ExportError, match="weights"):
        export_jsonl([ex], "chatml")
    back = reimport(export_jsonl([ex], "alpaca", drop_weights=True))
    assert back[0].messages == (Message("user", "q"), Message("assistant", "a"))


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        export_jsonl(SINGLE, "sharegpt")
