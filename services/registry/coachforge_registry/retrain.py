"""Eval-gated retraining of an avatar (continuous learning).

An avatar's retrain policy says when to retrain (N new gold completions, a schedule, or by hand),
on what (the avatar's gold stored completions after seed files, through the dataset service's
cleaning), how (base model, hyperparameters), and what the new model must prove (its pass rate on
the policy's eval beats the active model's by the margin, with the paired 95% interval above
zero) before it becomes the avatar's candidate (a traffic share) or its active model.

A retrain run is a small state machine kept in ``retrain_runs``::

    queued ──dataset version, job──▶ training ──registered──▶ evaluating ──▶ promoted | rejected
       └──────────────────────────────┴──────────────────────────┴──────────▶ failed | canceled

:class:`RetrainDriver` advances runs in the background of every registry process: it takes a run's
lease (a compare-and-set, so several replicas share the work and a dead one's runs are taken
over), does the next step and writes its result at once, so a crash repeats at most one call. A
finished run never moves again, so a duplicate trigger or a repeated step cannot promote twice; a
failed, canceled or partial evaluation never promotes. Every decision lands in the avatar's history
with its numbers and is published as ``retrain.<status>``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from coachforge.registry.v1 import registry_pb2
from coachforge_registry import repository, service
from coachforge_registry.metrics import RETRAINS
from coachforge_registry.models import Avatar, RetrainPolicy, RetrainRun
from coachforge_registry.retrain_clients import JOB_DONE, RetrainClients
from coachforge_registry.schemas import RetrainPolicyBody
from coachforge_registry.service import RegistryDeps
from coachforge_shared.errors import (
    CoachForgeError,
    Conflict,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from coachforge_shared.ids import new_id, to_unix, utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.loops import BackgroundLoop

log = get_logger("coachforge.registry.retrain")

FINISHED = repository.RETRAIN_FINISHED
TRANSIENT = (Unavailable, Internal)
"""Errors of another service that a later pass retries (an outage, a restart); others end the run."""
Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""


def _not_configured() -> FailedPrecondition:
    return FailedPrecondition("Retraining needs the dataset, trainer and evaluator services; this registry has "
                              "no address for them.", code="retrain_unavailable")


# -- the decision ---------------------------------------------------------------------------------


def paired_difference_interval(n: int, only_candidate: int, only_baseline: int) -> tuple[float, float, float]:
    """The candidate's pass rate minus the baseline's on ``n`` paired items, and its 95% interval
    (Agresti & Min 2005: the Wald interval of matched proportions with 0.5 added to each cell,
    which keeps its coverage near 95% for small ``n`` and for discordant counts of 0)."""
    if n <= 0:
        return 0.0, -1.0, 1.0
    difference = (only_candidate - only_baseline) / n
    m = n + 2
    p_c, p_b = (only_candidate + 0.5) / m, (only_baseline + 0.5) / m
    se = math.sqrt(max(p_c + p_b - (p_c - p_b) ** 2, 0.0) / m)
    adjusted = p_c - p_b
    return difference, max(-1.0, adjusted - Z95 * se), min(1.0, adjusted + Z95 * se)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    numbers: dict[str, Any]


def decide(comparison: dict[str, Any], criterion: str | None, margin: float) -> Decision:
    """Promote when, on the primary criterion, the candidate's pass rate beats the baseline's by at
    least ``margin`` and the paired 95% interval of the difference lies above zero. ``comparison``
    is the evaluator's compare of [baseline run, candidate run]."""
    criteria = comparison.get("criteria") or []
    found = next((c for c in criteria if criterion is None or c.get("testing_criteria") == criterion), None)
    if found is None:
        names = ", ".join(str(c.get("testing_criteria")) for c in criteria) or "none"
        return Decision(False, f"the eval has no testing criterion {criterion!r} (it has: {names})", {})
    runs, paired = found.get("runs") or [], (found.get("paired") or [{}])[0]
    base, cand = [*runs, {}, {}][:2]
    n = int(paired.get("paired_items") or 0)
    only_candidate = int(paired.get("run_only_passed") or 0)
    only_baseline = int(paired.get("baseline_only_passed") or 0)
    difference, low, high = paired_difference_interval(n, only_candidate, only_baseline)
    numbers = {"testing_criteria": found.get("testing_criteria"), "paired_items": n,
               "baseline_pass_rate": base.get("pass_rate"), "candidate_pass_rate": cand.get("pass_rate"),
               "difference": difference, "interval": [low, high], "margin": margin,
               "candidate_only_passed": only_candidate, "baseline_only_passed": only_baseline,
               "p_value": paired.get("p_value")}
    said = (f"{numbers['testing_criteria']}: pass rate {_pct(base.get('pass_rate'))} → "
            f"{_pct(cand.get('pass_rate'))} on {n} items, difference {difference:+.3f} "
            f"(95% interval {low:+.3f} to {high:+.3f}), margin {margin:.3f}")
    if n == 0:
        return Decision(False, f"no item was graded for both models ({said})", numbers)
    if low <= 0:
        return Decision(False, f"not proven better: the interval includes zero or less ({said})", numbers)
    if difference < margin:
        return Decision(False, f"better, but by less than the margin ({said})", numbers)
    return Decision(True, f"proven better ({said})", numbers)


def _pct(rate: Any) -> str:
    return "-" if rate is None else f"{100 * float(rate):.1f}%"


# -- the API's logic ------------------------------------------------------------------------------


def policy_to_openai(avatar: Avatar, p: RetrainPolicy) -> dict[str, Any]:
    return {"object": "avatar.retrain_policy", "avatar": avatar.name, **json.loads(p.policy_json),
            "enabled": p.enabled, "actor": p.actor, "created_at": to_unix(p.created_at),
            "updated_at": to_unix(p.updated_at), "checked_at": to_unix(p.checked_at) if p.checked_at else None,
            "triggered_at": to_unix(p.triggered_at) if p.triggered_at else None}


def run_to_openai(avatar_name: str, r: RetrainRun) -> dict[str, Any]:
    return {"object": "avatar.retrain", "id": r.id, "avatar": avatar_name, "status": r.status, "trigger": r.trigger,
            "actor": r.actor, "dataset_version": r.dataset_version_id, "job_id": r.job_id, "model": r.model_id,
            "baseline_model": r.baseline_model, "eval_id": r.eval_id,
            "eval_runs": {"baseline": r.baseline_run_id, "candidate": r.candidate_run_id},
            "decision": json.loads(r.decision_json or "{}") or None, "error": r.error or None,
            "policy": json.loads(r.policy_json), "created_at": to_unix(r.created_at),
            "updated_at": to_unix(r.updated_at), "finished_at": to_unix(r.finished_at) if r.finished_at else None}


def _check_policy(deps: RegistryDeps, tenant_id: str, body: RetrainPolicyBody) -> None:
    if "model" in body.evaluation.data_source:
        raise InvalidArgument("evaluation.data_source must not name a model: each run gets the active or the new "
                              "one.", param="evaluation.data_source.model")
    if body.training.model is not None and body.training.model not in deps.settings.base_models:
        raise InvalidArgument(f"training.model must be a base model the engines serve "
                              f"({', '.join(deps.settings.base_models)}).", param="training.model")
    if body.training.suffix is not None and not service.SUFFIX.match(body.training.suffix):
        raise InvalidArgument("training.suffix is 1-64 letters, digits, '.', '_' or '-'.", param="training.suffix")
    if deps.retrain is None:
        raise _not_configured()
    found = deps.retrain.eval_(tenant_id, body.evaluation.eval_id)
    names = [c.get("name") for c in found.get("testing_criteria") or []]
    if not names:
        raise InvalidArgument("The eval has no testing criteria to decide with.", param="evaluation.eval_id")
    if body.evaluation.testing_criteria is not None and body.evaluation.testing_criteria not in names:
        raise InvalidArgument(f"The eval has no testing criterion {body.evaluation.testing_criteria!r} "
                              f"(it has: {', '.join(map(str, names))}).", param="evaluation.testing_criteria")


def put_policy(deps: RegistryDeps, tenant_id: str, actor: str, name: str, body: RetrainPolicyBody) -> dict[str, Any]:
    """Create or replace the avatar's retrain policy (recorded in its history)."""
    with deps.db.session() as s:
        repository.avatar(s, tenant_id, name)  # 404 before the other services are asked
    _check_policy(deps, tenant_id, body)
    policy = body.model_dump(mode="json", exclude={"enabled"})
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        p = repository.retrain_policy(s, avatar.id, lock=True)
        now = utcnow()
        if p is None:
            p = RetrainPolicy(avatar_id=avatar.id, tenant_id=tenant_id, created_at=now, triggered_at=now)
            s.add(p)
        p.enabled, p.policy_json, p.actor, p.updated_at = body.enabled, json.dumps(policy), actor, now
        service._record(s, avatar, "retrain_policy_set", avatar.active_model, actor, "",
                        enabled=body.enabled, policy=policy)
        s.flush()
        return policy_to_openai(avatar, p)


def get_policy(deps: RegistryDeps, tenant_id: str, name: str) -> dict[str, Any]:
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name)
        p = repository.retrain_policy(s, avatar.id)
        if p is None:
            raise NotFound(f"Avatar {name!r} has no retrain policy.", param="name", code="retrain_policy_not_found")
        return policy_to_openai(avatar, p)


def delete_policy(deps: RegistryDeps, tenant_id: str, actor: str, name: str) -> dict[str, Any]:
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        p = repository.retrain_policy(s, avatar.id, lock=True)
        if p is None:
            raise NotFound(f"Avatar {name!r} has no retrain policy.", param="name", code="retrain_policy_not_found")
        s.delete(p)
        service._record(s, avatar, "retrain_policy_deleted", avatar.active_model, actor, "")
    return {"object": "avatar.retrain_policy.deleted", "avatar": name, "deleted": True}


def _start(s: Any, avatar: Avatar, p: RetrainPolicy, trigger: str, actor: str, reason: str) -> RetrainRun:
    running = repository.retrain_in_progress(s, avatar.id)
    if running is not None:
        raise Conflict(f"Avatar {avatar.name!r} is already retraining ({running.id}, {running.status}).",
                       param="name", code="retrain_in_progress")
    now = utcnow()
    run = RetrainRun(id=new_id("rtr"), tenant_id=avatar.tenant_id, avatar_id=avatar.id, status="queued",
                     trigger=trigger, actor=actor, policy_json=p.policy_json, decision_json="{}",
                     error="", created_at=now, updated_at=now)
    if reason:
        run.decision_json = json.dumps({"requested_because": reason})
    s.add(run)
    p.triggered_at = now
    s.flush()
    log.info("retrain queued", avatar=avatar.name, run=run.id, trigger=trigger)
    return run


def start_retrain(deps: RegistryDeps, tenant_id: str, actor: str, name: str, reason: str = "",
                  trigger: str = "manual") -> dict[str, Any]:
    """Queue a retrain of the avatar under its policy (409 while one is under way)."""
    if deps.retrain is None:
        raise _not_configured()
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        p = repository.retrain_policy(s, avatar.id, lock=True)
        if p is None:
            raise FailedPrecondition(f"Avatar {name!r} has no retrain policy: PUT /v1/avatars/{name}/retrain-policy "
                                     "first.", param="name", code="retrain_policy_not_found")
        out = run_to_openai(avatar.name, _start(s, avatar, p, trigger, actor, reason))
    if deps.retrain_wake is not None:
        deps.retrain_wake()
    return out


def list_runs(deps: RegistryDeps, tenant_id: str, name: str, limit: int = 20) -> dict[str, Any]:
    if not 1 <= limit <= 100:
        raise InvalidArgument("limit must be between 1 and 100.", param="limit")
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name)
        rows = repository.retrain_runs(s, avatar.id, limit)
        return {"object": "list", "data": [run_to_openai(avatar.name, r) for r in rows],
                "has_more": len(rows) == limit}


def _run(s: Any, tenant_id: str, name: str, run_id: str) -> tuple[Avatar, RetrainRun]:
    avatar = repository.avatar(s, tenant_id, name)
    run = repository.retrain_run(s, tenant_id, run_id)
    if run is None or run.avatar_id != avatar.id:
        raise NotFound(f"Avatar {name!r} has no retrain {run_id!r}.", param="retrain_id", code="retrain_not_found")
    return avatar, run


def get_run(deps: RegistryDeps, tenant_id: str, name: str, run_id: str) -> dict[str, Any]:
    with deps.db.session() as s:
        avatar, run = _run(s, tenant_id, name, run_id)
        return run_to_openai(avatar.name, run)


def cancel_run(deps: RegistryDeps, tenant_id: str, actor: str, name: str, run_id: str) -> dict[str, Any]:
    """Stop a retrain under way: its job and eval runs are asked to stop; nothing is promoted."""
    with deps.db.session() as s:
        avatar, run = _run(s, tenant_id, name, run_id)
        if run.status in FINISHED:
            raise FailedPrecondition(f"Retrain {run_id!r} already ended ({run.status}).", param="retrain_id",
                                     code="retrain_finished")
        job_id, eval_id, runs = run.job_id, run.eval_id, [run.baseline_run_id, run.candidate_run_id]
        _finish(deps, s, avatar, run, "canceled", f"canceled by {actor}", {})
        out = run_to_openai(avatar.name, run)
    clients = deps.retrain
    if clients is not None:
        try:
            if job_id:
                clients.cancel_job(tenant_id, job_id)
            for eval_run in runs:
                if eval_id and eval_run:
                    clients.cancel_run(tenant_id, eval_id, eval_run)
        except CoachForgeError as err:  # already finished there: nothing left to stop
            log.info("retrain cancel: a step had ended", run=run_id, error=err.message)
    return out


def _finish(deps: RegistryDeps, s: Any, avatar: Avatar, run: RetrainRun, status: str, reason: str,
            numbers: dict[str, Any], record: bool = True) -> None:
    now = utcnow()
    decision = {**json.loads(run.decision_json or "{}"), **numbers, "status": status, "reason": reason}
    run.status, run.decision_json, run.updated_at, run.finished_at = status, json.dumps(decision), now, now
    run.lease_owner, run.lease_until = None, None
    if status == "failed":
        run.error = reason
    if record:
        service._record(s, avatar, f"retrain_{status}", avatar.active_model, f"retrain:{run.id}", reason,
                        retrain_id=run.id, model=run.model_id, baseline_model=run.baseline_model, **numbers)
    RETRAINS.labels(status=status).inc()
    if deps.publisher is not None:
        deps.publisher.publish_in(s, f"retrain.{status}", registry_pb2.RetrainFinished(
            run_id=run.id, avatar=avatar.name, status=status, model=run.model_id or "",
            baseline_model=run.baseline_model or "", reason=reason, decision_json=json.dumps(decision),
            trigger=run.trigger), avatar.tenant_id, key=avatar.name)
    log.info("retrain finished", avatar=avatar.name, run=run.id, status=status, reason=reason)


# -- the driver -----------------------------------------------------------------------------------


class RetrainDriver(BackgroundLoop):
    """Advances retrain runs and checks policies' triggers, in a thread of each registry process."""

    failure_message = "retrain pass failed"

    def __init__(self, deps: RegistryDeps, clients: RetrainClients, owner: str) -> None:
        super().__init__("retrain-driver", deps.settings.retrain_poll_interval_s)
        self.deps, self.clients, self.owner = deps, clients, owner
        self.settings = deps.settings
        self._last_trigger_check = 0.0

    def run_pass(self) -> None:
        self.tick()

    def tick(self, now: datetime | None = None) -> None:
        """One pass: advance every run nobody holds; check triggers when they are due."""
        now = now or utcnow()
        with self.deps.db.session() as s:
            ids = repository.claimable_retrains(s, now)
        for run_id in ids:
            if self.stopping.is_set():
                return
            self.advance(run_id)
        if now.timestamp() - self._last_trigger_check >= self.settings.retrain_trigger_check_s:
            self._last_trigger_check = now.timestamp()
            self.check_triggers(now)

    # --- one run ---

    def advance(self, run_id: str) -> None:
        """Take the run's lease and do its next step (each step writes its result before the next)."""
        now = utcnow()
        with self.deps.db.session() as s:
            if not repository.claim_retrain(s, run_id, self.owner, now,
                                            now + timedelta(seconds=self.settings.retrain_lease_s)):
                return
        try:
            while True:
                status = self._step(run_id)
                if status is None:
                    return
        except TRANSIENT as err:
            log.warning("retrain step failed; retrying later", run=run_id, error=err.message)
            self._note(run_id, f"retrying after: {err.message}")
        except CoachForgeError as err:
            self._fail(run_id, err.message)
        except Exception as err:  # a bug or an outage: retried on the next pass
            log.exception("retrain step failed; retrying later", run=run_id)
            self._note(run_id, f"retrying after: {err}")
        finally:
            with self.deps.db.session() as s:
                repository.release_retrain(s, run_id, self.owner)

    def _load(self, s: Any, run_id: str) -> tuple[Avatar, RetrainRun]:
        run = s.get(RetrainRun, run_id)
        avatar = s.get(Avatar, run.avatar_id)
        return avatar, run

    def _note(self, run_id: str, error: str) -> None:
        with self.deps.db.session() as s:
            run = s.get(RetrainRun, run_id)
            if run is not None and run.status not in FINISHED:
                run.error, run.updated_at = error[:2000], utcnow()

    def _fail(self, run_id: str, reason: str) -> None:
        with self.deps.db.session() as s:
            avatar, run = self._load(s, run_id)
            if run.status not in FINISHED:
                _finish(self.deps, s, avatar, run, "failed", reason, {})

    def _step(self, run_id: str) -> str | None:
        """Do the run's next step; the new status when another step can follow at once, else None."""
        with self.deps.db.session() as s:
            avatar, run = self._load(s, run_id)
            status, tenant = run.status, run.tenant_id
            policy = json.loads(run.policy_json)
            facts = {"avatar": avatar.name, "active_model": avatar.active_model, "dataset": run.dataset_version_id,
                     "job_id": run.job_id, "model": run.model_id, "eval_id": run.eval_id,
                     "baseline_run": run.baseline_run_id, "candidate_run": run.candidate_run_id,
                     "baseline_model": run.baseline_model}
            if status == "queued":
                base = policy["training"].get("model") or self._base_of(s, tenant, avatar.active_model)
        if status in FINISHED:
            return None
        if status == "queued":
            return self._train(run_id, tenant, policy, facts, base)
        if status == "training":
            return self._registered(run_id, tenant, policy, facts)
        if status == "evaluating":
            return self._evaluated(run_id, tenant, policy, facts)
        raise InvalidArgument(f"unknown retrain status {status!r}")

    def _base_of(self, s: Any, tenant_id: str, model_id: str) -> str:
        if model_id in self.settings.base_models:
            return model_id
        v = repository.version(s, tenant_id, model_id)
        if v is None:
            raise FailedPrecondition(f"the active model {model_id!r} is not registered; set training.model")
        return v.base_model

    def _save(self, run_id: str, **values: Any) -> None:
        with self.deps.db.session() as s:
            run = s.get(RetrainRun, run_id)
            if run.status in FINISHED:  # canceled meanwhile
                raise _Canceled
            for key, value in values.items():
                setattr(run, key, value)
            run.error, run.updated_at = "", utcnow()

    def _train(self, run_id: str, tenant: str, policy: dict[str, Any], facts: dict[str, Any], base: str) -> str | None:
        dataset, training = policy["dataset"], policy["training"]
        try:
            if not facts["dataset"]:
                # gold false means "rated or not": no gold filter at all.
                stored = {k: v for k, v in dataset["stored_completions"].items() if v not in (None, False)}
                request = {"name": dataset.get("name") or f"{facts['avatar']}-retrain", "files": dataset["files"],
                           "stored_completions": {**stored, "avatar": facts["avatar"]},
                           "validation_fraction": dataset["validation_fraction"], "scrub_pii": dataset["scrub_pii"],
                           "min_quality": dataset["min_quality"], "base_model": base}
                version = self.clients.build_dataset(tenant, request)
                facts["dataset"] = version.id
                self._save(run_id, dataset_version_id=version.id)
            job = self.clients.create_job(tenant, model=base, training_file=facts["dataset"],
                                          suffix=training.get("suffix") or facts["avatar"],
                                          hyperparameters=training.get("hyperparameters") or {},
                                          seed=int(training.get("seed") or 0))
            self._save(run_id, job_id=job.id, status="training")
        except _Canceled:
            return None
        return "training"

    def _registered(self, run_id: str, tenant: str, policy: dict[str, Any], facts: dict[str, Any]) -> str | None:
        job = self.clients.job(tenant, facts["job_id"])
        done = JOB_DONE.get(job.status)
        if done is None:
            return None  # still training
        if done != "succeeded":
            raise FailedPrecondition(f"the fine-tuning job {job.id} {done}: {job.error_message or 'no reason given'}")
        with self.deps.db.session() as s:
            registered = repository.version(s, tenant, job.fine_tuned_model) is not None
        if not registered:
            return None  # the registry's job.succeeded consumer has not registered it yet
        evaluation = policy["evaluation"]
        try:
            if not facts["model"]:
                facts["model"], facts["baseline_model"] = job.fine_tuned_model, facts["active_model"]
                self._save(run_id, model_id=job.fine_tuned_model, baseline_model=facts["active_model"],
                           eval_id=evaluation["eval_id"])
            for role in ("baseline", "candidate"):
                if facts[f"{role}_run"]:
                    continue
                model = facts["baseline_model"] if role == "baseline" else facts["model"]
                body = {"name": f"retrain {run_id} {role}", "metadata": {"retrain": run_id, "role": role},
                        "data_source": {**evaluation["data_source"], "model": model}}
                created = self.clients.create_run(tenant, evaluation["eval_id"], body)
                facts[f"{role}_run"] = created["id"]
                self._save(run_id, **{f"{role}_run_id": created["id"]})
            self._save(run_id, status="evaluating")
        except _Canceled:
            return None
        return "evaluating"

    def _evaluated(self, run_id: str, tenant: str, policy: dict[str, Any], facts: dict[str, Any]) -> str | None:
        eval_id, evaluation = facts["eval_id"], policy["evaluation"]
        runs = [self.clients.run(tenant, eval_id, facts[f"{role}_run"]) for role in ("baseline", "candidate")]
        if any(r.get("status") in ("queued", "in_progress") for r in runs):
            return None
        for role, r in zip(("baseline", "candidate"), runs, strict=True):
            counts = r.get("result_counts") or {}
            if r.get("status") != "completed":
                raise FailedPrecondition(f"the {role} evaluation run {r.get('id')} ended {r.get('status')}; "
                                         "nothing is promoted on a failed evaluation")
            if counts.get("errored"):
                raise FailedPrecondition(f"the {role} evaluation run {r.get('id')} is partial: {counts['errored']} "
                                         f"of {counts.get('total')} items errored; nothing is promoted")
        comparison = self.clients.compare(tenant, eval_id, [facts["baseline_run"], facts["candidate_run"]])
        decision = decide(comparison, evaluation.get("testing_criteria"), float(evaluation.get("margin") or 0.0))
        self._conclude(run_id, decision)
        return None

    def _conclude(self, run_id: str, decision: Decision) -> None:
        """Promote or reject, in one transaction with the run's end (so a retried pass cannot promote
        twice): a promotion is the avatar's history row (``activated`` or ``candidate_set``, with the
        numbers), a rejection a ``retrain_rejected`` one."""
        with self.deps.db.session() as s:
            run = s.get(RetrainRun, run_id, with_for_update=True)
            if run.status in FINISHED:
                return
            avatar = repository.avatar(s, run.tenant_id, s.get(Avatar, run.avatar_id).name, lock=True)
            promotion = json.loads(run.policy_json)["promotion"]
            why = decision.reason
            if decision.promote and avatar.active_model != run.baseline_model:
                decision = Decision(False, f"the active model changed during the evaluation (was "
                                           f"{run.baseline_model}, now {avatar.active_model}); {why}", decision.numbers)
            elif decision.promote and avatar.pinned:
                decision = Decision(False, f"the avatar is pinned; {why}", decision.numbers)
            if not decision.promote:
                _finish(self.deps, s, avatar, run, "rejected", decision.reason, decision.numbers)
                return
            actor, detail = f"retrain:{run_id}", {"retrain_id": run_id, **decision.numbers}
            assert run.model_id is not None
            if promotion["mode"] == "activate":
                service.activate_in(s, self.deps, avatar, actor, run.model_id, decision.reason, detail)
            else:
                service.set_candidate_in(s, self.deps, avatar, actor, run.model_id, promotion["traffic_share"],
                                         decision.reason, detail)
            numbers = {**decision.numbers, "promotion": promotion}
            _finish(self.deps, s, avatar, run, "promoted", decision.reason, numbers, record=False)

    # --- triggers ---

    def check_triggers(self, now: datetime) -> None:
        """Start a retrain for each enabled policy whose trigger fired (one process per check)."""
        with self.deps.db.session() as s:
            policies = [(p.avatar_id, p.checked_at) for p in repository.enabled_retrain_policies(s)]
        for avatar_id, seen in policies:
            try:
                self._check(avatar_id, seen, now)
            except CoachForgeError as err:
                log.warning("retrain trigger check failed", avatar_id=avatar_id, error=err.message)

    def _check(self, avatar_id: str, seen: datetime | None, now: datetime) -> None:
        with self.deps.db.session() as s:
            if not repository.claim_policy_check(s, avatar_id, seen, now):
                return
            p = repository.retrain_policy(s, avatar_id)
            avatar = s.get(Avatar, avatar_id)
            if p is None or avatar is None or repository.retrain_in_progress(s, avatar_id) is not None:
                return
            policy, since = json.loads(p.policy_json), p.triggered_at or p.created_at
            tenant, name = p.tenant_id, avatar.name
        trigger, stored = policy["trigger"], policy["dataset"]["stored_completions"]
        needed = trigger.get("min_new_gold")
        due_at = since + timedelta(hours=trigger["schedule_hours"]) if trigger.get("schedule_hours") else None
        if not needed and (due_at is None or now < due_at):
            return
        count = self.clients.count_gold(tenant, name, created_after=int(since.timestamp()), limit=needed or 1,
                                        min_rating=stored.get("min_rating"), metadata=stored.get("metadata"))
        fired = "gold" if needed and count >= needed else (
            "schedule" if due_at is not None and now >= due_at and count >= 1 else None)
        if fired is None:
            return
        with self.deps.db.session() as s:
            p = repository.retrain_policy(s, avatar_id, lock=True)
            avatar = s.get(Avatar, avatar_id)
            if p is None or not p.enabled or repository.retrain_in_progress(s, avatar_id) is not None:
                return
            _start(s, avatar, p, fired, "retrain-policy",
                   f"{count} new gold completions" if fired == "gold" else "scheduled")
        self.wake()


class _Canceled(Exception):
    """The run was canceled while a step was under way."""
