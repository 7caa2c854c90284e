"""The evaluation scenarios: each produces the intended athlete state, and the rule-based coach
(the reference the fine-tuned model learns from) moves the week the expected way."""

from __future__ import annotations

import pytest
from conftest import ScriptedModels  # type: ignore[import-not-found]

from coachforge_coach import evaluation, service
from coachforge_coach.schemas import ImportBatch, RecommendIn
from coachforge_coach.service import CoachDeps
from coachforge_shared.errors import Unavailable

BRANCH = {"fresh": "fresh", "overreached": "fatigued", "sick": "ill", "poor_sleep": "fatigued",
          "key_session": "normal", "taper": "normal"}


@pytest.mark.parametrize(("scenario", "expected"), evaluation.SCENARIOS)
def test_scenarios_match_their_state_and_the_rules_agree(deps: CoachDeps, models: ScriptedModels, scenario: str,
                                                         expected: str) -> None:
    models.answer = Unavailable("no model in this test")
    for variant in range(2):
        athlete, batch = evaluation.scenario_batch(scenario, variant)
        assert evaluation.scenario_batch(scenario, variant) == (athlete, batch)  # deterministic
        service.import_batch(deps, "acme", ImportBatch.model_validate(batch))
        rec = service.recommend(deps, "acme", athlete, RecommendIn.model_validate(
            {"today": evaluation.TODAY.isoformat()}))
        assert rec["state"]["branch"] == BRANCH[scenario]
        assert rec["source"] == "rules"
        case = evaluation.judge(rec, scenario, variant, expected)  # type: ignore[arg-type]
        assert not case.valid and case.got is None and not case.agrees  # a model that did not answer never agrees
        assert evaluation.agrees(evaluation.direction(rec["weekly_tss"]), expected), (rec["operations"],
                                                                                       rec["weekly_tss"])


def test_judging_model_answers() -> None:
    ops = [{"accepted": True}, {"accepted": False}]
    rec = {"source": "model", "operations": ops, "weekly_tss": {"before": 300.0, "after": 270.0},
           "model_answer": {"valid": True}, "fallback": None}
    case = evaluation.judge(rec, "sick", 0, "down")
    assert (case.valid, case.proposed, case.accepted, case.got, case.agrees) == (True, 2, 1, "down", True)
    rejected = {"source": "rules", "operations": [], "weekly_tss": {"before": 300.0, "after": 250.0},
                "fallback": {"reason": "rejected_by_rules"},
                "model_answer": {"valid": True, "content": '{"operations": [{"op": "add_rest_day", '
                                                       '"workout_id": "w1", "reason": "r", "confidence": 1}], '
                                                       '"message": "m"}'}}
    case = evaluation.judge(rejected, "taper", 0, "not_up")
    assert (case.proposed, case.accepted, case.got, case.agrees) == (1, 0, "same", True)
    report = evaluation.Report(model="m", cases=[evaluation.judge(rec, "sick", 0, "down"), case])
    text = evaluation.format_report(report)
    assert "valid answers             2/2 (100%)" in text
    assert "rule-accepted operations  1/3 (33%)" in text
    assert "expected direction        2/2 (100%)" in text
    assert evaluation.direction({"before": 100.0, "after": 100.5}) == "same"
