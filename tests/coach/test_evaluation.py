"""The evaluation scenarios (``polarize.scenarios``) through the coach service: each produces the
intended athlete state, the coach asks a model with exactly the messages of the scenario's eval
item, and the rule-based coach (the reference the fine-tuned model learns from) moves the week the
way the item expects, as the ``polarize_coach`` grader judges it."""

from __future__ import annotations

import json

import pytest
from conftest import ScriptedModels  # type: ignore[import-not-found]

from coachforge_coach import service
from coachforge_coach.schemas import ImportBatch, RecommendIn
from coachforge_coach.service import CoachDeps
from coachforge_shared.errors import Unavailable
from polarize.plugins import COACH_GRADER
from polarize.scenarios import QUESTION, SCENARIOS, TESTING_CRITERIA, TODAY, scenario_batch, scenario_item

BRANCH = {"fresh": "fresh", "overreached": "fatigued", "sick": "ill", "poor_sleep": "fatigued",
          "key_session": "normal", "taper": "normal"}


def coach_estimate(text: str) -> int:
    """The coach's token count without a prepared tokenizer (the ``deps`` fixture has none)."""
    return len(text) // 3 + 1


@pytest.mark.parametrize(("scenario", "expected"), SCENARIOS)
def test_the_coach_asks_with_the_items_messages_and_its_rules_agree(deps: CoachDeps, models: ScriptedModels,
                                                                     scenario: str, expected: str) -> None:
    models.answer = Unavailable("no model in this test")  # the model is asked, then the rules answer
    for variant in range(2):
        athlete, batch = scenario_batch(scenario, variant)
        service.import_batch(deps, "acme", ImportBatch.model_validate(batch))
        rec = service.recommend(deps, "acme", athlete, RecommendIn.model_validate(
            {"today": TODAY.isoformat(), "question": QUESTION}))
        item = scenario_item(scenario, variant, count_tokens=coach_estimate, budget=deps.settings.token_budget)
        assert item["expected"] == expected and item["athlete"] == athlete

        asked = models.calls[-1]
        assert asked["messages"] == item["messages"]  # the same prompt, to the character
        assert rec["context"]["text"] == item["messages"][1]["content"]
        week = {w["id"] for w in item["upcoming"]}
        assert set(asked["response_format"]["json_schema"]["schema"]["$defs"]["AddRestDay"]["properties"]
                   ["workout_id"]["enum"]) == week

        assert rec["state"]["branch"] == BRANCH[scenario]
        for key in ("ctl", "atl", "tsb", "ramp"):
            assert rec["state"][key] == round(item["state"][key], 1)
        for key in ("sleep_hours", "soreness", "hrv_drop_pct", "ill_or_injured", "days_to_race"):
            assert rec["state"][key] == item["state"][key]

        assert rec["source"] == "rules"
        answer = json.dumps(rec["modification"])
        sample = {"output_text": answer, "output_json": rec["modification"], "model": "rules"}
        for criterion in TESTING_CRITERIA:
            crit = COACH_GRADER.validate(criterion)
            assert COACH_GRADER.grade(crit, json.loads(json.dumps(item)), sample)[:2] == (1.0, True), (
                criterion["name"], rec["operations"], rec["weekly_tss"])
