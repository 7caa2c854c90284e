"""Coach metrics. Labels are bounded: tenant, model (registered ids), source, outcome, rule names,
feedback raters and results."""

from __future__ import annotations

from prometheus_client import Counter

OTHER_MODEL = "other"
"""The ``model`` label of a recommendation whose requested model the registry does not know (the
requested string comes from the client: it never becomes a label)."""

RECOMMENDATIONS = Counter("coachforge_coach_recommendations_total",
                          "Recommendations previewed, by who answered (model or rules).",
                          ["tenant", "model", "source"])
FALLBACKS = Counter("coachforge_coach_fallbacks_total",
                    "Rule-based recommendations given because the model was unavailable or its answer unusable.",
                    ["tenant", "model", "reason"])
OPERATIONS = Counter("coachforge_coach_operations_total",
                     "Operations checked on apply, by outcome (accepted, rejected) and rejecting rule.",
                     ["tenant", "outcome", "rule"])
CHANGES = Counter("coachforge_coach_changes_total", "Plan changes applied and undone.", ["tenant", "action"])
OUTCOME_FEEDBACK = Counter("coachforge_coach_outcome_feedback_total",
                           "Attempts to record a recommendation's outcome as feedback on its stored completion, by "
                           "rater (coach-outcome, athlete-outcome) and result: recorded, retry (the completion is "
                           "not stored yet or inference failed; kept and sent again) or expired (given up).",
                           ["tenant", "rater", "result"])
PRINCIPLES = Counter("coachforge_coach_principles_total",
                     "Searches of a knowledge base for a recommendation's principles, by outcome: used (at least one "
                     "principle in the context), dropped (found, but none fitted the token budget), empty (nothing "
                     "matched), not_found (the tenant has no such knowledge base), unavailable (the dataset service "
                     "did not answer in time or is not configured), error (any other refusal).",
                     ["tenant", "outcome"])
