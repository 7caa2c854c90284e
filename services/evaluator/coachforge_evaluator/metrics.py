"""Evaluator metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS_CREATED = Counter("coachforge_eval_runs_created_total", "Eval runs created.", ["tenant"])
RUNS_FINISHED = Counter("coachforge_eval_runs_finished_total", "Eval runs finished, by final status.", ["status"])
RUNS_ACTIVE = Gauge("coachforge_eval_runs_active", "Eval runs this process is executing now.")
ITEMS = Counter("coachforge_eval_items_total", "Eval items sampled and graded, by outcome (pass, fail, error).",
                ["outcome"])
GRADER_ERRORS = Counter("coachforge_eval_grader_errors_total",
                        "Grader results that errored (the item counts as errored, never passed), by grader type.",
                        ["type"])
ITEM_SECONDS = Histogram("coachforge_eval_item_seconds", "Time to sample and grade one item.",
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
RUNS_RESUMED = Counter("coachforge_eval_runs_resumed_total",
                       "Runs taken over from a worker whose lease expired (only their ungraded items run again).")
