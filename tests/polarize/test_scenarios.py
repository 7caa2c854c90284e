"""The coach evaluation scenarios as eval items (``polarize.scenarios``): deterministic, each with
its expected direction, the prompt the coach service builds, graded by the ``polarize_coach``
grader so that the rule-based answer agrees and a wrong one does not; and the stored eval run
end to end through the evaluator (in process, a scripted model) into the report table."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import jsonschema
import pytest

from coachforge_evaluator import service
from coachforge_evaluator.clients import Sampled
from coachforge_evaluator.graders import validate_criteria
from coachforge_evaluator.runner import RunExecutor
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_evaluator.settings import EvaluatorSettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from polarize import scenarios
from polarize.context import LEVELS
from polarize.plugins import COACH_GRADER, parse_state, parse_today, parse_upcoming
from polarize.prompt import SYSTEM_PROMPT
from polarize.rules import classify_state, recommend
from polarize.scenarios import (
    QUESTION,
    SCENARIOS,
    TESTING_CRITERIA,
    TODAY,
    coach_context,
    coach_view,
    scenario_batch,
    scenario_item,
    scenario_items,
)
from polarize.synthetic import DEFAULT_TOKEN_BUDGET, approximate_tokens

BRANCH = {"fresh": "fresh", "overreached": "fatigued", "sick": "ill", "poor_sleep": "fatigued",
          "key_session": "normal", "taper": "normal"}
CRITERIA = [COACH_GRADER.validate(c) for c in TESTING_CRITERIA]


def rules_answer(item: dict[str, Any]) -> str:
    """The rule-based coach's answer to an item (what the fine-tuned model learns to say)."""
    state, upcoming, today = parse_state(item["state"]), parse_upcoming(item["upcoming"]), parse_today(item["today"])
    answer: str = recommend(state, upcoming, today).to_json()
    return answer


def wrong_answer(item: dict[str, Any]) -> str:
    """A valid answer that moves the week the other way: keep the plan where it should move,
    drop a session where it should stay, add load where it must not go up."""
    p = f"{item['athlete']}-p"
    ops: list[dict[str, Any]] = []
    if item["expected"] == "same":
        ops = [{"op": "add_rest_day", "workout_id": f"{p}3", "reason": "rest", "confidence": 0.5}]
    elif item["expected"] == "not_up":
        ops = [{"op": "change_duration", "workout_id": f"{p}3", "new_duration_min": 60, "reason": "more",
                "confidence": 0.5}]
    return json.dumps({"operations": ops, "message": "Here is your week."})


def graded(answer: str, item: dict[str, Any]) -> dict[str, tuple[float, bool, dict[str, Any]]]:
    sample = {"output_text": answer, "output_json": json.loads(answer) if answer.startswith("{") else None,
              "model": "m"}
    return {c["name"]: COACH_GRADER.grade(c, item, sample) for c in CRITERIA}


def test_items_are_deterministic_plain_json_in_scenario_order() -> None:
    items = scenario_items(2)
    assert items == scenario_items(2)
    assert json.loads(json.dumps(items)) == items  # survives being stored
    assert [(it["scenario"], it["variant"]) for it in items] == [(name, v) for name, _ in SCENARIOS for v in (0, 1)]
    assert len(scenario_items(1)) == 6 and scenario_items(1) == items[::2]
    assert items[0] != items[1]  # the variants differ
    validator = jsonschema.Draft202012Validator(scenarios.ITEM_SCHEMA)
    for it in items:
        validator.validate(it)
    with pytest.raises(ValueError, match="variants"):
        scenario_items(0)
    with pytest.raises(ValueError, match="unknown scenario"):
        scenario_item("bored")


@pytest.mark.parametrize(("scenario", "expected"), SCENARIOS)
def test_each_scenario_has_its_direction_and_state(scenario: str, expected: str) -> None:
    for variant in range(3):
        it = scenario_item(scenario, variant)
        assert (it["scenario"], it["variant"], it["expected"]) == (scenario, variant, expected)
        assert it["athlete"] == f"eval-{scenario}-{variant}" and it["today"] == TODAY.isoformat()
        state = parse_state(it["state"])
        assert classify_state(state) == BRANCH[scenario]
        assert [w["id"] for w in it["upcoming"]] == [f"{it['athlete']}-p{i}" for i in range(1, 7)]
    assert {e for _, e in SCENARIOS} == {"up", "down", "same", "not_up"}


@pytest.mark.parametrize(("scenario", "expected"), SCENARIOS)
def test_the_messages_are_the_coachs_prompt_with_the_athletes_context(scenario: str, expected: str) -> None:
    it = scenario_item(scenario, 1)
    system, user = it["messages"]
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["role"] == "user"
    text, state = user["content"], it["state"]
    assert text.startswith(f"Athlete Eval {scenario}: run; plan Eval plan (")
    assert "Today 2025-06-02 Mon" in text
    assert f"Load CTL {state['ctl']:.0f} ATL {state['atl']:.0f} TSB {state['tsb']:+.0f}" in text
    assert f"Sleep {state['sleep_hours']:.1f}h soreness {state['soreness']}/10" in text
    assert "Last 14 days:" in text  # the trend may give way to the budget (tests/polarize/test_context.py)
    for w in it["upcoming"]:
        day = dt.date.fromisoformat(w["date"])
        assert f"\n{w['id']} {day.strftime('%a')} {(day - dt.date(2025, 6, 2)).days:+d}d " in text
    assert text.endswith(f"\nAthlete: {QUESTION}")
    flags = {"overreached": f"Readiness: fatigued, severe (TSB {state['tsb']:.0f}", "sick": "ill/injured yes",
             "poor_sleep": "Sleep 4.7h", "taper": "Readiness: tapering, race in 6d", "fresh": "Readiness: fresh",
             "key_session": "60min 85TSS hard key"}
    assert flags[scenario] in text
    # within the coach's budget, as the coach trims it (counted here with the default estimate)
    assert approximate_tokens(SYSTEM_PROMPT + "\n" + text) <= DEFAULT_TOKEN_BUDGET


def test_the_token_budget_summarises_the_history_as_the_coach_does() -> None:
    athlete, batch = scenario_batch("overreached", 0)
    view = coach_view(batch, athlete, TODAY)
    roomy = coach_context(view, budget=4000)
    tight = coach_context(view, budget=300)
    assert roomy.level == "full" and roomy.fits and roomy.text.count("\n2025-05-") >= 7
    assert LEVELS.index(tight.level) > LEVELS.index(roomy.level) and len(tight.text) < len(roomy.text)
    item = scenario_item("overreached", 0, budget=4000)
    assert item["messages"][1]["content"] == roomy.text
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return 1

    scenario_item("overreached", 0, count_tokens=count)
    assert counted and counted[0].startswith(SYSTEM_PROMPT + "\n")  # the real tokenizer can be passed in


@pytest.mark.parametrize(("scenario", "expected"), SCENARIOS)
def test_the_grader_agrees_with_the_rules_answer_and_not_with_a_wrong_one(scenario: str, expected: str) -> None:
    for variant in range(2):
        it = json.loads(json.dumps(scenario_item(scenario, variant)))
        right = graded(rules_answer(it), it)
        assert {name: r[:2] for name, r in right.items()} == {n: (1.0, True) for n in scenarios.CRITERIA_NAMES}
        assert right["direction"][2]["expected_direction"] == expected
        wrong = graded(wrong_answer(it), it)
        assert wrong["valid"][:2] == (1.0, True)
        assert wrong["direction"][:2] == (0.0, False), wrong["direction"][2]
        prose = graded("Take it easy this week.", it)
        assert [r[1] for r in prose.values()] == [False, False, False]


def test_the_eval_definition_is_what_the_evaluator_accepts() -> None:
    definition = scenarios.eval_definition()
    assert definition["metadata"] == {"kind": "polarize-coach-scenarios", "version": scenarios.EVAL_VERSION,
                                      "schema_version": definition["metadata"]["schema_version"]}
    assert scenarios.is_scenario_eval(definition["metadata"])
    assert not scenarios.is_scenario_eval({**definition["metadata"], "version": "0"})
    assert not scenarios.is_scenario_eval(None)
    criteria = validate_criteria(definition["testing_criteria"])
    assert [(c["name"], c["check"], c.get("agreement")) for c in criteria] == [
        ("valid", "valid", None), ("safe", "safe", None), ("direction", "agrees", "direction")]
    items = scenario_items(1)
    ds = scenarios.run_data_source("coach-anna", items)
    assert ds["input_messages"] == {"type": "item_reference", "item_reference": "item.messages"}
    params = ds["sampling_params"]
    assert params["temperature"] == 0 and params["response_format"]["type"] == "json_schema"
    ids = params["response_format"]["json_schema"]["schema"]["$defs"]["MoveWorkout"]["properties"]["workout_id"]
    assert set(ids["enum"]) == {w["id"] for it in items for w in it["upcoming"]}
    assert [row["item"] for row in ds["source"]["content"]] == items


# --------------------------------------------------------------------------- through the evaluator

TENANT = "acme"


class RulesModel:
    """Answers each scenario prompt with the rules' answer, except ``wrong`` ones (athlete ids)."""

    def __init__(self, items: list[dict[str, Any]], wrong: set[str]) -> None:
        self.answers = {it["messages"][1]["content"]: (wrong_answer(it) if it["athlete"] in wrong
                                                       else rules_answer(it)) for it in items}
        self.params: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def sample(self, tenant_id: str, model: str, messages: list[dict[str, str]], params: dict[str, Any],
               user: str = "") -> Sampled:
        with self._lock:
            self.params.append(params)
        return Sampled(text=self.answers[messages[-1]["content"]], finish_reason="stop", prompt_tokens=500,
                       completion_tokens=40, latency_s=0.01, ttft_s=0.001, model=model)


def test_a_run_of_the_stored_eval_is_graded_and_reported(db: Database) -> None:
    create_tenant(db, TENANT)
    items = scenario_items(2)
    model = RulesModel(items, wrong={"eval-fresh-1", "eval-taper-0"})
    deps = EvaluatorDeps(db=db, settings=EvaluatorSettings(run_concurrency=4, sweep_interval_s=0.1),
                         inference=model)  # type: ignore[arg-type]
    created = service.create_eval(deps, TENANT, scenarios.eval_definition())
    assert scenarios.is_scenario_eval(created["metadata"])
    run = service.create_run(deps, TENANT, created["id"], {
        "name": "coach eval rules", "data_source": scenarios.run_data_source("rules", items)})
    executor = RunExecutor(deps, "w1")
    executor.start()
    try:
        deadline = time.monotonic() + 60
        while (run := service.get_run(deps, TENANT, created["id"], run["id"]))["status"] not in (
                "completed", "failed", "canceled"):
            assert time.monotonic() < deadline, run
            time.sleep(0.05)
    finally:
        executor.stop()
    assert run["status"] == "completed"
    assert run["result_counts"] == {"total": 12, "passed": 10, "failed": 2, "errored": 0}
    assert run["per_testing_criteria_results"] == [
        {"testing_criteria": "valid", "passed": 12, "failed": 0},
        {"testing_criteria": "safe", "passed": 11, "failed": 1},  # more load while tapering breaks a rule
        {"testing_criteria": "direction", "passed": 10, "failed": 2}]
    assert all(p["temperature"] == 0 and p["response_format"]["type"] == "json_schema" for p in model.params)
    output = service.list_output_items(deps, TENANT, created["id"], run["id"], limit=100)["data"]
    report = scenarios.format_report("rules", run, output)
    lines = report.splitlines()
    assert lines[0] == f"coach eval: rules  (run {run['id']}, eval {created['id']}, completed)"
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:15]}
    assert rows["fresh/0"] == ["up", "yes", "yes", "up", "ok", "pass"]
    assert rows["fresh/1"] == ["up", "yes", "yes", "same", "x", "fail"]
    assert rows["taper/0"] == ["not_up", "yes", "no", "-", "x", "fail"]
    assert rows["overreached/1"] == ["down", "yes", "yes", "down", "ok", "pass"]
    assert "items 12: 10 passed, 2 failed, 0 errored" in report
    assert "valid answers             12/12 (100%)" in report
    assert "safe (rules accept all)   11/12 (92%)" in report
    assert "expected direction        10/12 (83%)" in report


def test_the_report_shows_errored_items() -> None:
    run = {"id": "evalrun-1", "eval_id": "eval-1", "status": "completed",
           "result_counts": {"total": 1, "passed": 0, "failed": 0, "errored": 1},
           "per_testing_criteria_results": [{"testing_criteria": n, "passed": 0, "failed": 0}
                                            for n in scenarios.CRITERIA_NAMES]}
    item = {"datasource_item_id": 0, "status": "error", "datasource_item": {"scenario": "sick", "variant": 0,
                                                                           "expected": "down"},
            "results": [], "sample": {"error": {"code": "unavailable", "message": "engine restarting"}}}
    report = scenarios.format_report("m", run, [item])
    assert "sick/0         down          -      -      -   ?  error: engine restarting" in report
    assert "valid answers             0/0 (-)" in report
