"""Fine-tuning eligibility: one pass over a file's (or a split's) examples that counts the usable
ones and says why the others would not teach the model anything useful.

An example is unusable for exactly one reason, checked in this order:

``too_short``
    no user turn, or a final assistant answer shorter than ``min_answer_chars`` characters
    (ignoring surrounding whitespace);
``rules_rejected``
    its answer is not a valid structured answer of a format plug-in that claims the conversation:
    the plug-in of the example's own format, a plug-in whose ``system_prompt`` (an optional
    attribute, e.g. Polarize's coach prompt) is the conversation's system message, or a plug-in
    that recognises the answer itself (``check_answer``, as the quality score does);
``duplicate``
    the same messages (equal :func:`~.clean.content_hash`: case and spacing aside) as an earlier
    example of the same scan.

The words shown to people (what each reason means, what to do about it) come from
:func:`eligibility_messages` only, so the API, the trainer's errors and the console say the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from .clean import content_hash
from .formats import PLUGIN_FORMATS, Example, LineIssue, Message
from .preference import PREFERENCE, Preference

DUPLICATE: Final = "duplicate"
TOO_SHORT: Final = "too_short"
RULES_REJECTED: Final = "rules_rejected"
REASONS: Final[tuple[str, ...]] = (DUPLICATE, TOO_SHORT, RULES_REJECTED)
DEFAULT_MIN_ANSWER_CHARS: Final = 3
MAX_SAMPLES: Final = 5


@dataclass(frozen=True)
class ReasonText:
    """The words for one reason: what it means and what to do."""

    description: str
    advice: str


def eligibility_messages(min_answer_chars: int = DEFAULT_MIN_ANSWER_CHARS) -> dict[str, ReasonText]:
    """What each unusability reason means and the advice to fix it (the one place of this wording)."""
    return {
        DUPLICATE: ReasonText(
            "repeats the messages of an earlier example",
            "Remove repeated examples (a dataset version with dedupe does it): duplicates add training time "
            "and over-weight those answers without teaching anything new."),
        TOO_SHORT: ReasonText(
            f"has no user turn or a final answer shorter than {min_answer_chars} characters",
            "Give every example a user turn and a complete assistant answer; near-empty answers teach the model "
            "to answer with next to nothing."),
        RULES_REJECTED: ReasonText(
            "has an answer that is not valid for its format's schema (e.g. a Polarize coach answer that is not "
            "a valid workout modification)",
            "Fix or drop answers that fail the schema: the model would learn to produce answers the app rejects. "
            "Check them with the dataset report (quality score 0 marks them)."),
    }


@dataclass
class Eligibility:
    """The result of :func:`check_eligibility`."""

    min_answer_chars: int = DEFAULT_MIN_ANSWER_CHARS
    examples: int = 0
    usable: int = 0
    unusable: Counter[str] = field(default_factory=Counter)
    samples: list[LineIssue] = field(default_factory=list)

    def add(self, line: int, where: str, reason: str | None) -> None:
        self.examples += 1
        if reason is None:
            self.usable += 1
            return
        self.unusable[reason] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(LineIssue(line, where, eligibility_messages(self.min_answer_chars)[reason]
                                          .description))

    def advice(self) -> list[str]:
        """One advice line per reason found, in :data:`REASONS` order."""
        texts = eligibility_messages(self.min_answer_chars)
        return [f"{self.unusable[r]} {_examples(self.unusable[r])} {texts[r].description}. {texts[r].advice}"
                for r in REASONS if self.unusable[r]]

    def message(self) -> str:
        """One line for people: "12 of 20 examples are usable; 5 duplicate, 3 too_short (line 4: ...)"."""
        text = f"{self.usable} of {self.examples} {_examples(self.examples)} usable"
        if self.unusable:
            counts = ", ".join(f"{self.unusable[r]} {r}" for r in REASONS if self.unusable[r])
            text += f"; unusable: {counts}"
            if self.samples:
                text += " (" + "; ".join(str(s) for s in self.samples) + ")"
        return text


def _examples(n: int) -> str:
    return "example" if n == 1 else "examples"


def _system_prompt_owner(example: Example) -> str | None:
    """The plug-in whose ``system_prompt`` is the conversation's first system message, if any."""
    system = next((m.content for m in example.messages if m.role == "system"), None)
    if system is None:
        return None
    for name, plugin in PLUGIN_FORMATS.items():
        prompt = getattr(plugin, "system_prompt", None)
        if isinstance(prompt, str) and prompt.strip() == system.strip():
            return name
    return None


def answer_valid(example: Example, answer: str) -> bool:
    """Whether no format plug-in that claims the conversation rejects its final answer."""
    owners = {example.source_format, _system_prompt_owner(example)}
    for name in sorted(PLUGIN_FORMATS, key=lambda n: (n not in owners, n)):
        verdict = PLUGIN_FORMATS[name].check_answer(answer, own_format=name in owners)
        if verdict is not None:
            return verdict
    return True


def unusable_reason(example: Example, min_answer_chars: int = DEFAULT_MIN_ANSWER_CHARS) -> str | None:
    """Why one example (on its own) is unusable, or ``None``; duplicates need the scan's history."""
    answer = next((m.content for m in reversed(example.messages) if m.role == "assistant"), "")
    if not any(m.role == "user" for m in example.messages) or len(answer.strip()) < min_answer_chars:
        return TOO_SHORT
    if not answer_valid(example, answer):
        return RULES_REJECTED
    return None


def check_eligibility(examples: Iterable[tuple[int, str, Example | Preference]],
                      min_answer_chars: int = DEFAULT_MIN_ANSWER_CHARS) -> Eligibility:
    """Scan ``(line, field, example)`` once and count usable and unusable examples by reason. A
    preference pair is judged by its prompt and preferred output (the answer it teaches); it repeats
    an earlier pair when prompt and both outputs are the same."""
    result = Eligibility(min_answer_chars)
    seen: set[str] = set()
    for line, where, example in examples:
        if isinstance(example, Preference):
            key = content_hash(Example((*example.prompt, Message("assistant", example.preferred),
                                        Message("assistant", example.non_preferred)), PREFERENCE))
            example = example.with_answer("preferred_output")
        else:
            key = content_hash(example)
        reason = unusable_reason(example, min_answer_chars)
        if reason is None and key in seen:
            reason = DUPLICATE
        seen.add(key)
        result.add(line, where, reason)
    return result
