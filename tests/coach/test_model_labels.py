"""A model string a client typed never becomes a metric label or a log value: a model the registry
does not know is counted and logged as "other"; a registered one under its id."""

from __future__ import annotations

import io
import logging
import secrets

from conftest import TODAY, ScriptedModels, athlete_batch  # type: ignore[import-not-found]
from prometheus_client import REGISTRY, generate_latest

from coachforge_coach import service
from coachforge_coach.metrics import OTHER_MODEL
from coachforge_coach.schemas import RecommendIn
from coachforge_coach.service import CoachDeps
from coachforge_shared.errors import NotFound


def _count(metric: str, model: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, {"tenant": "acme", "model": model, **labels}) or 0.0


def test_unknown_models_are_one_label_and_never_logged(deps: CoachDeps, models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch())
    typed = f"ft:evil-{secrets.token_hex(4)}\n[error] forged line"
    models.base = NotFound(f"The model {typed!r} does not exist.", param="model")
    before = _count("coachforge_coach_recommendations_total", OTHER_MODEL, source="rules")
    before_fallbacks = _count("coachforge_coach_fallbacks_total", OTHER_MODEL, reason="model_not_found")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logging.getLogger().addHandler(handler)
    try:
        rec = service.recommend(deps, "acme", "anna", RecommendIn.model_validate(
            {"today": TODAY.isoformat(), "model": typed}))
    finally:
        logging.getLogger().removeHandler(handler)
    assert rec["source"] == "rules"
    assert _count("coachforge_coach_recommendations_total", OTHER_MODEL, source="rules") == before + 1
    assert _count("coachforge_coach_fallbacks_total", OTHER_MODEL, reason="model_not_found") == before_fallbacks + 1
    assert "evil" not in generate_latest().decode()
    assert "evil" not in buffer.getvalue()


def test_registered_models_keep_their_id_as_label(deps: CoachDeps, models: ScriptedModels) -> None:
    service.import_batch(deps, "acme", athlete_batch())
    before = _count("coachforge_coach_recommendations_total", "coach-avatar", source="model")
    rec = service.recommend(deps, "acme", "anna", RecommendIn.model_validate(
        {"today": TODAY.isoformat(), "model": "coach-avatar"}))
    assert rec["source"] == "model"
    assert _count("coachforge_coach_recommendations_total", "coach-avatar", source="model") == before + 1
