"""Polarize's plug-ins for CoachForge's dataset pipeline, registered as entry points in this
package's ``pyproject.toml`` and found by ``coachforge_shared.plugins``; they fit its
``ConversationFormat`` and ``SyntheticGenerator`` protocols structurally (nothing here imports
CoachForge).

``coach`` line format
    ``{"athlete_context": str, "question": str|None, "modification": {...}}``: system is the
    coach :data:`~polarize.prompt.SYSTEM_PROMPT`, user the context (plus ``"\\nAthlete: <question>"``
    like :func:`~polarize.prompt.render_context` writes it), assistant the modification's
    compact JSON.  A conversation's last answer is checked as a workout modification when it
    came from this format or is a JSON object with an ``"operations"`` key.
``coach`` synthetic generator
    :func:`~polarize.synthetic.generate_examples` as OpenAI chat records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from .prompt import SYSTEM_PROMPT
from .schema import InvalidModification, _strip_fences, parse_modification
from .synthetic import generate_examples

NAME: Final = "coach"


def coach_user_text(athlete_context: str, question: str | None) -> str:
    """The coach user turn: the context, then ``Athlete: <question>`` as ``render_context`` writes it."""
    if question is not None and question.strip():
        return f"{athlete_context}\nAthlete: {' '.join(question.split())}"
    return athlete_context


def looks_like_modification(answer: str) -> bool:
    """Whether an answer (ignoring surrounding whitespace and a Markdown fence) is a JSON object with ``operations``."""
    body = _strip_fences(answer)
    if not body.startswith("{"):
        return False
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "operations" in obj


class CoachFormat:
    """The ``coach`` line format (a ``coachforge.dataset_formats`` plug-in)."""

    name: str = NAME
    detect_order: int = 250  # after openai/sharegpt, before alpaca/chatml
    answer_label: str = "workout modification"

    def recognises(self, obj: Mapping[str, Any]) -> bool:
        return "athlete_context" in obj or "modification" in obj

    def convert(self, obj: Mapping[str, Any]) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
        issues: list[tuple[str, str]] = []
        context = obj.get("athlete_context")
        if not isinstance(context, str) or not context.strip():
            issues.append(("athlete_context", "missing or empty"))
        question = obj.get("question")
        if question is not None and not isinstance(question, str):
            issues.append(("question", "must be a string or null"))
        modification = obj.get("modification")
        answer: str | None = None
        if isinstance(modification, dict | str):
            raw = modification if isinstance(modification, str) else json.dumps(modification)
            try:
                answer = parse_modification(raw).to_json()
            except InvalidModification as err:
                details = err.errors or [("<root>", str(err))]
                for loc, msg in details:
                    field = "modification" if loc == "<root>" else f"modification.{loc}"
                    issues.append((field, f"invalid workout modification: {msg}"))
        else:
            issues.append(("modification", "missing or not an object"))
        if issues or answer is None:
            return [], issues
        assert isinstance(context, str)
        user = coach_user_text(context, question if isinstance(question, str) else None)
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user},
                {"role": "assistant", "content": answer}], []

    def check_answer(self, answer: str, *, own_format: bool) -> bool | None:
        if not own_format and not looks_like_modification(answer):
            return None
        try:
            parse_modification(answer)
        except InvalidModification:
            return False
        return True


class CoachGenerator:
    """Seeded synthetic Polarize coach conversations (a ``coachforge.synthetic_generators`` plug-in)."""

    name: str = NAME
    description: str = ("Polarize coach examples: simulated athlete load, wellness and the week's plan, answered "
                        "with the rule-based workout modification (or, for some, a plain-text coaching answer).")

    def generate(self, count: int, seed: int) -> list[dict[str, list[dict[str, str]]]]:
        return [example.chat for example in generate_examples(count, seed)]


COACH_FORMAT: Final = CoachFormat()
COACH_GENERATOR: Final = CoachGenerator()
