"""Input formats: detect each line's format and convert it to one internal chat form.

The internal form is :class:`Example`, a frozen dataclass holding a tuple of :class:`Message`
(tuples rather than lists so that examples are immutable and hashable).  Supported formats:

``openai``
    ``{"messages": [{"role": ..., "content": ..., "weight": 0|1?}, ...]}``
``sharegpt``
    ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}``
``alpaca``
    ``{"instruction": ..., "input": ..., "output": ...}``: one user turn (instruction, plus
    ``"\\n\\n"`` + input when input is non-empty) and one assistant turn (output).  An instruction
    of the form ``"### System:\\n<system>\\n\\n### Instruction:\\n<user>"`` (what
    :mod:`.export` writes) also yields a leading system turn.
``chatml``
    ``{"text": "<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n...<|im_end|>"}``

Other formats (e.g. Polarize's ``coach`` format) are plug-ins found through entry points
(:func:`coachforge_shared.plugins.dataset_formats`): each line is offered to the built-in and
plug-in detectors in their ``detect_order`` (openai 100, sharegpt 200, alpaca 300, chatml 400)
and a plug-in's conversion problems become line issues like the built-in ones.  :data:`FORMATS`
lists the built-in formats, then the plug-ins by name (read when this module is imported).

Every problem is a :class:`LineIssue` whose ``field`` is a JSON path such as ``messages[1].role``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from coachforge_shared.plugins import ConversationFormat, PluginError, dataset_formats

Role: TypeAlias = Literal["system", "user", "assistant"]
ROLES: Final[tuple[Role, ...]] = ("system", "user", "assistant")

OPENAI: Final = "openai"
SHAREGPT: Final = "sharegpt"
ALPACA: Final = "alpaca"
CHATML: Final = "chatml"
UNKNOWN: Final = "unknown"
BUILTIN_FORMATS: Final[tuple[str, ...]] = (OPENAI, SHAREGPT, ALPACA, CHATML)

SHAREGPT_ROLES: Final[dict[str, Role]] = {"human": "user", "gpt": "assistant", "system": "system"}
ALPACA_SYSTEM_PREFIX: Final = "### System:\n"
ALPACA_INSTRUCTION_MARK: Final = "\n\n### Instruction:\n"
CHATML_START: Final = "<|im_start|>"
CHATML_END: Final = "<|im_end|>"
DEFAULT_DETECT_LINES: Final = 50

MAX_JSON_DEPTH: Final = 64
"""Deepest nesting of arrays and objects a line may have (chat lines need fewer than ten levels);
deeper ones are refused before anything walks them recursively."""


@dataclass(frozen=True)
class Message:
    """One chat turn; ``weight`` is OpenAI's optional per-message training weight (0 or 1)."""

    role: Role
    content: str
    weight: int | None = None


@dataclass(frozen=True)
class Example:
    """One training conversation in the internal form."""

    messages: tuple[Message, ...]
    source_format: str
    conversation_id: str | None = None


@dataclass(frozen=True)
class LineIssue:
    """One problem: 1-based line number, the offending field (JSON path) and why."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


def _plugin_formats() -> Mapping[str, ConversationFormat]:
    plugins: Mapping[str, ConversationFormat] = dataset_formats()
    for name in plugins:
        if name in BUILTIN_FORMATS or name == UNKNOWN:
            raise PluginError(f"dataset format plug-in {name!r} has the name of a built-in format")
    return plugins


PLUGIN_FORMATS: Final[Mapping[str, ConversationFormat]] = _plugin_formats()
"""The installed format plug-ins by name."""
FORMATS: Final[tuple[str, ...]] = (*BUILTIN_FORMATS, *sorted(PLUGIN_FORMATS))


def _is_chatml(obj: Mapping[str, Any]) -> bool:
    text = obj.get("text")
    return isinstance(text, str) and CHATML_START in text


_BUILTIN_DETECTORS: Final[tuple[tuple[int, str, Callable[[Mapping[str, Any]], bool]], ...]] = (
    (100, OPENAI, lambda obj: "messages" in obj),
    (200, SHAREGPT, lambda obj: "conversations" in obj),
    (300, ALPACA, lambda obj: "instruction" in obj or "output" in obj),
    (400, CHATML, _is_chatml),
)
_DETECTORS: Final[tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...]] = tuple(
    (name, recognises) for _, name, recognises in sorted(
        [*_BUILTIN_DETECTORS, *((p.detect_order, name, p.recognises) for name, p in PLUGIN_FORMATS.items())],
        key=lambda d: (d[0], d[1]))
)


def detect_format(obj: dict[str, Any]) -> str:
    """The format of one decoded JSON line, judged by its keys; :data:`UNKNOWN` if none fits."""
    for name, recognises in _DETECTORS:
        if recognises(obj):
            return name
    return UNKNOWN


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _structure_problem(value: Any, strings: bool) -> str | None:
    """Why decoded JSON cannot be used, walked without recursion: arrays/objects nested more than
    :data:`MAX_JSON_DEPTH` deep, or (``strings``) a string holding a lone UTF-16 surrogate (from a
    ``\\ud800``-style escape), which is not text and could not be written out again as UTF-8."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if strings and _lone_surrogate(node):
                return "a \\u escape gives a lone UTF-16 surrogate, which is not text"
            continue
        if isinstance(node, dict):
            if strings and any(_lone_surrogate(key) for key in node):
                return "a \\u escape gives a lone UTF-16 surrogate, which is not text"
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH} levels"
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list) or (strings and isinstance(child, str)))
    return None


def _decode(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """Decode one line to a JSON object, or return the reason it cannot be."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 ({err.reason} at byte {err.start})"
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"invalid JSON ({err.msg} at column {err.colno})"
    except RecursionError:
        return None, f"invalid JSON (nested deeper than {MAX_JSON_DEPTH} levels)"
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        return None, f"invalid JSON ({err})"
    if not isinstance(obj, dict):
        return None, "expected a JSON object"
    # Strings are only checked when an escape could have made a surrogate (UTF-8 input cannot); the
    # nesting only when the line has more brackets than the limit (most lines pay two scans, no walk).
    surrogates = "\\ud" in text or "\\uD" in text
    if surrogates or text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        problem = _structure_problem(obj, strings=surrogates)
        if problem is not None:
            return None, f"invalid JSON ({problem})"
    return obj, None


def detect_file_format(lines: Iterable[bytes], max_lines: int = DEFAULT_DETECT_LINES) -> str | None:
    """The majority format among the first ``max_lines`` valid, recognisable lines.

    Blank, undecodable and unrecognised lines are skipped and do not count towards
    ``max_lines``.  Ties go to the format listed first in :data:`FORMATS`.  ``None`` when no
    line is recognised.
    """
    votes: Counter[str] = Counter()
    seen = 0
    for raw in lines:
        if seen >= max_lines:
            break
        if not raw.strip():
            continue
        obj, _ = _decode(raw)
        if obj is None:
            continue
        fmt = detect_format(obj)
        if fmt == UNKNOWN:
            continue
        votes[fmt] += 1
        seen += 1
    if not votes:
        return None
    best = max(votes.values())
    return next(fmt for fmt in FORMATS if votes[fmt] == best)


def _conversation_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("conversation_id")
    if value is None:
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            value = meta.get("conversation_id")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        return str(value) if str(value) else None
    return None


def _as_role(value: object) -> Role | None:
    """``value`` as a :data:`Role`, or ``None`` when it is not one."""
    for role in ROLES:
        if value == role:
            return role
    return None


Converter: TypeAlias = Callable[[int, dict[str, Any]], tuple[list[Message], list[LineIssue]]]


def _check_turns(line: int, path: str, role_key: str, turns: list[Message]) -> list[LineIssue]:
    """Conversation-level checks, run once every turn is individually valid."""
    if not any(m.role == "assistant" for m in turns):
        return [LineIssue(line, path, "no assistant turn")]
    if turns[-1].role != "assistant":
        return [LineIssue(line, f"{path}[{len(turns) - 1}].{role_key}", "last turn must be the assistant's")]
    return []


def _convert_openai(line: int, obj: dict[str, Any]) -> tuple[list[Message], list[LineIssue]]:
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        return [], [LineIssue(line, "messages", "missing or not a non-empty list")]
    issues: list[LineIssue] = []
    turns: list[Message] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            issues.append(LineIssue(line, where, "expected an object with role and content"))
            continue
        role = _as_role(msg.get("role"))
        ok = True
        if role is None:
            issues.append(LineIssue(line, f"{where}.role", f"unknown role {msg.get('role')!r} (expected one of "
                                    f"{', '.join(sorted(ROLES))})"))
            ok = False
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            issues.append(LineIssue(line, f"{where}.content", "missing or empty"))
            ok = False
        weight = msg.get("weight")
        if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
            issues.append(LineIssue(line, f"{where}.weight", "must be 0 or 1"))
            ok = False
        if ok and role is not None and isinstance(content, str):
            turns.append(Message(role, content, weight))
    if issues:
        return [], issues
    return turns, _check_turns(line, "messages", "role", turns)


def _convert_sharegpt(line: int, obj: dict[str, Any]) -> tuple[list[Message], list[LineIssue]]:
    conversations = obj.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        return [], [LineIssue(line, "conversations", "missing or not a non-empty list")]
    issues: list[LineIssue] = []
    turns: list[Message] = []
    for i, msg in enumerate(conversations):
        where = f"conversations[{i}]"
        if not isinstance(msg, dict):
            issues.append(LineIssue(line, where, "expected an object with from and value"))
            continue
        sender = msg.get("from")
        role = SHAREGPT_ROLES.get(sender) if isinstance(sender, str) else None
        if role is None:
            issues.append(LineIssue(line, f"{where}.from", f"unknown role {sender!r} (expected one of "
                                    f"{', '.join(sorted(SHAREGPT_ROLES))})"))
        value = msg.get("value")
        if not isinstance(value, str) or not value.strip():
            issues.append(LineIssue(line, f"{where}.value", "missing or empty"))
        elif role is not None:
            turns.append(Message(role, value))
    if issues:
        return [], issues
    return turns, _check_turns(line, "conversations", "from", turns)


def _convert_alpaca(line: int, obj: dict[str, Any]) -> tuple[list[Message], list[LineIssue]]:
    issues: list[LineIssue] = []
    instruction = obj.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        issues.append(LineIssue(line, "instruction", "missing or empty"))
    extra = obj.get("input", "")
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        issues.append(LineIssue(line, "input", "must be a string"))
    output = obj.get("output")
    if not isinstance(output, str) or not output.strip():
        issues.append(LineIssue(line, "output", "missing or empty"))
    if issues:
        return [], issues
    assert isinstance(instruction, str) and isinstance(extra, str) and isinstance(output, str)
    turns: list[Message] = []
    if instruction.startswith(ALPACA_SYSTEM_PREFIX) and ALPACA_INSTRUCTION_MARK in instruction:
        system, instruction = instruction[len(ALPACA_SYSTEM_PREFIX) :].split(ALPACA_INSTRUCTION_MARK, 1)
        if not system.strip() or not instruction.strip():
            return [], [LineIssue(line, "instruction", "empty system prompt or instruction after the system prefix")]
        turns.append(Message("system", system))
    user = f"{instruction}\n\n{extra}" if extra else instruction
    turns.extend([Message("user", user), Message("assistant", output)])
    return turns, []


class _NextFrom:
    """Positions of ``needle`` in ``text`` asked for in non-decreasing order: each part of the text
    is searched at most once, however many times it is asked."""

    _NONE = -2  # no needle after the last search: never searched again

    def __init__(self, text: str, needle: str) -> None:
        self.text, self.needle, self.found = text, needle, -1

    def at_or_after(self, pos: int) -> int:
        """The first position >= ``pos`` of the needle, or -1."""
        if self.found == self._NONE:
            return -1
        if self.found < pos:
            self.found = self.text.find(self.needle, pos)
            if self.found < 0:
                self.found = self._NONE
                return -1
        return self.found


def _chatml_turns(text: str) -> Iterator[tuple[int, int, str, str]]:
    r"""The turns of a chatml text as (start, end, role, content), found as the pattern
    ``<|im_start|>([^\n<]*)\n(.*?)<|im_end|>\n?`` (DOTALL) would find them left to right, in
    linear time: every search below moves forward only, so a text of many ``<|im_start|>`` and no
    ``<|im_end|>`` is not rescanned from each start."""
    newline, angle, end_tag = _NextFrom(text, "\n"), _NextFrom(text, "<"), _NextFrom(text, CHATML_END)
    pos = 0
    while (start := text.find(CHATML_START, pos)) >= 0:
        role_at = start + len(CHATML_START)
        role_end = newline.at_or_after(role_at)
        lt = angle.at_or_after(role_at)
        if role_end < 0 or 0 <= lt < role_end:  # the role runs into a '<' or never ends: no turn here
            pos = start + 1
            continue
        content_at = role_end + 1
        close = end_tag.at_or_after(content_at)
        if close < 0:
            pos = start + 1
            continue
        end = close + len(CHATML_END)
        if text.startswith("\n", end):
            end += 1
        yield start, end, text[role_at:role_end], text[content_at:close]
        pos = end


def _convert_chatml(line: int, obj: dict[str, Any]) -> tuple[list[Message], list[LineIssue]]:
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        return [], [LineIssue(line, "text", "missing or empty")]
    issues: list[LineIssue] = []
    turns: list[Message] = []
    pos = 0
    index = 0
    for start, end, name, content in _chatml_turns(text):
        if text[pos:start].strip():
            issues.append(LineIssue(line, "text", f"unexpected text outside a turn at character {pos}"))
        pos = end
        role = _as_role(name)
        where = f"text.turns[{index}]"
        index += 1
        ok = True
        if role is None:
            issues.append(LineIssue(line, f"{where}.role", f"unknown role {name!r} (expected one of "
                                    f"{', '.join(sorted(ROLES))})"))
            ok = False
        if not content.strip():
            issues.append(LineIssue(line, f"{where}.content", "missing or empty"))
            ok = False
        if ok and role is not None:
            turns.append(Message(role, content))
    if text[pos:].strip():
        issues.append(LineIssue(line, "text", f"unterminated or malformed chatml at character {pos}"))
    if index == 0 and not issues:
        issues.append(LineIssue(line, "text", "no chatml turns"))
    if issues:
        return [], issues
    return turns, _check_turns(line, "text.turns", "role", turns)


def _plugin_converter(plugin: ConversationFormat) -> Converter:
    """A plug-in's conversion, with its problems as line issues and its turns checked."""

    def convert(line: int, obj: dict[str, Any]) -> tuple[list[Message], list[LineIssue]]:
        messages, problems = plugin.convert(obj)
        if problems:
            return [], [LineIssue(line, field, reason) for field, reason in problems]
        turns: list[Message] = []
        for i, message in enumerate(messages):
            role, content = _as_role(message.get("role")), message.get("content")
            if role is None or not isinstance(content, str):
                return [], [LineIssue(line, "line", f"the {plugin.name} format plug-in gave an invalid turn {i}")]
            turns.append(Message(role, content))
        if not turns or turns[-1].role != "assistant":
            return [], [LineIssue(line, "line", f"the {plugin.name} format plug-in gave no final assistant turn")]
        return turns, []

    return convert


_CONVERTERS: Final[dict[str, Converter]] = {
    OPENAI: _convert_openai,
    SHAREGPT: _convert_sharegpt,
    ALPACA: _convert_alpaca,
    CHATML: _convert_chatml,
    **{name: _plugin_converter(plugin) for name, plugin in PLUGIN_FORMATS.items()},
}


def convert_object(line: int, obj: dict[str, Any], fmt: str | None = None) -> tuple[Example | None, list[LineIssue]]:
    """Convert one decoded line; ``fmt=None`` detects the format of this line alone."""
    if fmt is not None and fmt not in _CONVERTERS:
        raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    detected = detect_format(obj)
    chosen = fmt or detected
    if chosen == UNKNOWN:
        return None, [LineIssue(line, "line", f"unrecognised format (expected one of {', '.join(FORMATS)})")]
    turns, issues = _CONVERTERS[chosen](line, obj)
    if issues and fmt is not None and detected not in (UNKNOWN, fmt):
        issues.append(LineIssue(line, "line", f"looks like {detected}, but the file is {fmt}"))
    if issues:
        return None, issues
    return Example(tuple(turns), chosen, _conversation_id(obj)), []


def parse_line(line: int, raw: bytes, fmt: str | None = None) -> tuple[Example | None, list[LineIssue]]:
    """Decode (UTF-8, JSON object) and convert one input line; every problem is reported."""
    obj, reason = _decode(raw)
    if obj is None:
        return None, [LineIssue(line, "line", reason or "unreadable")]
    return convert_object(line, obj, fmt)


EVAL_LINE_FIELDS: Final[tuple[str, ...]] = ("item", "sample")
"""The fields of one line of an evals file (OpenAI's ``purpose="evals"``): ``{"item": {…}, "sample"?: {…}}``."""


def parse_eval_line(line: int, raw: bytes) -> tuple[dict[str, Any] | None, list[LineIssue]]:
    """Decode (UTF-8, JSON object) and check one line of an evals file: an ``item`` object and,
    when present, a ``sample`` object, nothing else; every problem is reported. Not training data:
    the line is returned as decoded, not converted to an :class:`Example`."""
    obj, reason = _decode(raw)
    if obj is None:
        return None, [LineIssue(line, "line", reason or "unreadable")]
    issues = []
    if "item" not in obj:
        issues.append(LineIssue(line, "item", 'missing; every line of an evals file is {"item": {...}}'))
    elif not isinstance(obj["item"], dict):
        issues.append(LineIssue(line, "item", "must be a JSON object"))
    if "sample" in obj and not isinstance(obj["sample"], dict):
        issues.append(LineIssue(line, "sample", "must be a JSON object when present"))
    issues += [LineIssue(line, str(key), "unexpected field; an evals line holds only item and sample")
               for key in obj if key not in EVAL_LINE_FIELDS]
    return (None, issues) if issues else (obj, [])
