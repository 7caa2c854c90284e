"""Testing criteria (OpenAI Evals graders): validation, templates and every grader against
hand-checked answers, including wrong and malformed ones (those fail or error, never pass)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from coachforge_evaluator.graders import GradeResult, compile_template, grade, render, validate_criteria
from coachforge_shared import plugins
from coachforge_shared.errors import InvalidArgument, NotFound

SAMPLE = {"output_text": "The capital of France is Paris.", "output_json": None, "model": "m"}
ITEM = {"city": "Paris", "country": {"name": "France", "codes": ["FR", "FRA"]}, "n": 3, "flag": True,
        "none": None, "odd key": "x y", "payload": {"a": 1, "b": [1, 2]}}


def one(criterion: dict[str, Any]) -> dict[str, Any]:
    return validate_criteria([criterion])[0]


def run(criterion: dict[str, Any], sample: dict[str, Any] | None = None, item: dict[str, Any] | None = None,
        judge: Any = None) -> GradeResult:
    return grade(one(criterion), ITEM if item is None else item, SAMPLE if sample is None else sample, judge)


def text(answer: str) -> dict[str, Any]:
    try:
        parsed = json.loads(answer)
    except ValueError:
        parsed = None
    return {"output_text": answer, "output_json": parsed, "model": "m"}


def invalid(criteria: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        validate_criteria(criteria)
    return err.value


# --------------------------------------------------------------------------- templates


def test_render_substitutes_item_and_sample_paths() -> None:
    assert render("{{item.city}}", ITEM, SAMPLE) == "Paris"
    assert render("Is {{ sample.output_text }} about {{item.country.name}}?", ITEM, SAMPLE) == (
        "Is The capital of France is Paris. about France?")
    assert render("{{item.country.codes[1]}}/{{item.country.codes.0}}", ITEM, None) == "FRA/FR"
    assert render('{{ item["odd key"] }}|{{item[\'odd key\']}}', ITEM, None) == "x y|x y"
    assert render("no templates here { } }}", ITEM, None) == "no templates here { } }}"


def test_render_encodes_non_strings_as_json_and_missing_paths_as_empty() -> None:
    assert render("{{item.n}} {{item.flag}}", ITEM, None) == "3 true"
    assert render("{{item.payload}}", ITEM, None) == '{"a": 1, "b": [1, 2]}'
    assert render("{{item.country.codes}}", ITEM, None) == '["FR", "FRA"]'
    assert render("[{{item.missing}}][{{item.country.codes[5]}}][{{item.city.x}}][{{item.none}}]", ITEM, None) == (
        "[][][][]")
    assert render("{{sample.output_json.a}}", ITEM, text('{"a": "é"}')) == "é"
    assert render("{{sample.output_text}}", ITEM, None) == ""  # no sample yet


@pytest.mark.parametrize("template", ["{{item.city", "{{other.x}}", "{{item}}", "{{ }}", "{{item.a b}}",
                                      "{{item..a}}", "{{item[x]}}"])
def test_render_refuses_malformed_templates(template: str) -> None:
    with pytest.raises(InvalidArgument):
        render(template, ITEM, SAMPLE)


def test_templates_are_compiled_once() -> None:
    assert compile_template("a {{item.b}} c") is compile_template("a {{item.b}} c")
    assert compile_template("a {{item.b}} c") == ("a ", ("item", ("b",)), " c")


# --------------------------------------------------------------------------- string_check


@pytest.mark.parametrize(("operation", "answer", "reference", "passed"), [
    ("eq", "Paris", "Paris", True),
    ("eq", "paris", "Paris", False),        # case-sensitive
    ("eq", "Paris ", "Paris", False),       # no trimming
    ("ne", "Lyon", "Paris", True),
    ("ne", "Paris", "Paris", False),
    ("like", "It is Paris.", "Paris", True),  # contains
    ("like", "It is paris.", "Paris", False),
    ("ilike", "IT IS PARIS.", "Paris", True),
    ("ilike", "It is Lyon.", "Paris", False),
    ("like", "", "Paris", False),
])
def test_string_check(operation: str, answer: str, reference: str, passed: bool) -> None:
    result = run({"type": "string_check", "name": "city", "input": "{{sample.output_text}}",
                  "reference": reference, "operation": operation}, text(answer))
    assert result == GradeResult(name="city", type="string_check", score=1.0 if passed else 0.0, passed=passed)


def test_string_check_reads_the_reference_from_the_item() -> None:
    crit = {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.city}}",
            "operation": "like"}
    assert run(crit).passed is True
    assert run(crit, item={"city": "Lyon"}).passed is False
    assert run(crit, item={}).passed is True  # a missing reference renders as "", which every text contains


# --------------------------------------------------------------------------- text_similarity


def similarity(metric: str, answer: str, reference: str, threshold: float = 0.5) -> GradeResult:
    return run({"type": "text_similarity", "input": "{{sample.output_text}}", "reference": reference,
                "evaluation_metric": metric, "pass_threshold": threshold}, text(answer))


def test_fuzzy_match_is_rapidfuzz_wratio_with_its_default_processor() -> None:
    # default_process lowercases, turns punctuation into spaces and trims: case alone costs nothing
    assert similarity("fuzzy_match", "HELLO World", "hello world").score == pytest.approx(1.0)
    # "hello  world" (comma -> a second space) against "hello world": one insertion in 23 characters
    assert similarity("fuzzy_match", "Hello, World!", "hello world").score == pytest.approx(22 / 23)
    # one substitution in four characters: indel distance 2 of 8 characters -> 1 - 2/8
    assert similarity("fuzzy_match", "abcd", "abce").score == pytest.approx(0.75)
    assert similarity("fuzzy_match", "abcd", "abce", threshold=0.75).passed is True
    assert similarity("fuzzy_match", "abcd", "abce", threshold=0.76).passed is False
    assert similarity("fuzzy_match", "", "abc").score == 0.0
    assert similarity("fuzzy_match", "abcd", "abce").detail == {"evaluation_metric": "fuzzy_match"}


def test_bleu_is_sentence_bleu_scaled_to_one() -> None:
    assert similarity("bleu", "the cat sat on the mat", "the cat sat on the mat").score == pytest.approx(1.0)
    # by hand: precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty) -> (1/12) ** (1/4)
    got = similarity("bleu", "the cat sat on the mat", "the cat sat on a mat")
    assert got.score == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    assert got.passed is True
    assert similarity("bleu", "dogs bark loudly", "the cat sat on a mat").score == 0.0


def test_gleu_is_the_minimum_of_ngram_precision_and_recall() -> None:
    # hypothesis n-grams (n<=4): the, cat, "the cat" (3); reference: 6; all 3 match -> min(3/3, 3/6)
    assert similarity("gleu", "the cat", "the cat sat").score == pytest.approx(0.5)
    assert similarity("gleu", "the cat sat", "the cat sat").score == pytest.approx(1.0)


@pytest.mark.parametrize(("metric", "expected"), [
    ("rouge_1", 0.8),      # P 2/2, R 2/3 -> F 0.8
    ("rouge_2", 2 / 3),    # bigrams: P 1/1, R 1/2 -> F 2/3
    ("rouge_3", 0.0),      # the answer has no trigram
    ("rouge_l", 0.8),      # LCS 2: P 2/2, R 2/3
])
def test_rouge_is_the_f_measure(metric: str, expected: float) -> None:
    assert similarity(metric, "The cat", "the cat sat").score == pytest.approx(expected)


def test_rouge_4_and_5() -> None:
    assert similarity("rouge_5", "a b c d e", "a b c d e").score == pytest.approx(1.0)
    assert similarity("rouge_4", "a b c d e", "a b c d x").score == pytest.approx(0.5)  # 1 of 2 four-grams


# --------------------------------------------------------------------------- json_check


def test_json_check_without_schema() -> None:
    crit = {"type": "json_check", "name": "json"}
    assert run(crit, text('{"a": 1}')).score == 1.0
    assert run(crit, text(" [1, 2] ")).passed is True
    bad = run(crit, text('{"a": 1'))
    assert (bad.score, bad.passed, bad.error) == (0.0, False, None)
    assert bad.detail is not None and bad.detail["valid_json"] is False and "not JSON" in bad.detail["reason"]
    assert run(crit, text('```json\n{"a": 1}\n```')).passed is False  # a fenced answer is not JSON
    assert run(crit, text("")).passed is False


def test_json_check_with_schema() -> None:
    crit = {"type": "json_check", "schema": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "population": {"type": "integer", "minimum": 0}}}}
    assert run(crit, text('{"city": "Paris", "population": 2100000}')).passed is True
    missing = run(crit, text('{"population": 3}'))
    assert missing.passed is False and missing.detail is not None
    assert missing.detail["schema_valid"] is False and "'city' is a required property" in missing.detail["reason"]
    negative = run(crit, text('{"city": "Paris", "population": -1}'))
    assert negative.passed is False and negative.detail is not None and "/population" in negative.detail["reason"]
    # any template can be the input; a non-string value is checked as its JSON
    on_item = {"type": "json_check", "input": "{{item.payload}}", "schema": {"type": "object", "required": ["a"]}}
    assert run(on_item).passed is True


# --------------------------------------------------------------------------- model graders


class FakeJudge:
    """Stands in for the served judge model: records the calls, answers what it was given."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, list[dict[str, str]], dict[str, Any], dict[str, Any]]] = []

    def __call__(self, model: str, messages: list[dict[str, str]], response_format: dict[str, Any],
                 sampling_params: dict[str, Any]) -> str:
        self.calls.append((model, messages, response_format, sampling_params))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


SCORE = {"type": "score_model", "name": "judge", "model": "judge-model",
         "input": [{"role": "developer", "content": "Grade the answer from 0 to 1."},
                   {"role": "user", "content": "Reference: {{item.city}}. Answer: {{sample.output_text}}"}],
         "sampling_params": {"temperature": 0, "seed": 7}}


def test_the_judge_gets_the_token_limit_under_the_platforms_name() -> None:
    """OpenAI's graders spell it max_completions_tokens; the judge request takes max_completion_tokens."""
    judge = FakeJudge(verdict(0.8))
    run({**SCORE, "sampling_params": {"temperature": 0, "max_completions_tokens": 64, "reasoning_effort": "low"}},
        judge=judge)
    assert judge.calls[0][3] == {"temperature": 0, "max_completion_tokens": 64}


def verdict(result: Any) -> str:
    return json.dumps({"steps": [{"description": "compare", "conclusion": "same city"}], "result": result})


def test_score_model_asks_the_judge_with_a_strict_schema_and_the_rendered_messages() -> None:
    judge = FakeJudge(verdict(0.8))
    result = run(SCORE, judge=judge)
    assert (result.score, result.passed, result.error) == (0.8, True, None)
    assert result.detail == {"result": 0.8, "steps": [{"description": "compare", "conclusion": "same city"}]}
    model, messages, response_format, sampling = judge.calls[0]
    assert model == "judge-model" and sampling == {"temperature": 0, "seed": 7}
    assert messages == [{"role": "system", "content": "Grade the answer from 0 to 1."},
                        {"role": "user", "content": "Reference: Paris. Answer: The capital of France is Paris."}]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    assert schema["required"] == ["steps", "result"] and schema["properties"]["result"] == {"type": "number"}
    assert schema["properties"]["steps"]["items"]["required"] == ["description", "conclusion"]
    assert schema["additionalProperties"] is False


def test_score_model_threshold_range_and_clamping() -> None:
    assert run(SCORE, judge=FakeJudge(verdict(0.3))).passed is False  # default threshold: middle of [0, 1]
    assert run(SCORE, judge=FakeJudge(verdict(0.5))).passed is True
    clamped = run(SCORE, judge=FakeJudge(verdict(7)))
    assert clamped.score == 1.0 and clamped.detail is not None and clamped.detail["clamped_to_range"] == [0.0, 1.0]
    ten = {**SCORE, "range": [1, 10], "pass_threshold": 7}
    assert run(ten, judge=FakeJudge(verdict(7))).passed is True
    low = run(ten, judge=FakeJudge(verdict(6.5)))
    assert (low.score, low.passed) == (6.5, False)
    assert run(ten, judge=FakeJudge(verdict(-3))).score == 1.0
    fenced = run(SCORE, judge=FakeJudge("```json\n" + verdict(1) + "\n```"))
    assert fenced.passed is True


@pytest.mark.parametrize("answer", [
    "I would say 0.8",                                 # not JSON
    json.dumps({"steps": []}),                         # no result
    verdict("high"),                                   # not a number
    verdict(None),
    verdict(True),
    "[0.8]",
    RuntimeError("inference is down"),                 # the judge call fails
])
def test_score_model_errors_on_a_judge_that_answers_garbage(answer: str | Exception) -> None:
    result = run(SCORE, judge=FakeJudge(answer))
    assert result.score is None and result.passed is None and result.error
    assert result.name == "judge" and result.type == "score_model"


def test_model_graders_error_without_a_judge() -> None:
    result = run(SCORE, judge=None)
    assert result.passed is None and result.error is not None and "judge" in result.error


LABEL = {"type": "label_model", "name": "tone", "model": "judge-model", "labels": ["positive", "neutral", "negative"],
         "passing_labels": ["positive", "neutral"],
         "input": [{"role": "system", "content": {"type": "input_text", "text": "Classify the tone."}},
                   {"role": "user", "content": [{"type": "input_text", "text": "Text: {{sample.output_text}}"},
                                                {"type": "output_text", "text": "({{item.city}})"}]}]}


def test_label_model() -> None:
    judge = FakeJudge(verdict("neutral"), verdict("negative"))
    ok = run(LABEL, judge=judge)
    assert (ok.score, ok.passed) == (1.0, True) and ok.detail is not None and ok.detail["label"] == "neutral"
    bad = run(LABEL, judge=judge)
    assert (bad.score, bad.passed, bad.error) == (0.0, False, None)
    _, messages, response_format, sampling = judge.calls[0]
    assert messages[1] == {"role": "user", "content": "Text: The capital of France is Paris.\n(Paris)"}
    assert response_format["json_schema"]["schema"]["properties"]["result"] == {
        "type": "string", "enum": ["positive", "neutral", "negative"]}
    assert sampling == {}


@pytest.mark.parametrize("answer", [verdict("angry"), verdict(1), "positive", ""])
def test_label_model_errors_on_a_label_it_does_not_know(answer: str) -> None:
    result = run(LABEL, judge=FakeJudge(answer))
    assert result.passed is None and result.score is None and result.error


# --------------------------------------------------------------------------- validation


def test_validation_normalises_names_and_defaults_and_is_idempotent() -> None:
    criteria: list[dict[str, Any]] = [
        {"type": "string_check", "input": "{{sample.output_text}}", "reference": "a", "operation": "eq"},
        {"type": "string_check", "name": "string_check_2", "input": "x", "reference": "b", "operation": "ne"},
        {"type": "string_check", "input": "x", "reference": "c", "operation": "like", "name": None},
        {"type": "score_model", "model": "j", "input": [{"role": "user", "content": "hi", "type": "message"}],
         "range": [0, 10]},
        {"type": "json_check"},
        {"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "rouge_l",
         "pass_threshold": 1},
    ]
    out = validate_criteria(criteria)
    assert [c["name"] for c in out] == ["string_check", "string_check_2", "string_check_3", "score_model",
                                        "json_check", "text_similarity"]
    assert out[3]["range"] == [0.0, 10.0] and out[3]["pass_threshold"] == 5.0 and "sampling_params" not in out[3]
    assert out[4] == {"type": "json_check", "name": "json_check", "input": "{{sample.output_text}}"}
    assert out[5]["pass_threshold"] == 1.0 and isinstance(out[5]["pass_threshold"], float)
    assert list(out[0]) == ["type", "name", "input", "reference", "operation"]
    assert validate_criteria(out) == out
    assert criteria[0] == {"type": "string_check", "input": "{{sample.output_text}}", "reference": "a",
                           "operation": "eq"}  # the input is not changed


@pytest.mark.parametrize(("criteria", "param", "words"), [
    ([{"type": "string_check", "input": "a", "reference": "b", "operation": "eq"},
      {"type": "nope", "input": "a"}], "testing_criteria[1].type", "not a known grader"),
    ([{"input": "a"}], "testing_criteria[0].type", "required"),
    ([{"type": "string_check", "reference": "b", "operation": "eq"}], "testing_criteria[0].input", "required"),
    ([{}, {}, {"type": "string_check", "input": "a", "reference": "b", "operation": "contains"}],
     "testing_criteria[0].type", "required"),
    ([{"type": "string_check", "input": "a", "reference": "b", "operation": "startswith"}],
     "testing_criteria[0].operation", "eq, ne, like, ilike"),
    ([{"type": "string_check", "input": "a", "reference": "{{item.x", "operation": "eq"}],
     "testing_criteria[0].reference", "unclosed"),
    ([{"type": "string_check", "input": "{{answer.text}}", "reference": "b", "operation": "eq"}],
     "testing_criteria[0].input", "only 'item' and 'sample'"),
    ([{"type": "string_check", "input": "a", "reference": "b", "operation": "eq", "pass_treshold": 1}],
     "testing_criteria[0].pass_treshold", "no field"),
    ([{"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "cosine",
       "pass_threshold": 0.5}], "testing_criteria[0].evaluation_metric", "embedding"),
    ([{"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "meteor",
       "pass_threshold": 0.5}], "testing_criteria[0].evaluation_metric", "WordNet"),
    ([{"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "chrf",
       "pass_threshold": 0.5}], "testing_criteria[0].evaluation_metric", "fuzzy_match"),
    ([{"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "bleu"}],
     "testing_criteria[0].pass_threshold", "required"),
    ([{"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "bleu",
       "pass_threshold": 1.5}], "testing_criteria[0].pass_threshold", "0..1"),
    ([{"type": "json_check", "schema": {"type": "objekt"}}], "testing_criteria[0].schema", "not a valid JSON Schema"),
    ([{"type": "json_check", "schema": {"minimum": "zero"}}], "testing_criteria[0].schema", "not a valid JSON Schema"),
    ([{"type": "json_check", "schema": []}], "testing_criteria[0].schema", "JSON Schema"),
    ([{"type": "json_check", "name": "j"}, {"type": "json_check", "name": "j"}], "testing_criteria[1].name",
     "unique"),
    ([{"type": "json_check", "name": ""}], "testing_criteria[0].name", "non-empty"),
    ([{"type": "python", "source": "def grade(sample, item): return 1"}], "testing_criteria[0].type",
     "arbitrary code"),
    ([{**SCORE, "input": []}], "testing_criteria[0].input", "non-empty list"),
    ([{**SCORE, "input": [{"role": "critic", "content": "x"}]}], "testing_criteria[0].input[0].role", "one of"),
    ([{**SCORE, "input": [{"role": "user"}]}], "testing_criteria[0].input[0].content", "required"),
    ([{**SCORE, "input": [{"role": "user", "content": {"type": "input_image", "image_url": "http://x"}}]}],
     "testing_criteria[0].input[0].content.type", "only text"),
    ([{**SCORE, "input": [{"role": "user", "content": "{{item.}}"}]}], "testing_criteria[0].input[0].content",
     "template"),
    ([{**SCORE, "model": ""}], "testing_criteria[0].model", "judge model"),
    ([{**SCORE, "range": [1, 1]}], "testing_criteria[0].range", "min < max"),
    ([{**SCORE, "range": [0, 1, 2]}], "testing_criteria[0].range", "two numbers"),
    ([{**SCORE, "pass_threshold": 2}], "testing_criteria[0].pass_threshold", "outside range"),
    ([{**SCORE, "sampling_params": {"max_tokens": 5}}], "testing_criteria[0].sampling_params.max_tokens",
     "max_completions_tokens"),
    ([{**SCORE, "sampling_params": {"temperature": 3}}], "testing_criteria[0].sampling_params.temperature",
     "out of range"),
    ([{**LABEL, "passing_labels": ["angry"]}], "testing_criteria[0].passing_labels", "subset"),
    ([{**LABEL, "labels": []}], "testing_criteria[0].labels", "non-empty"),
    ([{**LABEL, "labels": ["a", "a"]}], "testing_criteria[0].labels", "duplicates"),
])
def test_validation_errors_name_the_param(criteria: list[dict[str, Any]], param: str, words: str) -> None:
    err = invalid(criteria)
    assert err.param == param, err.message
    assert words in err.message


def test_validation_refuses_what_is_not_a_list_of_criteria() -> None:
    assert invalid([]).param == "testing_criteria"
    assert invalid({"type": "json_check"}).param == "testing_criteria"
    assert invalid(["string_check"]).param == "testing_criteria[0]"


# --------------------------------------------------------------------------- never raises


def test_grade_never_raises_for_a_bad_criterion() -> None:
    for criterion in ({"type": "string_check", "input": "a"}, {"type": "unheard_of"}, {"name": "x"}):
        result = grade(criterion, ITEM, SAMPLE, None)
        assert result.score is None and result.passed is None and result.error
        assert "invalid criterion" in result.error
    result = grade({"type": "string_check", "name": "raw", "input": "{{sample.output_text}}", "reference": "Paris",
                    "operation": "like"}, ITEM, SAMPLE, None)  # an unvalidated but valid criterion still grades
    assert result.passed is True and result.name == "raw"


def test_equal_criteria_read_again_grade_alike() -> None:
    stored = json.dumps(validate_criteria([{"type": "json_check", "schema": {"type": "object", "required": ["a"]}}]))
    results = [grade(json.loads(stored)[0], ITEM, text(answer), None) for answer in ('{"a": 1}', '{"b": 1}') * 3]
    assert [r.passed for r in results] == [True, False] * 3
    other = json.loads(stored)[0]
    other["schema"]["required"] = ["b"]  # a different criterion: prepared on its own
    assert grade(other, ITEM, text('{"b": 1}'), None).passed is True


# --------------------------------------------------------------------------- plug-ins


class WordCount:
    """A grader plug-in that does not import CoachForge: passes when the answer has at most ``max_words``."""

    name = "word_count"

    def validate(self, criterion: Mapping[str, Any]) -> dict[str, Any]:
        limit = criterion.get("max_words", 10)
        if not isinstance(limit, int) or limit < 1:
            err = ValueError("max_words must be a positive integer")
            err.param = "max_words"  # type: ignore[attr-defined]
            raise err
        return {**criterion, "max_words": limit}

    def grade(self, criterion: Mapping[str, Any], item: Mapping[str, Any],
              sample: Mapping[str, Any]) -> tuple[float, bool, dict[str, Any]]:
        if sample["output_text"] == "boom":
            raise KeyError("boom")
        words = len(sample["output_text"].split())
        return float(words <= criterion["max_words"]), words <= criterion["max_words"], {"words": words}


class BadGrader:
    name = "bad_grader"

    def validate(self, criterion: Mapping[str, Any]) -> dict[str, Any]:
        return dict(criterion)

    def grade(self, criterion: Mapping[str, Any], item: Mapping[str, Any], sample: Mapping[str, Any]) -> Any:
        return "yes"


@dataclass(frozen=True)
class FakeEntryPoint:
    name: str
    value: str
    target: Any

    def load(self) -> Any:
        return self.target


class ShadowStringCheck(BadGrader):
    """A plug-in that calls itself like a built-in grader: the built-in one wins."""

    name = "string_check"


@pytest.fixture
def good_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    groups = {plugins.GRADER_GROUP: [FakeEntryPoint("word_count", "tests:WordCount", WordCount),
                                     FakeEntryPoint("bad_grader", "tests:BadGrader", BadGrader()),
                                     FakeEntryPoint("string_check", "tests:Shadow", ShadowStringCheck)]}
    monkeypatch.setattr(plugins, "entry_points", lambda group: groups.get(group, []))
    plugins.clear_cache()
    yield
    plugins.clear_cache()


def test_plugin_graders_validate_and_grade(good_plugins: None) -> None:
    assert isinstance(plugins.grader("word_count"), plugins.Grader)
    assert sorted(plugins.graders()) == ["bad_grader", "string_check", "word_count"]
    with pytest.raises(NotFound) as err:
        plugins.grader("nope")
    assert err.value.param == "type" and err.value.code == "grader_not_found"

    crit = one({"type": "word_count", "max_words": 3})
    assert crit == {"type": "word_count", "name": "word_count", "max_words": 3}
    assert one({"type": "word_count"})["max_words"] == 10
    short = grade(crit, ITEM, text("two words"), None)
    assert short == GradeResult(name="word_count", type="word_count", score=1.0, passed=True,
                                detail={"words": 2})
    assert grade(crit, ITEM, text("one two three four"), None).passed is False
    boom = grade(crit, ITEM, text("boom"), None)
    assert boom.passed is None and boom.error is not None and "KeyError" in boom.error
    wrong = grade(one({"type": "bad_grader"}), ITEM, SAMPLE, None)
    assert wrong.passed is None and wrong.error is not None and "not (score, passed, detail)" in wrong.error

    err_param = invalid([{"type": "json_check"}, {"type": "word_count", "max_words": 0}])
    assert err_param.param == "testing_criteria[1].max_words" and "positive integer" in err_param.message
    unknown = invalid([{"type": "sentiment"}])
    assert "plug-ins: bad_grader, string_check, word_count" in unknown.message and "json_check" in unknown.message

    builtin = one({"type": "string_check", "input": "{{item.city}}", "reference": "Paris", "operation": "eq"})
    assert grade(builtin, ITEM, SAMPLE, None).passed is True  # the built-in, not the plug-in of that name
