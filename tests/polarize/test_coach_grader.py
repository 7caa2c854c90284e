"""The ``polarize_coach`` grader plug-in: found through its entry point, used by the evaluator's
graders, and scoring hand-checked coach answers (valid / safe / agrees with the rules)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from typing import Any

import pytest

from coachforge_evaluator.graders import grade, validate_criteria
from coachforge_shared import plugins
from coachforge_shared.errors import InvalidArgument
from polarize.plugins import COACH_GRADER, CoachGrader, CriterionError, coach_eval_item
from polarize.synthetic import generate_examples

TODAY = "2025-06-02"  # a Monday
NORMAL = {"ctl": 60.0, "atl": 62.0, "tsb": -2.0, "sleep_hours": 7.5, "soreness": 3}
FATIGUED = {**NORMAL, "atl": 85.0, "tsb": -25.0}
PLAN = [  # 362 TSS in the week
    {"id": "w1", "date": "2025-06-02", "sport": "run", "type": "endurance", "zone": 2, "duration_min": 60, "tss": 50},
    {"id": "w2", "date": "2025-06-03", "sport": "run", "type": "intervals", "zone": 4, "duration_min": 60, "tss": 85},
    {"id": "w3", "date": "2025-06-04", "sport": "run", "type": "endurance", "zone": 2, "duration_min": 50, "tss": 42},
    {"id": "w4", "date": "2025-06-05", "sport": "run", "type": "tempo", "zone": 3, "duration_min": 60, "tss": 70},
    {"id": "w5", "date": "2025-06-06", "sport": "run", "type": "recovery", "zone": 1, "duration_min": 40, "tss": 20},
    {"id": "w6", "date": "2025-06-07", "sport": "run", "type": "long", "zone": 2, "duration_min": 110, "tss": 95},
]


def item(state: dict[str, Any] = NORMAL, **extra: Any) -> dict[str, Any]:
    return {"state": state, "upcoming": PLAN, "today": TODAY, **extra}


def op(kind: str, workout: str, **fields: Any) -> dict[str, Any]:
    return {"op": kind, "workout_id": workout, **fields, "reason": "because", "confidence": 0.7}


def answer(*ops: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps({"operations": list(ops), "message": "Here is your week."})
    return {"output_text": text, "output_json": json.loads(text), "model": "m"}


KEEP = answer()                                                               # the rules' answer when normal
EASIER_W2 = answer(op("reduce_intensity", "w2", new_zone=3))                  # 85 -> 66.1 TSS: -5 %, safe
LONGER_W1 = answer(op("change_duration", "w1", new_duration_min=65))          # 50 -> 54.2 TSS: +1.2 %
MOVE_W5 = answer(op("move_workout", "w5", new_date="2025-06-08"))             # Fri -> Sun, same TSS
HUGE_W6 = answer(op("change_duration", "w6", new_duration_min=200))           # +77.7 TSS: +21 % > 15 %
UNKNOWN = answer(op("add_rest_day", "w99"))
TEXT = {"output_text": "Take it easy this week.", "output_json": None, "model": "m"}
OUT_OF_SCHEMA = {"output_text": json.dumps({"operations": [op("reduce_intensity", "w2", new_zone=7)],
                                            "message": "x"}), "output_json": None, "model": "m"}


def graded(sample: dict[str, Any], it: dict[str, Any], **criterion: Any) -> tuple[float, bool, dict[str, Any]]:
    crit = COACH_GRADER.validate({"type": "polarize_coach", **criterion})
    result: tuple[float, bool, dict[str, Any]] = COACH_GRADER.grade(crit, it, sample)
    return result


def test_the_grader_is_registered_as_an_entry_point() -> None:
    assert ("polarize_coach", "polarize.plugins:COACH_GRADER") in {
        (ep.name, ep.value) for ep in entry_points(group="coachforge.graders")}
    plugins.clear_cache()
    assert plugins.grader("polarize_coach") is COACH_GRADER
    assert isinstance(COACH_GRADER, plugins.Grader)


def test_valid() -> None:
    assert graded(KEEP, {}, check="valid")[:2] == (1.0, True)  # needs nothing from the item
    fenced = {"output_text": "```json\n" + KEEP["output_text"] + "\n```"}
    assert graded(fenced, {}, check="valid")[:2] == (1.0, True)
    for bad in (TEXT, OUT_OF_SCHEMA, {"output_text": ""}, {}):
        score, passed, detail = graded(bad, {}, check="valid")
        assert (score, passed, detail["valid"]) == (0.0, False, False)
        assert "invalid workout modification" in detail["reason"]
    assert "new_zone" in graded(OUT_OF_SCHEMA, {}, check="valid")[2]["reason"]


@pytest.mark.parametrize(("sample", "safe", "rule"), [
    (KEEP, True, None),
    (EASIER_W2, True, None),
    (LONGER_W1, True, None),
    (MOVE_W5, True, None),
    (HUGE_W6, False, "weekly_tss_band"),
    (UNKNOWN, False, "unknown_workout"),
    (TEXT, False, None),
])
def test_safe(sample: dict[str, Any], safe: bool, rule: str | None) -> None:
    score, passed, detail = graded(sample, item(), check="safe")
    assert (score, passed) == (float(safe), safe)
    if rule is not None:
        assert detail["valid"] is True and detail["safe"] is False
        assert [v["rule"] for v in detail["violations"]] == [rule] and rule in detail["reason"]


def test_no_extra_load_when_fatigued() -> None:
    score, passed, detail = graded(LONGER_W1, item(FATIGUED), check="safe")
    assert (score, passed) == (0.0, False)
    assert detail["violations"][0]["rule"] == "no_increase_when_fatigued"


@pytest.mark.parametrize(("sample", "operations", "direction"), [
    (KEEP, True, True),         # the rules keep the plan of a normal athlete
    (EASIER_W2, False, False),  # down, not same
    (LONGER_W1, False, False),  # up
    (MOVE_W5, False, True),     # an operation, but the week's load stays the same
    (HUGE_W6, False, False),    # unsafe: never agrees
    (TEXT, False, False),       # invalid: never agrees
])
def test_agrees_with_the_rules_for_a_normal_athlete(sample: dict[str, Any], operations: bool,
                                                    direction: bool) -> None:
    by_ops = graded(sample, item())
    assert by_ops[:2] == (float(operations), operations)
    by_direction = graded(sample, item(), agreement="direction")
    assert by_direction[:2] == (float(direction), direction)
    if by_ops[2].get("safe"):
        assert by_ops[2]["expected_from"] == "rules" and by_ops[2]["expected_operations"] == []
        assert by_direction[2]["expected_direction"] == "same"


def test_agrees_with_the_rules_for_a_fatigued_athlete() -> None:
    # the rules reduce the first hard session (w2, intervals Z4) to Z2: one red flag, not severe
    score, passed, detail = graded(EASIER_W2, item(FATIGUED))  # Z3 instead of Z2: same (op, workout)
    assert (score, passed) == (1.0, True)
    assert detail["expected_operations"] == [["reduce_intensity", "w2"]]
    assert graded(EASIER_W2, item(FATIGUED), agreement="direction")[2]["direction"] == "down"
    assert graded(KEEP, item(FATIGUED))[:2] == (0.0, False)
    assert graded(KEEP, item(FATIGUED), agreement="direction")[2]["reason"] == (
        "the week's load goes same, expected down")


def test_the_expected_answer_can_come_from_the_item() -> None:
    expected = json.loads(MOVE_W5["output_text"])
    assert graded(MOVE_W5, item(expected=expected))[2]["expected_from"] == "item"
    assert graded(MOVE_W5, item(expected=expected))[:2] == (1.0, True)
    assert graded(KEEP, item(expected=json.dumps(expected)))[:2] == (0.0, False)
    # a direction as the expectation, as the coach eval's scenarios have them
    assert graded(KEEP, item(expected="not_up"), agreement="direction")[:2] == (1.0, True)
    assert graded(EASIER_W2, item(expected="not_up"), agreement="direction")[:2] == (1.0, True)
    assert graded(LONGER_W1, item(expected="not_up"), agreement="direction")[:2] == (0.0, False)


def test_fields_can_be_read_from_other_places() -> None:
    nested = {"athlete": {"now": json.dumps(NORMAL), "plan": PLAN}, "days": ["2025-06-01", TODAY]}
    crit = {"state": "{{item.athlete.now}}", "upcoming": "{{ item.athlete.plan }}", "today": "{{item.days[1]}}",
            "answer": "{{sample.output_json}}"}
    assert graded(MOVE_W5, nested, check="safe", **crit)[:2] == (1.0, True)
    assert graded(HUGE_W6, nested, check="safe", **crit)[:2] == (0.0, False)
    assert graded(KEEP, {"state": NORMAL, "upcoming": PLAN}, check="safe", today=TODAY)[:2] == (1.0, True)


@pytest.mark.parametrize(("it", "words"), [
    ({"upcoming": PLAN, "today": TODAY}, "state"),
    ({**item(), "state": {**NORMAL, "mood": "great"}}, "unknown fields"),
    ({**item(), "state": {**NORMAL, "tsb": "low"}}, "state.tsb"),
    ({**item(), "state": "{not json"}, "not valid JSON"),
    ({**item(), "upcoming": [{**PLAN[0], "type": "yoga"}]}, "upcoming[0].type"),
    ({**item(), "today": "next monday"}, "ISO date"),
    ({**item(), "expected": {"operations": "none"}}, "expected is not a workout modification"),
    ({**item(), "expected": "down"}, "agreement 'direction'"),
])
def test_an_item_without_what_the_check_needs_is_an_error_not_a_fail(it: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        graded(KEEP, it)


def test_validate_fills_defaults_and_names_the_bad_field() -> None:
    assert COACH_GRADER.validate({"type": "polarize_coach", "name": "coach"}) == {
        "type": "polarize_coach", "name": "coach", "check": "agrees", "agreement": "operations",
        "answer": "{{sample.output_text}}", "state": "{{item.state}}", "upcoming": "{{item.upcoming}}",
        "today": "{{item.today}}", "expected": "{{item.expected}}"}
    assert "agreement" not in COACH_GRADER.validate({"type": "polarize_coach", "check": "safe"})
    for criterion, param in [({"check": "nice"}, "check"), ({"agreement": "vibes"}, "agreement"),
                             ({"check": "valid", "agreement": "direction"}, "agreement"),
                             ({"state": "state: {{item.state}}"}, "state"), ({"today": "{{today}}"}, "today"),
                             ({"expectd": "{{item.x}}"}, "expectd")]:
        with pytest.raises(CriterionError) as err:
            COACH_GRADER.validate({"type": "polarize_coach", **criterion})
        assert err.value.param == param


def test_the_evaluator_validates_and_grades_with_it() -> None:
    plugins.clear_cache()
    criteria = validate_criteria([
        {"type": "polarize_coach", "check": "valid"},
        {"type": "polarize_coach", "check": "safe"},
        {"type": "polarize_coach", "name": "agrees", "agreement": "direction"},
    ])
    assert [c["name"] for c in criteria] == ["polarize_coach", "polarize_coach_2", "agrees"]
    results = [grade(c, item(), MOVE_W5, None) for c in criteria]
    assert [(r.type, r.score, r.passed, r.error) for r in results] == [("polarize_coach", 1.0, True, None)] * 3
    unsafe = grade(criteria[2], item(), HUGE_W6, None)
    assert (unsafe.score, unsafe.passed) == (0.0, False) and unsafe.detail is not None
    assert unsafe.detail["violations"][0]["rule"] == "weekly_tss_band"
    errored = grade(criteria[1], {"today": TODAY}, MOVE_W5, None)  # the item lacks the state
    assert errored.score is None and errored.passed is None and errored.error is not None
    with pytest.raises(InvalidArgument) as err:
        validate_criteria([{"type": "json_check"}, {"type": "polarize_coach", "check": "kind"}])
    assert err.value.param == "testing_criteria[1].check"


def test_synthetic_examples_become_items_their_rule_answers_pass() -> None:
    examples = generate_examples(24, seed=11)
    modification_examples = [e for e in examples if e.expected is not None]
    assert {e.scenario for e in modification_examples} == {"ill", "fatigued", "fresh", "normal", "taper"}
    grader = CoachGrader()
    criteria = [grader.validate({"type": "polarize_coach", "check": check, **extra})
                for check, extra in [("valid", {}), ("safe", {}), ("agrees", {}),
                                     ("agrees", {"agreement": "direction"})]]
    for example in modification_examples:
        it = json.loads(json.dumps(coach_eval_item(example)))  # it survives being stored as JSON
        assert [m["role"] for m in it["messages"]] == ["system", "user"]
        sample = {"output_text": example.answer, "output_json": json.loads(example.answer), "model": "m"}
        for crit in criteria:
            assert grader.grade(crit, it, sample)[:2] == (1.0, True), (example.scenario, crit)
        without_expected = {k: v for k, v in it.items() if k != "expected"}  # the rules recompute it
        assert grader.grade(criteria[2], without_expected, sample)[:2] == (1.0, True)
    free_text = next(e for e in examples if e.expected is None)
    with pytest.raises(ValueError, match="free-text"):
        coach_eval_item(free_text)
