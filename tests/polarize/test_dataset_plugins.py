"""Polarize's dataset plug-ins: registered as entry points, found by the registry, used by the
dataset pipeline and the synthetic endpoint exactly as the built-in coach support was."""

from __future__ import annotations

import ast
import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from coachforge_dataset import service
from coachforge_dataset.pipeline import FORMATS, Example, Message, detect_format, parse_line, quality
from coachforge_dataset.pipeline.clean import quality_reason
from coachforge_shared import plugins
from coachforge_shared.errors import NotFound
from polarize.plugins import COACH_FORMAT, COACH_GENERATOR, coach_user_text
from polarize.prompt import SYSTEM_PROMPT
from polarize.synthetic import generate_examples, to_jsonl

REPO = Path(__file__).resolve().parents[2]
MOD = {"operations": [{"op": "reduce_intensity", "workout_id": "w3", "new_zone": 2, "reason": "TSB -24",
                       "confidence": 0.8}], "message": "Easy today, you are tired."}


def test_the_registry_finds_the_coach_format_and_generator_through_entry_points() -> None:
    assert {(ep.name, ep.value) for ep in entry_points(group="coachforge.dataset_formats")} >= {
        ("coach", "polarize.plugins:COACH_FORMAT")}
    assert {(ep.name, ep.value) for ep in entry_points(group="coachforge.synthetic_generators")} >= {
        ("coach", "polarize.plugins:COACH_GENERATOR")}
    plugins.clear_cache()
    assert plugins.dataset_format("coach") is COACH_FORMAT
    assert plugins.synthetic_generator("coach") is COACH_GENERATOR
    assert isinstance(COACH_FORMAT, plugins.ConversationFormat)
    assert isinstance(COACH_GENERATOR, plugins.SyntheticGenerator)


def test_an_unknown_name_is_a_typed_error() -> None:
    with pytest.raises(NotFound) as err:
        plugins.dataset_format("polarise")
    assert err.value.param == "format" and "installed: coach" in err.value.message
    with pytest.raises(NotFound) as err:
        plugins.synthetic_generator("avatar")
    assert err.value.param == "generator" and err.value.code == "generator_not_found"
    with pytest.raises(NotFound):
        service.synthetic_jsonl(1, 0, generator="avatar")


def test_the_pipeline_knows_coach_after_the_generic_formats() -> None:
    assert FORMATS == ("openai", "sharegpt", "alpaca", "chatml", "coach")
    # coach is recognised after openai and sharegpt but before alpaca and chatml, as before
    assert detect_format({"modification": MOD, "instruction": "x", "output": "y"}) == "coach"
    assert detect_format({"messages": [], "modification": MOD}) == "openai"
    assert detect_format({"conversations": [], "athlete_context": "c"}) == "sharegpt"
    assert detect_format({"text": "<|im_start|>user\nq<|im_end|>", "athlete_context": "c"}) == "coach"


def test_coach_lines_convert_and_report_issues_as_before() -> None:
    ex, issues = parse_line(2, json.dumps({"athlete_context": "ctx", "question": " Why  ?", "modification": MOD})
                            .encode())
    assert issues == [] and ex is not None and ex.source_format == "coach"
    assert [m.role for m in ex.messages] == ["system", "user", "assistant"]
    assert ex.messages[0].content == SYSTEM_PROMPT and ex.messages[1].content == coach_user_text("ctx", "Why ?")
    ex, issues = parse_line(7, json.dumps({"athlete_context": "", "question": 3, "modification": []}).encode())
    assert ex is None
    assert [str(i) for i in issues] == ["line 7: athlete_context: missing or empty",
                                        "line 7: question: must be a string or null",
                                        "line 7: modification: missing or not an object"]
    _, issues = parse_line(1, json.dumps({"athlete_context": "c", "modification": "nope"}).encode())
    assert issues and all(i.reason.startswith("invalid workout modification: ") for i in issues)
    # a coach line in a file declared openai: the openai issues, then the hint
    _, issues = parse_line(1, json.dumps({"athlete_context": "c", "modification": MOD}).encode(), "openai")
    assert str(issues[-1]) == "line 1: line: looks like coach, but the file is openai"


def test_answers_are_checked_as_workout_modifications() -> None:
    def ex(answer: str, fmt: str = "openai") -> Example:
        return Example((Message("user", "ctx " * 20), Message("assistant", answer)), fmt)

    bad = quality(ex(json.dumps({"operations": [{"op": "fly"}], "message": "x"})))
    assert bad.schema_valid is False and bad.answer_schema == "workout modification"
    assert quality_reason(bad, 0.5) == "score 0.00 < 0.50; invalid workout modification"
    assert quality(ex("Rest well.", "coach")).schema_valid is False
    assert quality(ex(json.dumps(MOD), "coach")).schema_valid is True
    plain = quality(ex("Rest well."))
    assert plain.schema_valid is None and plain.answer_schema is None


def test_synthetic_data_is_the_generator_output_byte_for_byte() -> None:
    assert service.synthetic_jsonl(25, 9) == to_jsonl(generate_examples(25, 9))
    assert COACH_GENERATOR.generate(3, 1) == [e.chat for e in generate_examples(3, 1)]


def test_the_dataset_service_imports_nothing_of_polarize() -> None:
    for path in (REPO / "services" / "dataset").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "polarize" or n.startswith("polarize.") for n in names), f"{path} imports {names}"
