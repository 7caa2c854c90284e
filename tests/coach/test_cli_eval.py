"""``coachforge coach eval``: a thin client of the evaluator. The scenarios are a stored eval
(created once, then found by its metadata), each run samples the model on the scenario prompts
and the table comes from the run's output items.

In process: the evaluator's REST API (real router, database and run executor; a scripted model)
behind the official SDK. On the stack: the real base model, six items."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coachforge_evaluator import api as evaluator_api
from coachforge_evaluator.clients import Sampled
from coachforge_evaluator.runner import RunExecutor
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_evaluator.settings import EvaluatorSettings
from coachforge_launcher import cli
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.http import install_error_handlers
from polarize.plugins import parse_state, parse_today, parse_upcoming
from polarize.rules import recommend
from polarize.scenarios import EVAL_KIND, SCENARIOS, scenario_items

KEY = "cf-coach-eval-key"
HEADER = re.compile(r"^coach eval: \S+  \(run (evalrun-\w+), eval (eval-\w+), \w+\)$")


def ids(header: str) -> tuple[str, str]:
    """The run and eval ids in the table's first line."""
    match = HEADER.match(header)
    assert match is not None, header
    return match.group(1), match.group(2)


class RulesModel:
    """Answers every scenario prompt with the rule-based coach's answer; ``fresh`` ones with no change."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        for it in scenario_items(3):  # the CLI estimates tokens here (no tokenizer): the same prompts
            state, plan, today = parse_state(it["state"]), parse_upcoming(it["upcoming"]), parse_today(it["today"])
            self.answers[it["messages"][1]["content"]] = (
                '{"operations": [], "message": "Keep going."}' if it["scenario"] == "fresh"
                else recommend(state, plan, today).to_json())
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def sample(self, tenant_id: str, model: str, messages: list[dict[str, str]], params: dict[str, Any],
               user: str = "") -> Sampled:
        with self._lock:
            self.calls.append({"model": model, "params": params})
        return Sampled(text=self.answers[messages[-1]["content"]], finish_reason="stop", prompt_tokens=500,
                       completion_tokens=30, latency_s=0.01, ttft_s=0.001, model=model)


@pytest.fixture
def evaluator(db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RulesModel]:
    """The evaluator's REST API in this process; ``openai.OpenAI`` talks to it."""
    create_tenant(db, "acme")
    add_api_key(db, "acme", KEY)
    model = RulesModel()
    deps = EvaluatorDeps(db=db, settings=EvaluatorSettings(sweep_interval_s=0.1), inference=model)  # type: ignore[arg-type]
    executor = RunExecutor(deps, "cli-test")
    deps.wake = executor.submit
    app = FastAPI()
    app.state.evaluator = deps
    app.state.authenticator = Authenticator(db, internal_token="internal")
    install_error_handlers(app)
    app.include_router(evaluator_api.router)

    @app.get("/v1/models/{model_id:path}")
    def retrieve_model(model_id: str) -> dict[str, object]:  # the registry's answer for a base model
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "coachforge"}

    http = TestClient(app)
    real = openai.OpenAI

    def client(**kwargs: Any) -> openai.OpenAI:
        return real(**kwargs, http_client=http)

    monkeypatch.setattr(openai, "OpenAI", client)
    monkeypatch.setenv("COACHFORGE_MODELS_DIR", str(tmp_path / "no-models"))
    executor.start()
    try:
        yield model
    finally:
        executor.stop()
        http.close()


def test_the_cli_runs_the_stored_eval_and_prints_the_table(evaluator: RulesModel,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["coach", "eval", "--model", "coach-base", "--variants", "2", "--base-url", "http://stack:8000",
            "--api-key", KEY]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "created eval eval-" in err and "prompt tokens are estimated" in err
    lines = out.splitlines()
    assert lines[0].startswith("coach eval: coach-base  (run evalrun-") and lines[0].endswith(", completed)")
    rows = [line.split() for line in lines[3:15]]
    assert [r[0] for r in rows] == [f"{name}/{v}" for name, _ in SCENARIOS for v in (0, 1)]
    assert all(r[2:4] == ["yes", "yes"] for r in rows)  # valid and safe
    assert [r[4:6] for r in rows[:2]] == [["same", "x"], ["same", "x"]]  # fresh: no change is not "up"
    assert all(r[5] == "ok" and r[6] == "pass" for r in rows[2:])
    assert "items 12: 10 passed, 2 failed, 0 errored" in out
    assert "expected direction        10/12 (83%)" in out
    run_id, eval_id = ids(lines[0])
    assert f"--eval {eval_id} --like {run_id}" in out
    params = evaluator.calls[0]["params"]
    assert params["temperature"] == 0 and params["response_format"]["type"] == "json_schema"
    assert {c["model"] for c in evaluator.calls} == {"coach-base"} and len(evaluator.calls) == 12

    # a second eval reuses the stored eval: found by its metadata
    assert cli.main([*argv[:4], "--variants", "1", *argv[6:]]) == 0
    out, err = capsys.readouterr()
    assert "created eval" not in err and f"eval {eval_id}, completed)" in out
    assert "items 6: 5 passed, 1 failed, 0 errored" in out
    client = openai.OpenAI(base_url="http://stack:8000/v1", api_key=KEY)
    evals = [e for e in client.evals.list(limit=100) if (e.metadata or {}).get("kind") == EVAL_KIND]
    assert [e.id for e in evals] == [eval_id]
    runs = list(client.evals.runs.list(eval_id, limit=100))
    assert sorted(r.result_counts.total for r in runs) == [6, 12]
    assert all(r.metadata and r.metadata["tokens"] == "estimate" for r in runs)


def test_bad_arguments_and_a_bad_key(evaluator: RulesModel, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["coach", "eval", "--model", "m", "--variants", "0", "--api-key", KEY]) == 2
    assert "--variants must be at least 1" in capsys.readouterr().err
    assert cli.main(["coach", "eval", "--model", "m", "--base-url", "http://stack:8000/v1",
                     "--api-key", "cf-wrong"]) == 1
    assert "401" in capsys.readouterr().err


@pytest.mark.stack
def test_the_cli_evaluates_the_base_model_on_the_stack(stack) -> None:  # type: ignore[no-untyped-def]
    from coachforge_launcher.models import BASE_MODEL_ID

    done = subprocess.run([str(Path(sys.executable).parent / "coachforge"), "coach", "eval", "--model",
                           BASE_MODEL_ID, "--variants", "1", "--max-answer-tokens", "96", "--base-url",
                           stack.base_url, "--api-key", stack.api_key], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"coach eval: {BASE_MODEL_ID}  (run evalrun-")
    run_id, eval_id = ids(lines[0])
    assert [line.split()[0] for line in lines[3:9]] == [f"{name}/0" for name, _ in SCENARIOS]

    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120)
    got = client.evals.retrieve(eval_id)
    assert got.metadata and got.metadata["kind"] == EVAL_KIND
    run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
    assert run.status == "completed" and run.model == BASE_MODEL_ID
    counts = run.result_counts
    assert counts.total == 6 and counts.passed + counts.failed + counts.errored == 6
    by_name = {r.testing_criteria: r.passed + r.failed for r in run.per_testing_criteria_results}
    assert set(by_name) == {"valid", "safe", "direction"} and all(n <= 6 for n in by_name.values())
    items = list(client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100))
    assert sorted(str(it.datasource_item["scenario"]) for it in items) == sorted(name for name, _ in SCENARIOS)
    for it in items:
        assert it.sample.input[0].role == "system"
        assert str(it.datasource_item["athlete"]) in it.sample.input[1].content
        if it.status != "error":
            assert [r.name for r in it.results] == ["valid", "safe", "direction"]
