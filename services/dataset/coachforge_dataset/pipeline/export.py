"""Export examples as OpenAI chat JSONL, chatml text lines or alpaca records.

Each exported line re-imports (with :func:`.formats.parse_line`) to an example with the same
messages and ``conversation_id`` (only ``source_format`` changes).  Lossy cases:

* ``chatml`` and ``alpaca`` have no per-message weight: exporting an example with a weight
  raises :class:`ExportError` unless ``drop_weights=True``;
* ``alpaca`` holds one user and one assistant turn, optionally after one system turn, which is
  written as an ``instruction`` prefix ``"### System:\\n<system>\\n\\n### Instruction:\\n"``
  that :mod:`.formats` recognises; ``input`` is always empty.  Other shapes raise
  :class:`ExportError` naming the example index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Final

from .formats import (
    ALPACA,
    ALPACA_INSTRUCTION_MARK,
    ALPACA_SYSTEM_PREFIX,
    CHATML,
    CHATML_END,
    CHATML_START,
    OPENAI,
    Example,
)

EXPORT_FORMATS: Final[tuple[str, ...]] = (OPENAI, CHATML, ALPACA)


class ExportError(ValueError):
    """An example cannot be written in the requested format; ``index`` is its position."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"example {index}: {reason}")
        self.index = index
        self.reason = reason


def _with_id(record: dict[str, Any], example: Example) -> dict[str, Any]:
    if example.conversation_id is not None:
        record["conversation_id"] = example.conversation_id
    return record


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def chatml_text(example: Example) -> str:
    """The chatml rendering: ``<|im_start|>role\\ncontent<|im_end|>`` turns joined by newlines."""
    return "\n".join(f"{CHATML_START}{m.role}\n{m.content}{CHATML_END}" for m in example.messages)


def to_openai(example: Example) -> dict[str, Any]:
    """The OpenAI chat record (``weight`` only where set)."""
    messages: list[dict[str, Any]] = []
    for m in example.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.weight is not None:
            msg["weight"] = m.weight
        messages.append(msg)
    return _with_id({"messages": messages}, example)


def to_openai_record(example: Example) -> bytes:
    """The OpenAI chat record as one UTF-8 JSON line (no newline), as :func:`export_lines` writes it."""
    return _dumps(to_openai(example)).encode("utf-8")


def to_chatml(index: int, example: Example, drop_weights: bool = False) -> dict[str, Any]:
    """The chatml record ``{"text": ...}``."""
    if not drop_weights and any(m.weight is not None for m in example.messages):
        raise ExportError(index, "chatml cannot carry per-message weights (pass drop_weights=True)")
    if any(CHATML_END in m.content or CHATML_START in m.content for m in example.messages):
        raise ExportError(index, "a message contains a chatml control token")
    return _with_id({"text": chatml_text(example)}, example)


def to_alpaca(index: int, example: Example, drop_weights: bool = False) -> dict[str, Any]:
    """The alpaca record; only ``[system?, user, assistant]`` examples can be written."""
    if not drop_weights and any(m.weight is not None for m in example.messages):
        raise ExportError(index, "alpaca cannot carry per-message weights (pass drop_weights=True)")
    roles = [m.role for m in example.messages]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        raise ExportError(index, f"alpaca needs a single-turn example (system?, user, assistant), got {roles}")
    *head, user, assistant = example.messages
    instruction = user.content
    if head:
        if ALPACA_INSTRUCTION_MARK in head[0].content:
            raise ExportError(index, "the system prompt contains the alpaca instruction marker")
        instruction = f"{ALPACA_SYSTEM_PREFIX}{head[0].content}{ALPACA_INSTRUCTION_MARK}{instruction}"
    elif instruction.startswith(ALPACA_SYSTEM_PREFIX) and ALPACA_INSTRUCTION_MARK in instruction:
        raise ExportError(index, "the user turn looks like an alpaca system prefix")
    return _with_id({"instruction": instruction, "input": "", "output": assistant.content}, example)


def export_lines(examples: Iterable[Example], fmt: str, *, drop_weights: bool = False) -> Iterator[str]:
    """Yield one JSON line (without newline) per example in ``fmt`` (one of :data:`EXPORT_FORMATS`)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (expected one of {', '.join(EXPORT_FORMATS)})")
    for i, ex in enumerate(examples):
        if fmt == OPENAI:
            yield _dumps(to_openai(ex))
        elif fmt == CHATML:
            yield _dumps(to_chatml(i, ex, drop_weights))
        else:
            yield _dumps(to_alpaca(i, ex, drop_weights))


def export_jsonl(examples: Iterable[Example], fmt: str, *, drop_weights: bool = False) -> str:
    """The whole export as JSONL text (each line ends with a newline)."""
    return "".join(line + "\n" for line in export_lines(examples, fmt, drop_weights=drop_weights))
