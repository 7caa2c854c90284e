"""Line-by-line validation of OpenAI chat-format JSONL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class LineError:
    """One problem: 1-based line number, the offending field (JSON path) and why."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


def validate_chat_line(line_no: int, raw: bytes) -> list[LineError]:
    """Check one JSONL line against the OpenAI chat fine-tuning format."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return [LineError(line_no, "line", f"not valid UTF-8 ({err.reason} at byte {err.start})")]
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as err:
        return [LineError(line_no, "line", f"invalid JSON ({err.msg} at column {err.colno})")]
    if not isinstance(obj, dict):
        return [LineError(line_no, "line", "expected a JSON object")]
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        return [LineError(line_no, "messages", "missing or not a non-empty list")]
    errors: list[LineError] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            errors.append(LineError(line_no, where, "expected an object with role and content"))
            continue
        role = msg.get("role")
        if role not in ROLES:
            expected = ", ".join(sorted(ROLES))
            errors.append(LineError(line_no, f"{where}.role", f"unknown role {role!r} (expected one of {expected})"))
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            errors.append(LineError(line_no, f"{where}.content", "missing or empty"))
        weight = msg.get("weight")
        if weight is not None and weight not in (0, 1):
            errors.append(LineError(line_no, f"{where}.weight", "must be 0 or 1"))
    if not errors:
        if not any(m.get("role") == "assistant" for m in messages):
            errors.append(LineError(line_no, "messages", "no assistant turn"))
        elif messages[-1].get("role") != "assistant":
            last = f"messages[{len(messages) - 1}].role"
            errors.append(LineError(line_no, last, "last turn must be the assistant's"))
    return errors
