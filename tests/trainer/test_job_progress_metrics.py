"""A running job's progress in Prometheus (step of total, loss, tokens/s, ETA, one series per gauge
and running job) and its series gone once it stops training on the worker."""

from __future__ import annotations

from prometheus_client import REGISTRY

from coachforge_trainer.metrics import job_ended, job_progress


def _value(name: str, job: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"tenant": "acme", "job": job})


def test_progress_gauges_follow_a_job_and_leave_with_it() -> None:
    job_progress("acme", "ftjob-metrics", 3, 30, None, 120.0, None)
    assert _value("coachforge_training_job_step", "ftjob-metrics") == 3
    assert _value("coachforge_training_job_total_steps", "ftjob-metrics") == 30
    assert _value("coachforge_training_job_tokens_per_second", "ftjob-metrics") == 120.0
    assert _value("coachforge_training_job_loss", "ftjob-metrics") is None  # no loss reported yet
    job_progress("acme", "ftjob-metrics", 4, 30, 1.25, 130.0, 52.0)
    assert _value("coachforge_training_job_loss", "ftjob-metrics") == 1.25
    assert _value("coachforge_training_job_eta_seconds", "ftjob-metrics") == 52.0
    job_ended("acme", "ftjob-metrics")
    job_ended("acme", "ftjob-metrics")  # twice is harmless
    for name in ("step", "total_steps", "loss", "tokens_per_second", "eta_seconds"):
        assert _value(f"coachforge_training_job_{name}", "ftjob-metrics") is None
