"""The workout-modification schema: round trip, parse errors and the exported JSON schema."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from polarize.schema import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    AddRestDay,
    ChangeDuration,
    InvalidModification,
    Modification,
    MoveWorkout,
    ReduceIntensity,
    ReplaceWithRecovery,
    SwapWorkout,
    modification_json_schema,
    parse_modification,
    response_format,
)
from polarize.synthetic import generate_examples


def _all_ops() -> Modification:
    return Modification(
        operations=[
            ReduceIntensity(workout_id="w1", new_zone=2, reason="TSB -24", confidence=0.8),
            ChangeDuration(workout_id="w2", new_duration_min=75, reason="fresh", confidence=0.6),
            SwapWorkout(workout_id="w3", new_type="endurance", reason="soreness 8/10", confidence=0.7),
            MoveWorkout(workout_id="w4", new_date=dt.date(2025, 3, 15), reason="HRV -22%", confidence=0.7),
            AddRestDay(workout_id="w5", reason="ill", confidence=0.9),
            ReplaceWithRecovery(workout_id="w6", new_duration_min=40, reason="sleep 5.1h", confidence=0.85),
        ],
        message="Easy week: recover first.",
    )


def test_version() -> None:
    assert SCHEMA_VERSION == "1"
    assert SCHEMA_NAME == "workout_modification"


def test_round_trip_every_operation() -> None:
    mod = _all_ops()
    text = mod.model_dump_json(exclude_none=True)
    assert parse_modification(text) == mod
    assert mod.to_json() == text
    # compact: no whitespace after separators, no nulls
    assert text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    assert "null" not in text
    data = json.loads(text)
    assert [op["op"] for op in data["operations"]] == [
        "reduce_intensity",
        "change_duration",
        "swap_workout",
        "move_workout",
        "add_rest_day",
        "replace_with_recovery",
    ]
    # op comes first and reason/confidence last in every operation: one shape to learn
    for op in data["operations"]:
        keys = list(op)
        assert keys[:2] == ["op", "workout_id"]
        assert keys[-2:] == ["reason", "confidence"]
    assert data["operations"][3]["new_date"] == "2025-03-15"


def test_empty_operations_is_valid() -> None:
    mod = parse_modification('{"operations":[],"message":"Stick to the plan."}')
    assert mod.operations == []
    assert mod.message == "Stick to the plan."


def test_parse_tolerates_whitespace_and_code_fence() -> None:
    text = '\n```json\n{"operations": [], "message": "ok"}\n```\n'
    assert parse_modification(text).message == "ok"


def _error(text: str) -> InvalidModification:
    with pytest.raises(InvalidModification) as info:
        parse_modification(text)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("invalid workout modification: ")
    return info.value


def test_parse_error_not_json() -> None:
    err = _error("Sure! Here is your plan")
    assert "JSON" in str(err) or "json" in str(err)
    assert err.errors


def test_parse_error_empty() -> None:
    assert "empty" in str(_error("   "))


def test_parse_error_names_the_field() -> None:
    err = _error(
        '{"operations":[{"op":"reduce_intensity","workout_id":"w1","new_zone":7,"reason":"x","confidence":0.5}],'
        '"message":"m"}'
    )
    assert "operations.0.reduce_intensity.new_zone" in str(err)
    assert "less than or equal to 5" in str(err)
    assert err.errors == [("operations.0.reduce_intensity.new_zone", "Input should be less than or equal to 5")]


def test_parse_error_unknown_op() -> None:
    err = _error('{"operations":[{"op":"delete_week","workout_id":"w1","reason":"x","confidence":0.5}],"message":"m"}')
    assert "operations.0" in str(err)
    assert "delete_week" in str(err)


def test_parse_error_extra_field_and_missing_message() -> None:
    err = _error('{"operations":[{"op":"add_rest_day","workout_id":"w1","reason":"x","confidence":0.5,"zone":2}]}')
    locs = {loc for loc, _ in err.errors}
    assert "operations.0.add_rest_day.zone" in locs
    assert "message" in locs
    assert "Extra inputs are not permitted" in str(err)
    assert "Field required" in str(err)


def test_parse_error_message_too_long_and_confidence_range() -> None:
    err = _error(json.dumps({"operations": [], "message": "x" * 281}))
    assert "message" in str(err) and "280" in str(err)
    err = _error('{"operations":[{"op":"add_rest_day","workout_id":"w1","reason":"x","confidence":1.5}],"message":"m"}')
    assert "confidence" in str(err)


def test_parse_error_bad_date() -> None:
    err = _error(
        '{"operations":[{"op":"move_workout","workout_id":"w1","new_date":"2025-13-40","reason":"x",'
        '"confidence":0.5}],"message":"m"}'
    )
    assert "new_date" in str(err)


def _walk(node: Any) -> list[Any]:
    out = [node]
    if isinstance(node, dict):
        for value in node.values():
            out.extend(_walk(value))
    elif isinstance(node, list):
        for item in node:
            out.extend(_walk(item))
    return out


def test_json_schema_is_self_contained() -> None:
    schema = modification_json_schema()
    json.dumps(schema)  # plain JSON
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"operations", "message"}
    defs = schema["$defs"]
    nodes = _walk(schema)
    refs = [n["$ref"] for n in nodes if isinstance(n, dict) and "$ref" in n]
    assert len(refs) == 6
    for ref in refs:
        assert ref.startswith("#/$defs/")
        assert ref.removeprefix("#/$defs/") in defs
    for node in nodes:
        if isinstance(node, dict):
            assert "discriminator" not in node and "oneOf" not in node
            if node.get("type") == "object":
                assert node["additionalProperties"] is False
                assert set(node["required"]) == set(node["properties"])
    # a fresh copy each call
    schema["title"] = "changed"
    assert modification_json_schema()["title"] == SCHEMA_NAME


def test_response_format_shape() -> None:
    rf = response_format()
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "workout_modification"
    assert rf["json_schema"]["schema"] == modification_json_schema()


def test_rule_answers_validate_against_json_schema() -> None:
    answers = [json.loads(e.chat["messages"][2]["content"]) for e in generate_examples(40, seed=11)
               if e.kind == "modification"]
    answers.append(json.loads(_all_ops().to_json()))
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is optional
        pytest.skip("jsonschema not installed")
    schema = modification_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for answer in answers:
        validator.validate(answer)
    bad = {
        "operations": [{"op": "reduce_intensity", "workout_id": "w1", "new_zone": 7, "reason": "x", "confidence": 1}],
        "message": "m",
    }
    assert not validator.is_valid(bad)
    assert not validator.is_valid({"operations": [], "message": "m", "extra": 1})
    assert not validator.is_valid({"message": "m"})


def test_json_schema_compiles_for_constrained_decoding() -> None:
    """vLLM's default structured-output backend must accept the schema as is."""
    xgrammar = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string

    grammar = xgrammar.Grammar.from_json_schema(json.dumps(modification_json_schema()))
    assert _is_grammar_accept_string(grammar, _all_ops().to_json())
    assert not _is_grammar_accept_string(
        grammar,
        '{"operations":[{"op":"reduce_intensity","workout_id":"w1","new_zone":7,"reason":"x","confidence":0.5}],'
        '"message":"m"}',
    )
