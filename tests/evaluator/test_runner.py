"""Eval runs as jobs, on a real (SQLite) database: executed in the background with bounded
concurrency, resumed after a worker dies without counting an item twice, cancelled, failed
clearly when the model cannot be sampled. The inference client is replaced by a scripted one
(the real one, over gRPC against the served model, is exercised by test_evals_sdk.py)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from coachforge_evaluator import repository, service
from coachforge_evaluator.clients import Sampled
from coachforge_evaluator.models import EvalRun, EvalRunItem
from coachforge_evaluator.runner import RunExecutor
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_evaluator.settings import EvaluatorSettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, NotFound, Unavailable
from coachforge_shared.ids import utcnow

TENANT = "acme"
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}, "a": {"type": "string"}}, "required": ["q", "a"]}
CRITERIA = [{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.a}}",
             "operation": "eq"}]


class ScriptedInference:
    """Answers each question with what ``answers`` says (or raises it), counting calls, optionally slowly."""

    def __init__(self, answers: dict[str, Any], delay: float = 0.0) -> None:
        self.answers, self.delay = answers, delay
        self.calls: list[str] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def sample(self, tenant_id: str, model: str, messages: list[dict[str, str]], params: dict[str, Any],
               user: str = "") -> Sampled:
        question = messages[-1]["content"]
        with self._lock:
            self.calls.append(question)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            answer = self.answers[question]
            if isinstance(answer, Exception):
                raise answer
            return Sampled(text=answer, finish_reason="stop", prompt_tokens=10, completion_tokens=3,
                           latency_s=0.05, ttft_s=0.01, model=model)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture
def deps(db: Database) -> EvaluatorDeps:
    create_tenant(db, TENANT)
    return EvaluatorDeps(db=db, settings=EvaluatorSettings(run_concurrency=3, sweep_interval_s=0.2,
                                                           lease_seconds=2))


def _eval(deps: EvaluatorDeps) -> str:
    return str(service.create_eval(deps, TENANT, {"data_source_config": {"type": "custom", "item_schema": SCHEMA,
                                                                         "include_sample_schema": True},
                                                  "testing_criteria": CRITERIA})["id"])


def _completions(eval_id: str, deps: EvaluatorDeps, items: list[dict[str, str]]) -> str:
    return str(service.create_run(deps, TENANT, eval_id, {"data_source": {
        "type": "completions", "model": "base",
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
        "source": {"type": "file_content", "content": [{"item": it} for it in items]}}})["id"])


def _wait(deps: EvaluatorDeps, eval_id: str, run_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = service.get_run(deps, TENANT, eval_id, run_id)
        if run["status"] in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run not finished: {run}")


ITEMS = [{"q": f"q{i}", "a": "yes"} for i in range(12)]


def test_a_run_is_sampled_with_bounded_concurrency_and_graded(deps: EvaluatorDeps) -> None:
    answers: dict[str, Any] = {f"q{i}": "yes" if i % 3 else "no" for i in range(12)}
    answers["q5"] = Unavailable("engine restarting")  # one item errors; the run goes on
    deps.inference = ScriptedInference(answers, delay=0.05)  # type: ignore[assignment]
    eval_id = _eval(deps)
    run_id = _completions(eval_id, deps, ITEMS)
    executor = RunExecutor(deps, "w1")
    executor.start()
    try:
        run = _wait(deps, eval_id, run_id)
    finally:
        executor.stop()
    assert run["status"] == "completed" and run["error"] is None
    assert run["result_counts"] == {"total": 12, "passed": 7, "failed": 4, "errored": 1}
    assert run["per_testing_criteria_results"] == [{"testing_criteria": "exact", "passed": 7, "failed": 4}]
    usage = run["per_model_usage"][0]  # 12 calls, one of which failed (no tokens)
    assert usage["invocation_count"] == 12 and usage["prompt_tokens"] == 110 and usage["completion_tokens"] == 33
    assert 1 < deps.inference.most_in_flight <= 3  # type: ignore[union-attr]
    errored = service.list_output_items(deps, TENANT, eval_id, run_id, status="error")["data"]
    assert [i["datasource_item_id"] for i in errored] == [5]
    assert errored[0]["sample"]["error"]["message"] == "engine restarting"


def test_a_dead_workers_run_is_resumed_without_counting_an_item_twice(deps: EvaluatorDeps) -> None:
    inference = ScriptedInference({f"q{i}": "yes" for i in range(12)})
    deps.inference = inference  # type: ignore[assignment]
    eval_id = _eval(deps)
    run_id = _completions(eval_id, deps, ITEMS)
    # A worker claimed the run, graded items 0-4, and died (its lease ran out).
    with deps.db.session() as s:
        assert repository.claim(s, run_id, "dead-worker", utcnow(), utcnow() - timedelta(seconds=1))
        for it in s.query(EvalRunItem).filter(EvalRunItem.run_id == run_id, EvalRunItem.item_index < 5):
            it.status, it.results, it.sample = "fail", [{"name": "exact", "type": "string_check", "score": 0.0,
                                                         "passed": False}], {"model": "base"}
    executor = RunExecutor(deps, "w2")
    executor.sweep()  # what the periodic sweep does: takes the run whose lease expired
    run = _wait(deps, eval_id, run_id)
    executor.stop()
    assert sorted(inference.calls) == sorted(f"q{i}" for i in range(5, 12))  # only the ungraded items
    assert run["result_counts"] == {"total": 12, "passed": 7, "failed": 5, "errored": 0}
    with deps.db.session() as s:
        assert s.get(EvalRun, run_id).worker_id == "w2"  # type: ignore[union-attr]
    # Writing an item's result again (a second worker racing) changes nothing.
    with deps.db.session() as s:
        first = repository.graded_items(s, run_id)[0]
        assert not repository.record_item(s, first.id, {"status": "pass"})


def test_cancel_a_queued_run_and_a_running_one(deps: EvaluatorDeps) -> None:
    deps.inference = ScriptedInference({f"q{i}": "yes" for i in range(12)}, delay=0.3)  # type: ignore[assignment]
    eval_id = _eval(deps)
    queued = _completions(eval_id, deps, ITEMS)
    assert service.cancel_run(deps, TENANT, eval_id, queued)["status"] == "canceled"
    with pytest.raises(Conflict):
        service.cancel_run(deps, TENANT, eval_id, queued)
    running = _completions(eval_id, deps, ITEMS)
    executor = RunExecutor(deps, "w1")
    executor.submit(running)
    time.sleep(0.3)
    service.cancel_run(deps, TENANT, eval_id, running)
    run = _wait(deps, eval_id, running)
    executor.stop()
    assert run["status"] == "canceled"
    graded = run["result_counts"]["passed"] + run["result_counts"]["failed"] + run["result_counts"]["errored"]
    assert 0 < graded < 12  # it stopped part way; what was graded stays
    assert service.delete_run(deps, TENANT, eval_id, running)["deleted"]


def test_an_unknown_model_fails_the_run_with_its_reason(deps: EvaluatorDeps) -> None:
    deps.inference = ScriptedInference({f"q{i}": NotFound("The model 'base' does not exist.", param="model")
                                        for i in range(12)})  # type: ignore[assignment]
    eval_id = _eval(deps)
    run_id = _completions(eval_id, deps, ITEMS)
    executor = RunExecutor(deps, "w1")
    executor.submit(run_id)
    run = _wait(deps, eval_id, run_id)
    executor.stop()
    assert run["status"] == "failed" and "does not exist" in run["error"]["message"]
    assert run["result_counts"]["passed"] == 0 and len(deps.inference.calls) < 12  # type: ignore[union-attr]


def test_jsonl_runs_need_no_model(deps: EvaluatorDeps) -> None:
    eval_id = _eval(deps)
    run_id = service.create_run(deps, TENANT, eval_id, {"data_source": {"type": "jsonl", "source": {
        "type": "file_content", "content": [{"item": {"q": "x", "a": "yes"}, "sample": {"output_text": "yes"}},
                                            {"item": {"q": "y", "a": "yes"}, "sample": {"output_text": "no"}}]}}})["id"]
    executor = RunExecutor(deps, "w1")
    executor.submit(run_id)
    run = _wait(deps, eval_id, run_id)
    executor.stop()
    assert run["result_counts"] == {"total": 2, "passed": 1, "failed": 1, "errored": 0}
    assert run["model"] == "" and run["per_model_usage"] == []


def test_an_eval_with_unfinished_runs_is_not_deleted(deps: EvaluatorDeps) -> None:
    deps.inference = ScriptedInference({})  # type: ignore[assignment]
    eval_id = _eval(deps)
    run_id = _completions(eval_id, deps, ITEMS[:1])  # queued; no executor takes it
    with pytest.raises(Conflict):
        service.delete_eval(deps, TENANT, eval_id)
    service.cancel_run(deps, TENANT, eval_id, run_id)
    assert service.delete_eval(deps, TENANT, eval_id)["deleted"]
    with pytest.raises(NotFound):
        service.get_run(deps, TENANT, eval_id, run_id)


class PricedInference(ScriptedInference):
    def price(self, tenant_id: str, model: str) -> tuple[str, float, float]:
        if model == "gone":
            raise NotFound("no such model")
        return model, 0.5, 2.0


class SizedRegistry:
    def model(self, tenant_id: str, model_id: str) -> Any:
        return type("Model", (), {"size_bytes": 3 * 2**20 if model_id.startswith("ft:") else 0})()


def test_a_comparison_names_each_models_price_and_size(deps: EvaluatorDeps) -> None:
    deps.inference = PricedInference({f"q{i}": "yes" for i in range(12)})  # type: ignore[assignment]
    deps.registry = SizedRegistry()  # type: ignore[assignment]
    facts = service._model_facts(deps, TENANT, "ft:base:acme:x:1", [{"prompt_tokens": 900, "completion_tokens": 100}])
    assert facts["adapter_bytes"] == 3 * 2**20 and facts["price_per_million"] == {"input": 0.5, "output": 2.0}
    assert facts["cost_usd"] == pytest.approx((900 * 0.5 + 100 * 2.0) / 1e6)
    assert facts["cost_per_million_tokens"] == pytest.approx(0.65)  # blended over 90% prompt, 10% completion
    assert service._model_facts(deps, TENANT, "base", [])["adapter_bytes"] is None  # a base model has none
    gone = service._model_facts(deps, TENANT, "gone", [])
    assert gone["price_per_million"] is None and gone["cost_usd"] is None  # not knowable now: said, not guessed
