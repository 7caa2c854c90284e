"""Preference pairs: OpenAI's format for DPO fine-tuning files, one object per line::

    {"input": {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

``input.messages`` is the prompt: system, user and assistant turns as in a chat line, ending with
a user turn. Each output is exactly one assistant message with non-empty text; the two differ (a
pair of equal answers teaches nothing). ``tools`` (a list of objects) and ``parallel_tool_calls``
(a boolean) are optional and kept as given.

A ``fine-tune`` file holds either chat lines (any format of :mod:`.formats`) or preference lines,
never both; :func:`parse_training_line` tells which a line is (:func:`is_preference`) and checks it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from .formats import ROLES, Example, LineIssue, Message, _as_role, _decode, convert_object

CHAT: Final = "chat"
PREFERENCE: Final = "preference"
TrainingFormat: TypeAlias = Literal["chat", "preference"]
OUTPUT_FIELDS: Final[tuple[str, str]] = ("preferred_output", "non_preferred_output")


@dataclass(frozen=True)
class Preference:
    """One preference pair: the prompt's turns and the preferred and non-preferred answers."""

    prompt: tuple[Message, ...]
    preferred: str
    non_preferred: str
    tools: tuple[Any, ...] | None = field(default=None, compare=False)
    parallel_tool_calls: bool | None = None

    def with_answer(self, which: str) -> Example:
        """The prompt followed by one answer (``preferred_output`` or ``non_preferred_output``) as a
        conversation, e.g. to count its tokens."""
        answer = self.preferred if which == "preferred_output" else self.non_preferred
        return Example((*self.prompt, Message("assistant", answer)), PREFERENCE)

    def to_record(self) -> dict[str, Any]:
        """The OpenAI preference record (what the trainer reads)."""
        given: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content} for m in self.prompt]}
        if self.tools is not None:
            given["tools"] = list(self.tools)
        if self.parallel_tool_calls is not None:
            given["parallel_tool_calls"] = self.parallel_tool_calls
        return {"input": given, "preferred_output": [{"role": "assistant", "content": self.preferred}],
                "non_preferred_output": [{"role": "assistant", "content": self.non_preferred}]}

    def to_jsonl(self) -> bytes:
        return json.dumps(self.to_record(), ensure_ascii=False, separators=(",", ":")).encode()


def is_preference(obj: dict[str, Any]) -> bool:
    """Whether a decoded line is meant as a preference pair: it has an output field, or an ``input``
    object (an alpaca line's ``input`` is a string)."""
    return any(name in obj for name in OUTPUT_FIELDS) or isinstance(obj.get("input"), dict)


def _prompt(line: int, given: Any) -> tuple[list[Message], list[LineIssue]]:
    if not isinstance(given, dict):
        return [], [LineIssue(line, "input", 'missing or not an object {"messages": [...]}')]
    issues: list[LineIssue] = []
    messages = given.get("messages")
    turns: list[Message] = []
    if not isinstance(messages, list) or not messages:
        issues.append(LineIssue(line, "input.messages", "missing or not a non-empty list"))
    else:
        for i, msg in enumerate(messages):
            where = f"input.messages[{i}]"
            if not isinstance(msg, dict):
                issues.append(LineIssue(line, where, "expected an object with role and content"))
                continue
            role = _as_role(msg.get("role"))
            content = msg.get("content")
            if role is None:
                issues.append(LineIssue(line, f"{where}.role", f"unknown role {msg.get('role')!r} (expected one "
                                        f"of {', '.join(sorted(ROLES))})"))
            if not isinstance(content, str) or not content.strip():
                issues.append(LineIssue(line, f"{where}.content", "missing or empty"))
            elif role is not None:
                turns.append(Message(role, content))
        if not issues and turns[-1].role != "user":
            issues.append(LineIssue(line, f"input.messages[{len(turns) - 1}].role",
                                    "the prompt's last turn must be the user's (the outputs answer it)"))
    tools = given.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        issues.append(LineIssue(line, "input.tools", "must be a list of tool objects"))
    parallel = given.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        issues.append(LineIssue(line, "input.parallel_tool_calls", "must be true or false"))
    return turns, issues


def _output(line: int, name: str, given: Any) -> tuple[str | None, list[LineIssue]]:
    """The answer of one output field: exactly one assistant message with non-empty text content."""
    if not isinstance(given, list) or len(given) != 1:
        return None, [LineIssue(line, name, 'must be a list of exactly one message {"role": "assistant", '
                                            '"content": "..."}')]
    msg = given[0]
    if not isinstance(msg, dict):
        return None, [LineIssue(line, f"{name}[0]", "expected an object with role and content")]
    issues = []
    if msg.get("role") != "assistant":
        issues.append(LineIssue(line, f"{name}[0].role", f"must be 'assistant', got {msg.get('role')!r}"))
    content = msg.get("content")
    if not isinstance(content, str) or not content.strip():
        issues.append(LineIssue(line, f"{name}[0].content", "missing or empty"))
    return (content if not issues and isinstance(content, str) else None), issues


def convert_preference(line: int, obj: dict[str, Any]) -> tuple[Preference | None, list[LineIssue]]:
    """Check one decoded preference line; every problem is reported."""
    turns, issues = _prompt(line, obj.get("input"))
    preferred, found = _output(line, "preferred_output", obj.get("preferred_output"))
    issues += found
    non_preferred, found = _output(line, "non_preferred_output", obj.get("non_preferred_output"))
    issues += found
    if preferred is not None and non_preferred is not None and preferred.strip() == non_preferred.strip():
        issues.append(LineIssue(line, "non_preferred_output[0].content",
                                "is the same as preferred_output[0].content; a pair must differ"))
    if issues or preferred is None or non_preferred is None:
        return None, issues
    given = obj["input"]
    tools = given.get("tools")
    return Preference(tuple(turns), preferred, non_preferred, tuple(tools) if tools is not None else None,
                      given.get("parallel_tool_calls")), []


def parse_training_line(line: int, raw: bytes) -> tuple[TrainingFormat | None, Example | Preference | None,
                                                        list[LineIssue]]:
    """Decode one line of a ``fine-tune`` file and check it as what it is: its kind (``chat`` or
    ``preference``; None when it is not a JSON object), the converted line, and every problem."""
    obj, reason = _decode(raw)
    if obj is None:
        return None, None, [LineIssue(line, "line", reason or "unreadable")]
    if is_preference(obj):
        pair, issues = convert_preference(line, obj)
        return PREFERENCE, pair, issues
    example, issues = convert_object(line, obj)
    return CHAT, example, issues


def mixed_issue(line: int, kind: TrainingFormat, file_format: TrainingFormat, first_line: int) -> LineIssue:
    """The problem of a line whose kind is not the file's (set by its first line, ``first_line``)."""
    return LineIssue(line, "line", f"a {kind} line in a {file_format} file (line {first_line} is a {file_format} "
                                   "line); a fine-tune file holds either chat lines or preference lines, not both")
