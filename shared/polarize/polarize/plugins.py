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
``polarize_coach`` grader (entry point group ``coachforge.graders``)
    grades a coach answer of an eval item that carries the athlete's state, the week's plan and
    the day (:func:`coach_eval_item` makes such items from synthetic examples), with the same
    checks as the coach evaluation: a valid workout modification, every operation accepted by the
    safety rules, agreement with the rule-based decision.  See :class:`CoachGrader`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .prompt import SYSTEM_PROMPT
from .rules import (
    AthleteState,
    PlannedWorkout,
    apply_modification,
    check_operation,
    recommend,
    weekly_tss,
)
from .schema import WORKOUT_TYPES, InvalidModification, Modification, _strip_fences, parse_modification
from .synthetic import SyntheticExample, generate_examples, matches_expected

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
    # A conversation with this system message is a coach conversation whatever its line format: the
    # dataset service's eligibility check holds its answer to the modification schema.
    system_prompt: str = SYSTEM_PROMPT

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


# --------------------------------------------------------------------------- the coach grader

GRADER_NAME: Final = "polarize_coach"
CHECKS: Final = ("valid", "safe", "agrees")
AGREEMENTS: Final = ("operations", "direction")
DIRECTIONS: Final = ("up", "down", "same", "not_up")
TSS_TOLERANCE: Final = 0.01  # a change of the week's TSS below 1 % counts as "same" (as the coach eval)
GRADER_FIELDS: Final[dict[str, str]] = {
    "answer": "{{sample.output_text}}",
    "state": "{{item.state}}",
    "upcoming": "{{item.upcoming}}",
    "today": "{{item.today}}",
    "expected": "{{item.expected}}",
}
_STATE_NUMBERS: Final = ("ctl", "atl", "tsb", "sleep_hours", "ramp", "hrv_drop_pct")
_STATE_KEYS: Final = (*_STATE_NUMBERS, "soreness", "ill_or_injured", "days_to_race")
_WORKOUT_KEYS: Final = ("id", "date", "sport", "type", "zone", "duration_min", "tss", "key_session")
_REFERENCE = re.compile(r"^\{\{\s*(item|sample)((?:\.[^.\[\]\s{}]+|\[\d+\])+)\s*\}\}$")
_SEGMENT = re.compile(r"\.([^.\[\]\s{}]+)|\[(\d+)\]")
_MISSING: Final = object()


class CriterionError(ValueError):
    """A ``polarize_coach`` testing criterion that does not fit; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _reference(spec: str) -> tuple[str, list[str | int]] | None:
    """``(namespace, path)`` of a whole-value template such as ``{{item.state}}``; ``None`` for a literal."""
    if "{{" not in spec:
        return None
    match = _REFERENCE.match(spec)
    if match is None:
        raise ValueError(f"{spec!r} must be one reference such as {{{{item.state}}}} (namespace item or sample)")
    path: list[str | int] = [int(index) if index else key for key, index in _SEGMENT.findall(match.group(2))]
    return match.group(1), path


def _resolve(spec: Any, item: Mapping[str, Any], sample: Mapping[str, Any]) -> Any:
    """The value a field names: the referenced item/sample value as it is (``None`` when missing), or the literal."""
    if not isinstance(spec, str):
        return spec
    ref = _reference(spec)
    if ref is None:
        return spec
    namespace, path = ref
    cur: Any = item if namespace == "item" else sample
    for seg in path:
        if isinstance(cur, Mapping):
            cur = cur.get(str(seg), _MISSING)
        elif isinstance(cur, list | tuple) and (isinstance(seg, int) or seg.isdigit()) and int(seg) < len(cur):
            cur = cur[int(seg)]
        else:
            cur = _MISSING
        if cur is _MISSING:
            return None
    return cur


def _decoded(value: Any, what: str) -> Any:
    """``value``, JSON-decoded when it is a string holding an object or a list."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"the item's {what} is not valid JSON: {err}") from None
    return value


def parse_state(value: Any) -> AthleteState:
    """An :class:`AthleteState` from its JSON object (the field names of the dataclass)."""
    value = _decoded(value, "state")
    if not isinstance(value, Mapping):
        raise ValueError(f"the item's state must be an object with {', '.join(_STATE_KEYS)}, got {value!r}")
    unknown = sorted(set(value) - set(_STATE_KEYS))
    if unknown:
        raise ValueError(f"the item's state has unknown fields {unknown} (known: {', '.join(_STATE_KEYS)})")
    for key in _STATE_NUMBERS:
        if key in value and (isinstance(value[key], bool) or not isinstance(value[key], int | float)):
            raise ValueError(f"the item's state.{key} must be a number, got {value[key]!r}")
    try:
        return AthleteState(**value)
    except TypeError as err:
        raise ValueError(f"the item's state is incomplete: {err}") from None


def parse_upcoming(value: Any) -> list[PlannedWorkout]:
    """The week's plan from its JSON list of workouts (the field names of :class:`PlannedWorkout`, ISO dates)."""
    value = _decoded(value, "upcoming")
    if not isinstance(value, list):
        raise ValueError(f"the item's upcoming must be a list of planned workouts, got {value!r}")
    plan: list[PlannedWorkout] = []
    for i, w in enumerate(value):
        if not isinstance(w, Mapping):
            raise ValueError(f"upcoming[{i}] must be an object")
        unknown = sorted(set(w) - set(_WORKOUT_KEYS))
        if unknown:
            raise ValueError(f"upcoming[{i}] has unknown fields {unknown} (known: {', '.join(_WORKOUT_KEYS)})")
        if w.get("type") not in WORKOUT_TYPES:
            raise ValueError(f"upcoming[{i}].type must be one of {', '.join(WORKOUT_TYPES)}, got {w.get('type')!r}")
        try:
            plan.append(PlannedWorkout(**{**w, "date": dt.date.fromisoformat(str(w.get("date")))}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"upcoming[{i}] is not a planned workout: {err}") from None
    return plan


def parse_today(value: Any) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"the item's today must be an ISO date, got {value!r}") from None


def _modification_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _week_direction(upcoming: Sequence[PlannedWorkout], modification: Modification, today: dt.date) -> str:
    before = weekly_tss(upcoming, today)
    after = weekly_tss(apply_modification(upcoming, modification), today)
    if after > before * (1 + TSS_TOLERANCE):
        return "up"
    if after < before * (1 - TSS_TOLERANCE):
        return "down"
    return "same"


class CoachGrader:
    """The ``polarize_coach`` grader (a ``coachforge.graders`` plug-in): grades a coach answer.

    Criterion::

        {"type": "polarize_coach", "name": "coach agrees",
         "check": "valid" | "safe" | "agrees",         # default "agrees"
         "agreement": "operations" | "direction",      # default "operations" (only for "agrees")
         "answer": "{{sample.output_text}}",           # where each input is (these are the defaults)
         "state": "{{item.state}}", "upcoming": "{{item.upcoming}}", "today": "{{item.today}}",
         "expected": "{{item.expected}}"}

    Each input is one whole-value reference (``{{item.a.b}}``, ``{{sample.x}}``, ``{{item.list[0]}}``)
    or a literal.  The item carries ``state`` (:class:`~polarize.rules.AthleteState` fields),
    ``upcoming`` (:class:`~polarize.rules.PlannedWorkout` fields, ISO ``date``), ``today`` and, if it
    likes, ``expected``: the rule-based modification (computed with :func:`~polarize.rules.recommend`
    when absent) or, for ``"direction"`` agreement, one of ``up``, ``down``, ``same``, ``not_up``.

    The checks build on one another, score 1 or 0:

    ``valid``   the answer is a workout modification (:func:`~polarize.schema.parse_modification`);
    ``safe``    valid, and every operation passes the safety rules (:func:`~polarize.rules.check_operation`);
    ``agrees``  safe, and the same decision as the rules: the same ``(op, workout_id)`` pairs
                (``operations``, :func:`~polarize.synthetic.matches_expected`) or the week's TSS
                moving the same way, within 1 % (``direction``, as ``coachforge coach eval`` scores).

    ``detail`` says why.  An answer that fails a check scores 0; an item without what the check
    needs raises ``ValueError`` (the evaluator records an errored grade).
    """

    name: str = GRADER_NAME

    def validate(self, criterion: Mapping[str, Any]) -> dict[str, Any]:
        known = {"type", "name", "check", "agreement", *GRADER_FIELDS}
        unknown = sorted(set(criterion) - known)
        if unknown:
            raise CriterionError(f"{GRADER_NAME} has no field {unknown[0]!r} (fields: {', '.join(sorted(known))})",
                                 unknown[0])
        check = criterion.get("check") or "agrees"
        if check not in CHECKS:
            raise CriterionError(f"check must be one of {', '.join(CHECKS)}, got {check!r}", "check")
        out: dict[str, Any] = {"type": criterion.get("type", GRADER_NAME)}
        if criterion.get("name") is not None:
            out["name"] = criterion["name"]
        out["check"] = check
        if check == "agrees":
            agreement = criterion.get("agreement") or "operations"
            if agreement not in AGREEMENTS:
                raise CriterionError(f"agreement must be one of {', '.join(AGREEMENTS)}, got {agreement!r}",
                                     "agreement")
            out["agreement"] = agreement
        elif criterion.get("agreement") is not None:
            raise CriterionError(f"agreement only applies to check 'agrees', not {check!r}", "agreement")
        for key, default in GRADER_FIELDS.items():
            spec = criterion.get(key)
            if spec is None:
                spec = default
            if isinstance(spec, str):
                try:
                    _reference(spec)
                except ValueError as err:
                    raise CriterionError(f"{key}: {err}", key) from None
            out[key] = spec
        return out

    def grade(self, criterion: Mapping[str, Any], item: Mapping[str, Any],
              sample: Mapping[str, Any]) -> tuple[float, bool, dict[str, Any]]:
        def field(key: str) -> Any:
            spec = criterion.get(key)
            return _resolve(GRADER_FIELDS[key] if spec is None else spec, item, sample)

        check = criterion.get("check") or "agrees"
        if check not in CHECKS:
            raise CriterionError(f"check must be one of {', '.join(CHECKS)}, got {check!r}", "check")
        answer = field("answer")
        detail: dict[str, Any] = {"check": check}
        try:
            modification = parse_modification("" if answer is None else _modification_text(answer))
        except InvalidModification as err:
            detail.update(valid=False, reason=str(err))
            return 0.0, False, detail
        detail.update(valid=True, operations=[[op.op, op.workout_id] for op in modification.operations])
        if check == "valid":
            return 1.0, True, detail

        state, upcoming, today = parse_state(field("state")), parse_upcoming(field("upcoming")), parse_today(
            field("today"))
        violations = check_operation(modification, state, upcoming, today)
        detail["safe"] = not violations
        if violations:
            detail["violations"] = [{"rule": v.rule, "operation_index": v.operation_index, "message": v.message}
                                    for v in violations]
            detail["reason"] = f"{len(violations)} safety rule violation(s): " + "; ".join(
                f"operation {v.operation_index} {v.rule}" for v in violations)
            return 0.0, False, detail
        if check == "safe":
            return 1.0, True, detail

        agreement = criterion.get("agreement") or "operations"
        raw = field("expected")
        direction_given = isinstance(raw, str) and raw in DIRECTIONS
        if raw is None:
            expected = recommend(state, upcoming, today)
            detail["expected_from"] = "rules"
        elif direction_given:
            if agreement != "direction":
                raise ValueError(f"the item's expected is the direction {raw!r}; use agreement 'direction'")
            expected = None
            detail["expected_from"] = "item"
        else:
            try:
                expected = parse_modification(_modification_text(raw))
            except InvalidModification as err:
                raise ValueError(f"the item's expected is not a workout modification: {err}") from None
            detail["expected_from"] = "item"

        if agreement == "operations":
            assert expected is not None
            agrees = matches_expected(modification, expected)
            detail["expected_operations"] = [[op.op, op.workout_id] for op in expected.operations]
        else:
            got = _week_direction(upcoming, modification, today)
            want = str(raw) if expected is None else _week_direction(upcoming, expected, today)
            agrees = got in ("down", "same") if want == "not_up" else got == want
            detail.update(direction=got, expected_direction=want)
        detail["agrees"] = agrees
        if not agrees:
            detail["reason"] = ("a different decision than the rules" if agreement == "operations" else
                                f"the week's load goes {detail['direction']}, expected {detail['expected_direction']}")
        return float(agrees), agrees, detail


def coach_eval_item(example: SyntheticExample) -> dict[str, Any]:
    """An eval data source item for :class:`CoachGrader` from a synthetic modification example.

    ``messages`` (the system and user turns the coach model is asked with), ``state``, ``upcoming``,
    ``today``, ``expected`` (the rule-based modification), and ``scenario`` / ``branch`` to slice by.
    """
    if example.expected is None:
        raise ValueError("a free-text example has no expected modification")
    return {
        "messages": [dict(m) for m in example.chat["messages"] if m["role"] != "assistant"],
        "state": dataclasses.asdict(example.state),
        "upcoming": [{**dataclasses.asdict(w), "date": w.date.isoformat()} for w in example.upcoming],
        "today": example.today.isoformat(),
        "expected": json.loads(example.expected.to_json()),
        "scenario": example.scenario,
        "branch": example.branch,
    }


COACH_FORMAT: Final = CoachFormat()
COACH_GENERATOR: Final = CoachGenerator()
COACH_GRADER: Final = CoachGrader()
