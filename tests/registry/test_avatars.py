"""Registry: idempotent registration from job.succeeded, avatars, activation and rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.evaluator.v1 import evaluator_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_registry import service
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound

BASE = "SmolLM2-135M-Instruct"


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> RegistryDeps:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    return RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE]), artifacts_dir=tmp_path / "store",
                        platform_models_dir=tmp_path / "models")


def register(deps: RegistryDeps, tenant: str, job_id: str, name: str) -> None:
    event = trainer_pb2.JobSucceeded(job_id=job_id, base_model=BASE, fine_tuned_model=name,
                                     adapter_uri=f"/adapters/{job_id}", lora_rank=16,
                                     target_modules=["q_proj", "v_proj"])
    with deps.db.session() as s:
        service.on_job_succeeded(deps, s, Envelope(event_id=f"evt-{job_id}", tenant_id=tenant), event)


def test_registration_is_idempotent_per_job(deps: RegistryDeps) -> None:
    register(deps, "acme", "ftjob-1", f"ft:{BASE}:acme:v1:1")
    register(deps, "acme", "ftjob-1", f"ft:{BASE}:acme:v1:1")  # the same job again, e.g. replayed
    ids = [m.id for m in service.list_models(deps, "acme")]
    assert ids == [BASE, f"ft:{BASE}:acme:v1:1"]
    assert [m.id for m in service.list_models(deps, "globex")] == [BASE]
    with pytest.raises(NotFound):
        service.get_model(deps, "globex", f"ft:{BASE}:acme:v1:1")


def test_activate_and_roll_back_with_history(deps: RegistryDeps) -> None:
    v1, v2 = f"ft:{BASE}:acme:coach:1", f"ft:{BASE}:acme:coach:2"
    register(deps, "acme", "ftjob-1", v1)
    register(deps, "acme", "ftjob-2", v2)
    service.create_avatar(deps, "acme", "api-key:k1", "coach-anna", v1, reason="launch")
    assert service.get_model(deps, "acme", "coach-anna").id == v1
    assert service.get_model(deps, "acme", "coach-anna").adapter_name

    service.activate(deps, "acme", "api-key:k2", "coach-anna", v2, reason="better eval")
    assert service.get_model(deps, "acme", "coach-anna").id == v2
    service.rollback(deps, "acme", "api-key:k2", "coach-anna", reason="complaints")
    assert service.get_model(deps, "acme", "coach-anna").id == v1

    changes = service.history(deps, "acme", "coach-anna")
    assert [(c.action, c.from_model, c.to_model, c.actor, c.reason) for c in changes] == [
        ("rolled_back", v2, v1, "api-key:k2", "complaints"),
        ("activated", v1, v2, "api-key:k2", "better eval"),
        ("created", None, v1, "api-key:k1", "launch"),
    ]


def test_avatar_errors_are_typed_and_tenant_scoped(deps: RegistryDeps) -> None:
    service.create_avatar(deps, "acme", "a", "coach", BASE)
    with pytest.raises(Conflict):
        service.create_avatar(deps, "acme", "a", "coach", BASE)
    with pytest.raises(InvalidArgument) as err:
        service.create_avatar(deps, "acme", "a", "Bad Name", BASE)
    assert err.value.param == "name"
    with pytest.raises(InvalidArgument) as err:
        service.create_avatar(deps, "acme", "a", "other", "ft:nope")
    assert err.value.param == "model"
    with pytest.raises(FailedPrecondition):
        service.rollback(deps, "acme", "a", "coach")
    with pytest.raises(NotFound):
        service.get_avatar(deps, "globex", "coach")
    with pytest.raises(NotFound):
        service.get_model(deps, "globex", "coach")
    service.create_avatar(deps, "globex", "g", "coach", BASE)  # names are per tenant
    assert [a.name for a in service.list_avatars(deps, "globex")] == ["coach"]


def test_a_completed_eval_run_is_kept_on_its_version(deps: RegistryDeps) -> None:
    version = f"ft:{BASE}:acme:coach:1"
    register(deps, "acme", "ftjob-1", version)
    finished = evaluator_pb2.EvalRunFinished(eval_id="eval-1", eval_name="coach", run_id="evalrun-1", model=version,
                                             status="completed", total=10, passed=6, failed=3, errored=1,
                                             criteria_pass_rates={"valid": 0.9, "agrees": 0.6})
    with deps.db.session() as s:
        service.on_eval_run_succeeded(deps, s, Envelope(event_id="evt-eval-1", tenant_id="acme"), finished)
        # A run of a base model (or of another tenant's version) is not recorded anywhere.
        service.on_eval_run_succeeded(deps, s, Envelope(event_id="evt-eval-2", tenant_id="acme"),
                                      evaluator_pb2.EvalRunFinished(eval_id="eval-1", run_id="evalrun-2", model=BASE))
        service.on_eval_run_succeeded(deps, s, Envelope(event_id="evt-eval-3", tenant_id="globex"), finished)
    kept = json.loads(service.get_model(deps, "acme", version).evaluations_json)
    assert list(kept) == ["eval-1"] and kept["eval-1"]["actor"] == "eval-run:evalrun-1"
    assert kept["eval-1"]["metrics"] == {"pass_rate": 0.6, "items": 10.0, "errored": 1.0, "criteria.valid": 0.9,
                                         "criteria.agrees": 0.6}
