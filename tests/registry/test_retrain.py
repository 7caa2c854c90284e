"""Registry: eval-gated retraining — the decision against known values, and the retrain state machine
(dataset → job → registration → two eval runs → promoted / rejected / failed) driven pass by pass.

The other services are played by :class:`Services`, which answers like their gRPC APIs would; the
real services are driven end to end in ``tests/e2e/test_retrain_stack.py``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_versions import Recorder

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.dataset.v1 import dataset_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_registry import repository, retrain, service
from coachforge_registry.models import RetrainRun
from coachforge_registry.retrain import RetrainDriver, decide, paired_difference_interval
from coachforge_registry.schemas import RetrainPolicyBody
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from coachforge_shared.ids import utcnow

BASE = "SmolLM2-135M-Instruct"
V1 = f"ft:{BASE}:acme:coach-anna:1"


def comparison(n: int, only_candidate: int, only_baseline: int, base_passed: int) -> dict[str, Any]:
    """The evaluator's compare answer for [baseline, candidate] on ``n`` items of one criterion."""
    cand_passed = base_passed - only_baseline + only_candidate
    return {"object": "eval.comparison", "criteria": [{
        "testing_criteria": "valid_json",
        "runs": [{"run_id": "evalrun_b", "pass_rate": base_passed / n, "graded": n},
                 {"run_id": "evalrun_c", "pass_rate": cand_passed / n, "graded": n}],
        "paired": [{"run_id": "evalrun_c", "paired_items": n, "run_only_passed": only_candidate,
                    "baseline_only_passed": only_baseline, "p_value": 0.04}]}]}


class Services:
    """The dataset, trainer, evaluator and inference services as a retrain sees them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.job_status = trainer_pb2.JOB_STATUS_RUNNING
        self.run_status = {"evalrun_b": "in_progress", "evalrun_c": "in_progress"}
        self.errored = 0
        self.compared = comparison(100, 15, 5, 60)
        self.gold = 0
        self.down = False

    def build_dataset(self, tenant_id: str, request: dict[str, Any]) -> dataset_pb2.DatasetVersion:
        if self.down:
            raise Unavailable("dataset service unavailable")
        self.calls.append(("dataset", request))
        return dataset_pb2.DatasetVersion(id="dsv-1", name=request["name"], train_examples=12)

    def create_job(self, tenant_id: str, **kwargs: Any) -> trainer_pb2.Job:
        self.calls.append(("job", kwargs))
        return trainer_pb2.Job(id="ftjob-r1", status=trainer_pb2.JOB_STATUS_QUEUED)

    def job(self, tenant_id: str, job_id: str) -> trainer_pb2.Job:
        return trainer_pb2.Job(id=job_id, status=self.job_status, fine_tuned_model=V1 if self.job_status ==
                               trainer_pb2.JOB_STATUS_SUCCEEDED else "", error_message="out of memory")

    def cancel_job(self, tenant_id: str, job_id: str) -> None:
        self.calls.append(("cancel_job", job_id))

    def eval_(self, tenant_id: str, eval_id: str) -> dict[str, Any]:
        if eval_id != "eval_coach":
            raise NotFound(f"No eval {eval_id}", param="eval_id")
        return {"id": eval_id, "testing_criteria": [{"name": "valid_json"}, {"name": "rules"}]}

    def create_run(self, tenant_id: str, eval_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("run", body))
        return {"id": "evalrun_b" if body["metadata"]["role"] == "baseline" else "evalrun_c", "status": "queued"}

    def run(self, tenant_id: str, eval_id: str, run_id: str) -> dict[str, Any]:
        return {"id": run_id, "status": self.run_status[run_id],
                "result_counts": {"total": 100, "errored": self.errored, "passed": 60, "failed": 40 - self.errored}}

    def cancel_run(self, tenant_id: str, eval_id: str, run_id: str) -> None:
        self.calls.append(("cancel_run", run_id))

    def compare(self, tenant_id: str, eval_id: str, run_ids: list[str]) -> dict[str, Any]:
        self.calls.append(("compare", run_ids))
        return self.compared

    def count_gold(self, tenant_id: str, avatar: str, *, created_after: int, limit: int, **_: Any) -> int:
        self.calls.append(("count_gold", created_after))
        return min(self.gold, limit)


# -- the decision -----------------------------------------------------------------------------------


def test_the_paired_interval_matches_hand_computed_values() -> None:
    # Agresti-Min: cells + 0.5, n* = 102; p_c = 15.5/102, p_b = 5.5/102, se = sqrt((p_c + p_b - (p_c - p_b)^2)/102).
    difference, low, high = paired_difference_interval(100, 15, 5)
    assert difference == pytest.approx(0.10)
    assert (low, high) == (pytest.approx(0.012064, abs=1e-6), pytest.approx(0.184015, abs=1e-6))
    # No discordant pair: the interval is symmetric around zero, not a point.
    assert paired_difference_interval(10, 0, 0) == (0.0, pytest.approx(-0.163330, abs=1e-6),
                                                    pytest.approx(0.163330, abs=1e-6))
    assert paired_difference_interval(0, 0, 0) == (0.0, -1.0, 1.0)


def test_promotion_needs_the_interval_above_zero_and_the_margin() -> None:
    proven = decide(comparison(100, 15, 5, 60), None, 0.05)
    assert proven.promote and proven.numbers["difference"] == pytest.approx(0.10)
    assert proven.numbers["baseline_pass_rate"] == 0.60 and proven.numbers["candidate_pass_rate"] == 0.70
    assert "proven better" in proven.reason and "60.0% → 70.0%" in proven.reason

    small_margin = decide(comparison(100, 15, 5, 60), "valid_json", 0.15)
    assert not small_margin.promote and "less than the margin" in small_margin.reason

    unproven = decide(comparison(10, 3, 1, 5), None, 0.0)  # +0.2 on 10 items: the interval includes zero
    assert not unproven.promote and "not proven better" in unproven.reason
    assert unproven.numbers["interval"][0] < 0 < unproven.numbers["interval"][1]

    unknown = decide(comparison(100, 15, 5, 60), "tone", 0.0)
    assert not unknown.promote and "no testing criterion 'tone'" in unknown.reason


# -- the state machine ---------------------------------------------------------------------------------


@pytest.fixture
def services() -> Services:
    return Services()


@pytest.fixture
def deps(db: Database, tmp_path: Path, services: Services) -> RegistryDeps:
    create_tenant(db, "acme")
    settings = RegistrySettings(base_models=[BASE], retrain_trigger_check_s=3600.0)
    deps = RegistryDeps(db=db, settings=settings, artifacts_dir=tmp_path / "store",
                        platform_models_dir=tmp_path / "models", publisher=Recorder(db))  # type: ignore[arg-type]
    deps.retrain = services  # type: ignore[assignment]
    service.create_avatar(deps, "acme", "api-key:k1", "coach-anna", BASE)
    return deps


@pytest.fixture
def driver(deps: RegistryDeps, services: Services) -> RetrainDriver:
    return RetrainDriver(deps, services, owner="test")  # type: ignore[arg-type]


def policy(**changes: Any) -> RetrainPolicyBody:
    body: dict[str, Any] = {
        "trigger": {"min_new_gold": 3},
        "dataset": {"files": ["file-seed"]},
        "training": {"hyperparameters": {"n_epochs": 2, "lora_r": 8}},
        "evaluation": {"eval_id": "eval_coach", "testing_criteria": "valid_json", "margin": 0.05,
                       "data_source": {"type": "completions", "source": {"type": "file_id", "id": "file-evals"}}},
        "promotion": {"mode": "candidate", "traffic_share": 20}}
    body.update(changes)
    return RetrainPolicyBody.model_validate(body)


def register_v1(deps: RegistryDeps) -> None:
    event = trainer_pb2.JobSucceeded(job_id="ftjob-r1", base_model=BASE, fine_tuned_model=V1,
                                     adapter_uri="/adapters/r1", lora_rank=8, target_modules=["q_proj", "v_proj"])
    with deps.db.session() as s:
        service.on_job_succeeded(deps, s, Envelope(event_id="evt-r1", tenant_id="acme"), event)


def history(deps: RegistryDeps) -> list[tuple[str, dict[str, Any]]]:
    """The avatar's changes, newest first."""
    return [(c.action, json.loads(c.detail_json)) for c in service.history(deps, "acme", "coach-anna")]


def test_a_proven_model_becomes_the_candidate_with_its_numbers(deps: RegistryDeps, driver: RetrainDriver,
                                                                services: Services) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy())
    run = retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna", reason="new corrections")
    assert run["status"] == "queued" and run["trigger"] == "manual"
    with pytest.raises(Conflict):
        retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna")

    driver.tick()  # dataset version, then the job
    got = retrain.get_run(deps, "acme", "coach-anna", run["id"])
    assert (got["status"], got["dataset_version"], got["job_id"]) == ("training", "dsv-1", "ftjob-r1")
    dataset = services.calls[0][1]
    assert dataset["files"] == ["file-seed"] and dataset["base_model"] == BASE
    assert dataset["stored_completions"] == {"gold": True, "limit": 10000, "avatar": "coach-anna"}
    job = services.calls[1][1]
    assert (job["model"], job["training_file"], job["suffix"]) == (BASE, "dsv-1", "coach-anna")
    assert job["hyperparameters"] == {"n_epochs": 2, "lora_r": 8}

    driver.tick()  # still training
    services.job_status = trainer_pb2.JOB_STATUS_SUCCEEDED
    driver.tick()  # succeeded, but the registry has not registered the adapter yet: wait
    assert retrain.get_run(deps, "acme", "coach-anna", run["id"])["status"] == "training"
    register_v1(deps)
    driver.tick()
    got = retrain.get_run(deps, "acme", "coach-anna", run["id"])
    assert got["status"] == "evaluating" and got["eval_runs"] == {"baseline": "evalrun_b", "candidate": "evalrun_c"}
    runs = [body for kind, body in services.calls if kind == "run"]
    assert [r["data_source"]["model"] for r in runs] == [BASE, V1]  # the same items, active then new model
    assert all(r["data_source"]["source"] == {"type": "file_id", "id": "file-evals"} for r in runs)

    driver.tick()  # runs still going
    assert not [c for c in services.calls if c[0] == "compare"]
    services.run_status = {"evalrun_b": "completed", "evalrun_c": "completed"}
    driver.tick()
    got = retrain.get_run(deps, "acme", "coach-anna", run["id"])
    assert got["status"] == "promoted" and got["finished_at"]
    assert got["decision"]["difference"] == pytest.approx(0.10) and got["decision"]["interval"][0] > 0
    avatar = service.get_avatar(deps, "acme", "coach-anna")
    assert (avatar.active_model, avatar.candidate_model, avatar.candidate_share) == (BASE, V1, 20)
    action, detail = history(deps)[0]
    assert action == "candidate_set" and detail["retrain_id"] == run["id"]
    assert detail["difference"] == pytest.approx(0.10) and detail["testing_criteria"] == "valid_json"
    events = [(t, p) for t, p, _ in deps.publisher.events if t.startswith("retrain.")]  # type: ignore[union-attr]
    assert [t for t, _ in events] == ["retrain.promoted"] and events[0][1].model == V1

    driver.tick()  # a finished run never moves again
    assert [c[0] for c in services.calls].count("compare") == 1


def test_activate_mode_makes_it_the_active_model_and_rollback_undoes_it(deps: RegistryDeps, driver: RetrainDriver,
                                                                         services: Services) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy(promotion={"mode": "activate"}))
    run = retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna")
    services.job_status = trainer_pb2.JOB_STATUS_SUCCEEDED
    register_v1(deps)
    services.run_status = {"evalrun_b": "completed", "evalrun_c": "completed"}
    driver.tick()
    assert retrain.get_run(deps, "acme", "coach-anna", run["id"])["status"] == "promoted"
    assert service.get_avatar(deps, "acme", "coach-anna").active_model == V1
    assert history(deps)[0][0] == "activated"
    service.rollback(deps, "acme", "api-key:k1", "coach-anna", reason="complaints")
    assert service.get_avatar(deps, "acme", "coach-anna").active_model == BASE


def test_an_unproven_model_is_rejected_and_the_avatar_keeps_its_model(deps: RegistryDeps, driver: RetrainDriver,
                                                                       services: Services) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy())
    run = retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna")
    services.job_status = trainer_pb2.JOB_STATUS_SUCCEEDED
    register_v1(deps)
    services.run_status = {"evalrun_b": "completed", "evalrun_c": "completed"}
    services.compared = comparison(10, 3, 1, 5)
    driver.tick()
    got = retrain.get_run(deps, "acme", "coach-anna", run["id"])
    assert got["status"] == "rejected" and "not proven better" in got["decision"]["reason"]
    avatar = service.get_avatar(deps, "acme", "coach-anna")
    assert (avatar.active_model, avatar.candidate_model) == (BASE, None)
    action, detail = history(deps)[0]
    assert action == "retrain_rejected" and detail["paired_items"] == 10 and detail["model"] == V1


@pytest.mark.parametrize("problem", ["failed", "canceled", "partial"])
def test_a_failed_or_partial_evaluation_never_promotes(deps: RegistryDeps, driver: RetrainDriver,
                                                       services: Services, problem: str) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy())
    run = retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna")
    services.job_status = trainer_pb2.JOB_STATUS_SUCCEEDED
    register_v1(deps)
    services.run_status = {"evalrun_b": "completed", "evalrun_c": "completed" if problem == "partial" else problem}
    services.errored = 3 if problem == "partial" else 0
    driver.tick()
    got = retrain.get_run(deps, "acme", "coach-anna", run["id"])
    assert got["status"] == "failed" and "nothing is promoted" in got["error"]
    assert service.get_avatar(deps, "acme", "coach-anna").candidate_model is None
    assert not [c for c in services.calls if c[0] == "compare"]
    assert history(deps)[0][0] == "retrain_failed"


def test_a_failed_job_fails_the_retrain(deps: RegistryDeps, driver: RetrainDriver, services: Services) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy())
    run = retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna")
    services.job_status = trainer_pb2.JOB_STATUS_FAILED
    driver.tick()
    got = retrain.get_run(deps, "acme", "coach-anna", run["id"])
    assert got["status"] == "failed" and "ftjob-r1 failed: out of memory" in got["error"]
    # The avatar can retrain again.
    assert retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna")["status"] == "queued"


def test_an_outage_is_retried_on_a_later_pass(deps: RegistryDeps, driver: RetrainDriver, services: Services) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy())
    run = retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna")
    services.down = True
    driver.tick()
    got = retrain.get_run(deps, "acme", "coach-anna", run["id"])
    assert got["status"] == "queued" and "unavailable" in got["error"]
    services.down = False
    driver.tick()
    got = retrain.get_run(deps, "acme", "coach-anna", run["id"])
    assert got["status"] == "training" and got["error"] is None


def test_a_run_held_by_a_live_process_is_left_alone(deps: RegistryDeps, driver: RetrainDriver,
                                                    services: Services) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy())
    run = retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna")
    now = utcnow()
    with deps.db.session() as s:
        assert repository.claim_retrain(s, run["id"], "other", now, now + timedelta(minutes=5))
    driver.tick()
    assert not [c for c in services.calls if c[0] == "dataset"]
    with deps.db.session() as s:  # that process died: its lease runs out and the run is taken over
        s.get(RetrainRun, run["id"]).lease_until = now - timedelta(seconds=1)
    driver.tick()
    assert retrain.get_run(deps, "acme", "coach-anna", run["id"])["status"] == "training"


def test_cancel_stops_the_job_and_nothing_is_promoted(deps: RegistryDeps, driver: RetrainDriver,
                                                      services: Services) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy())
    run = retrain.start_retrain(deps, "acme", "api-key:k1", "coach-anna")
    driver.tick()
    got = retrain.cancel_run(deps, "acme", "api-key:k2", "coach-anna", run["id"])
    assert got["status"] == "canceled" and ("cancel_job", "ftjob-r1") in services.calls
    with pytest.raises(FailedPrecondition):
        retrain.cancel_run(deps, "acme", "api-key:k2", "coach-anna", run["id"])
    services.job_status = trainer_pb2.JOB_STATUS_SUCCEEDED
    driver.tick()
    assert retrain.get_run(deps, "acme", "coach-anna", run["id"])["status"] == "canceled"
    assert history(deps)[0][0] == "retrain_canceled"


def test_new_gold_triggers_one_retrain(deps: RegistryDeps, driver: RetrainDriver, services: Services) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy())
    services.gold = 2
    driver.check_triggers(utcnow())
    assert retrain.list_runs(deps, "acme", "coach-anna")["data"] == []
    services.gold = 3
    driver.check_triggers(utcnow() + timedelta(seconds=1))
    runs = retrain.list_runs(deps, "acme", "coach-anna")["data"]
    assert [(r["trigger"], r["actor"]) for r in runs] == [("gold", "retrain-policy")]
    driver.check_triggers(utcnow() + timedelta(seconds=2))  # one under way: no second
    assert len(retrain.list_runs(deps, "acme", "coach-anna")["data"]) == 1


def test_schedule_needs_something_new(deps: RegistryDeps, driver: RetrainDriver, services: Services) -> None:
    retrain.put_policy(deps, "acme", "api-key:k1", "coach-anna", policy(trigger={"schedule_hours": 24}))
    later = utcnow() + timedelta(hours=25)
    driver.check_triggers(later)
    assert retrain.list_runs(deps, "acme", "coach-anna")["data"] == []
    services.gold = 1
    driver.check_triggers(later + timedelta(seconds=1))
    assert [r["trigger"] for r in retrain.list_runs(deps, "acme", "coach-anna")["data"]] == ["schedule"]


def test_policy_errors_name_the_field(deps: RegistryDeps) -> None:
    with pytest.raises(NotFound):
        retrain.put_policy(deps, "acme", "k", "coach-anna", policy(evaluation={
            "eval_id": "eval_missing", "data_source": {"type": "completions"}}))
    with pytest.raises(InvalidArgument) as err:
        retrain.put_policy(deps, "acme", "k", "coach-anna", policy(evaluation={
            "eval_id": "eval_coach", "testing_criteria": "tone", "data_source": {"type": "completions"}}))
    assert err.value.param == "evaluation.testing_criteria"
    with pytest.raises(InvalidArgument) as err:
        retrain.put_policy(deps, "acme", "k", "coach-anna", policy(evaluation={
            "eval_id": "eval_coach", "data_source": {"type": "completions", "model": "x"}}))
    assert err.value.param == "evaluation.data_source.model"
    with pytest.raises(InvalidArgument) as err:
        retrain.put_policy(deps, "acme", "k", "coach-anna", policy(training={"model": "gpt-4o"}))
    assert err.value.param == "training.model"
    with pytest.raises(FailedPrecondition):
        retrain.start_retrain(deps, "acme", "k", "coach-anna")  # no policy was stored
    with pytest.raises(NotFound):
        retrain.get_policy(deps, "acme", "coach-anna")
    stored = retrain.put_policy(deps, "acme", "k", "coach-anna", policy())
    assert stored["object"] == "avatar.retrain_policy" and stored["promotion"]["traffic_share"] == 20
    assert retrain.get_policy(deps, "acme", "coach-anna")["evaluation"]["margin"] == 0.05
    assert history(deps)[0][0] == "retrain_policy_set"
    assert retrain.delete_policy(deps, "acme", "k", "coach-anna")["deleted"] is True
