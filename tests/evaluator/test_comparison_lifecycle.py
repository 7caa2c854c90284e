"""A blind A/B comparison's life after creation, on SQLite and PostgreSQL: the next pair found by one
query in each voter's own order (with ``remaining``), pairs whose answer failed left out, listing,
cancel (runs stopped, votes kept, voting closed), failure, and delete (pairs, votes and answers
gone, runs still generating stopped). Answers come from the run executor with a scripted inference
stand-in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from coachforge_evaluator import comparisons, repository
from coachforge_evaluator.clients import Sampled
from coachforge_evaluator.models import Comparison, ComparisonPair, ComparisonVote, Eval, EvalRun, EvalRunItem
from coachforge_evaluator.runner import RunExecutor
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_evaluator.settings import EvaluatorSettings
from coachforge_shared import migrate
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, FailedPrecondition, NotFound, Unavailable

TENANT = "acme"
MODELS = ["base-model-x", "ft:coach-anna-y", "ft:coach-anna-z"]


class Answers:
    """Answers that never name the model; ``gate`` (when set) holds every answer until it opens, each
    then taking ``delay`` seconds; ``broken`` (model, question) pairs fail; an unknown model is NotFound."""

    def __init__(self) -> None:
        self.gate: threading.Event | None = None
        self.broken: set[tuple[str, str]] = set()
        self.started = threading.Event()
        self.delay = 0.0

    def sample(self, tenant_id: str, model: str, messages: list[dict[str, str]], params: dict[str, Any],
               user: str = "") -> Sampled:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        time.sleep(self.delay)
        question = messages[-1]["content"]
        if model == "missing-model":
            raise NotFound(f"The model {model!r} does not exist.", param="model")
        if (model, question) in self.broken:
            raise Unavailable("engine restarting")
        return Sampled(text=f"answer {MODELS.index(model)} to {question}", finish_reason="stop", prompt_tokens=2,
                       completion_tokens=2, latency_s=0.01, ttft_s=0.005, model=model)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, db: Database) -> Iterator[Database]:
    if request.param == "sqlite":
        yield db
        return
    url = request.getfixturevalue("scratch_postgres")
    migrate.upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def _deps(database: Database) -> EvaluatorDeps:
    for tenant in (TENANT, "globex"):
        create_tenant(database, tenant)
    return EvaluatorDeps(db=database, settings=EvaluatorSettings(run_concurrency=4, max_runs=4, sweep_interval_s=0.2,
                                                                 lease_seconds=2), inference=Answers())  # type: ignore[arg-type]


@pytest.fixture
def deps(db: Database) -> EvaluatorDeps:
    return _deps(db)


def _answers(deps: EvaluatorDeps) -> Answers:
    assert isinstance(deps.inference, Answers)
    return deps.inference


def _create(deps: EvaluatorDeps, prompts: int, models: list[str] | None = None, tenant: str = TENANT) -> str:
    created = comparisons.create(deps, tenant, {"models": models or MODELS, "prompts": [
        [{"role": "user", "content": f"q{i}"}] for i in range(prompts)]})
    return str(created["id"])


def _settle(deps: EvaluatorDeps, cmp_id: str, executor: RunExecutor | None = None) -> str:
    """Run the comparison's runs to their end; its status then."""
    own = executor is None
    executor = executor or RunExecutor(deps, "w1")
    executor.sweep()
    deadline = time.monotonic() + 30
    with deps.db.session() as s:
        run_ids = s.scalar(select(Comparison.run_ids).where(Comparison.id == cmp_id)) or []
    while True:
        with deps.db.session() as s:
            statuses = [r.status for r in repository.runs_of(s, run_ids).values()]
        if all(st in ("completed", "failed", "canceled") for st in statuses):
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.05)
    if own:
        executor.stop()
    return str(comparisons.get(deps, TENANT, cmp_id)["status"])


def _vote_all(deps: EvaluatorDeps, cmp_id: str, voter: str) -> list[dict[str, Any]]:
    served = []
    while (pair := comparisons.next_pair(deps, TENANT, cmp_id, voter)) is not None:
        served.append(pair)
        comparisons.vote(deps, TENANT, cmp_id, {"pair_id": pair["pair_id"], "voter": voter, "winner": "left"})
    return served


class Statements:
    """The SQL statements run on an engine while it is active."""

    def __init__(self, database: Database) -> None:
        self.engine, self.seen = database.engine, list[str]()

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement)

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)

    def touching(self, table: str) -> list[str]:
        return [s for s in self.seen if table in s]


def test_next_is_one_query_in_each_voters_own_order(database: Database) -> None:
    deps = _deps(database)
    cmp_id = _create(deps, 30)
    assert _settle(deps, cmp_id) == "ready"
    with deps.db.session() as s:
        c = repository.comparison(s, TENANT, cmp_id)
        ranks = {p.id: p.rank for p in s.scalars(select(ComparisonPair).where(ComparisonPair.comparison_id == cmp_id))}
        orders = {}
        for voter in ("ann", "bob"):
            a, b = comparisons._order(c, voter)
            orders[voter] = sorted(ranks, key=lambda p: ((ranks[p] * a + b) % repository.RANK_MODULUS, p))
    assert len(ranks) == 90 and all(0 <= r < repository.RANK_MODULUS for r in ranks.values())
    assert orders["ann"] != orders["bob"]
    with Statements(deps.db) as sql:
        first = comparisons.next_pair(deps, TENANT, cmp_id, "ann")
    assert first is not None and first["pair_id"] == orders["ann"][0] and first["remaining"] == 90
    # The pair, both answers, the voter's votes and the count: one query, whatever the size.
    assert len(sql.touching("comparison_pairs")) == 1
    assert len(sql.touching("eval_run_items")) == 1 and len(sql.touching("comparison_votes")) == 1
    assert comparisons.next_pair(deps, TENANT, cmp_id, "ann") == first  # the same until judged
    served = _vote_all(deps, cmp_id, "ann")
    assert [p["pair_id"] for p in served] == orders["ann"]
    assert [p["remaining"] for p in served] == list(range(90, 0, -1))
    bob = comparisons.next_pair(deps, TENANT, cmp_id, "bob")
    assert bob is not None and bob["pair_id"] == orders["bob"][0] and bob["remaining"] == 90


def test_pairs_whose_answer_failed_are_not_served(deps: EvaluatorDeps) -> None:
    _answers(deps).broken = {(MODELS[1], "q1")}
    cmp_id = _create(deps, 3)
    assert _settle(deps, cmp_id) == "ready"
    served = _vote_all(deps, cmp_id, "ann")
    # q1 lost the pairs with MODELS[1] (two of its three): 9 - 2 pairs are served.
    assert len(served) == 7 and served[0]["remaining"] == 7
    assert sum(1 for p in served if p["prompt"][0]["content"] == "q1") == 1


def test_list_pages_through_the_tenants_comparisons(deps: EvaluatorDeps) -> None:
    ids = [_create(deps, 1, MODELS[:2]) for _ in range(3)]
    other = _create(deps, 1, MODELS[:2], tenant="globex")
    first = comparisons.list_(deps, TENANT, limit=2)
    assert first["object"] == "list" and first["has_more"] is True
    assert [c["id"] for c in first["data"]] == ids[:2] and (first["first_id"], first["last_id"]) == tuple(ids[:2])
    rest = comparisons.list_(deps, TENANT, after=first["last_id"], limit=2)
    assert [c["id"] for c in rest["data"]] == ids[2:] and rest["has_more"] is False
    newest = comparisons.list_(deps, TENANT, order="desc")
    assert [c["id"] for c in newest["data"]] == ids[::-1]
    entry = newest["data"][0]
    assert entry["object"] == "comparison" and entry["status"] == "generating" and entry["vote_count"] == 0
    assert "results" not in entry and entry["source"] == {"type": "prompts"}
    assert [c["id"] for c in comparisons.list_(deps, "globex")["data"]] == [other]
    with pytest.raises(NotFound) as unknown:
        comparisons.list_(deps, TENANT, after=other)  # another tenant's id is no cursor here
    assert unknown.value.param == "after"
    assert _settle(deps, ids[0]) == "ready"
    _vote_all(deps, ids[0], "ann")
    listed = {c["id"]: c for c in comparisons.list_(deps, TENANT)["data"]}
    assert (listed[ids[0]]["status"], listed[ids[0]]["vote_count"]) == ("ready", 1)


def test_cancel_while_generating_stops_the_runs_and_closes_voting(deps: EvaluatorDeps) -> None:
    answers = _answers(deps)
    answers.gate, answers.delay = threading.Event(), 0.2
    cmp_id = _create(deps, 20)
    executor = RunExecutor(deps, "w1")
    executor.sweep()
    assert answers.started.wait(10)
    canceled = comparisons.cancel(deps, TENANT, cmp_id)
    assert canceled["status"] == "canceled" and canceled["canceled_at"] and canceled["results"]["vote_count"] == 0
    with deps.db.session() as s:
        run_ids = s.scalar(select(Comparison.run_ids).where(Comparison.id == cmp_id)) or []
        runs = list(repository.runs_of(s, run_ids).values())
        assert all(r.cancel_requested for r in runs)
    answers.gate.set()
    assert _settle(deps, cmp_id, executor) == "canceled"  # generation ending does not reopen it
    executor.stop()
    with deps.db.session() as s:
        statuses = {r.status for r in repository.runs_of(s, [r.id for r in runs]).values()}
        graded = s.scalar(select(func.count()).select_from(EvalRunItem).where(
            EvalRunItem.run_id.in_([r.id for r in runs]), EvalRunItem.status.is_not(None))) or 0
    assert statuses == {"canceled"} and graded < 20 * len(MODELS)
    with pytest.raises(FailedPrecondition) as closed:
        comparisons.next_pair(deps, TENANT, cmp_id, "ann")
    assert (closed.value.param, closed.value.code) == ("comparison_id", "comparison_canceled")
    with pytest.raises(Conflict) as again:
        comparisons.cancel(deps, TENANT, cmp_id)
    assert again.value.code == "comparison_canceled"
    assert comparisons.list_(deps, TENANT)["data"][0]["status"] == "canceled"


def test_cancel_a_ready_comparison_keeps_its_votes(deps: EvaluatorDeps) -> None:
    cmp_id = _create(deps, 2, MODELS[:2])
    assert _settle(deps, cmp_id) == "ready"
    first = comparisons.next_pair(deps, TENANT, cmp_id, "ann")
    assert first is not None
    comparisons.vote(deps, TENANT, cmp_id, {"pair_id": first["pair_id"], "voter": "ann", "winner": "tie"})
    pending = comparisons.next_pair(deps, TENANT, cmp_id, "ann")
    assert pending is not None and pending["remaining"] == 1
    out = comparisons.cancel(deps, TENANT, cmp_id)
    assert out["status"] == "canceled" and out["vote_count"] == 1
    assert out["results"]["models"][0]["ties"] == 1
    assert comparisons.get(deps, TENANT, cmp_id)["results"] == out["results"]  # still readable
    with pytest.raises(FailedPrecondition) as closed:
        comparisons.vote(deps, TENANT, cmp_id, {"pair_id": pending["pair_id"], "voter": "ann", "winner": "left"})
    assert closed.value.code == "comparison_canceled"
    with pytest.raises(NotFound):
        comparisons.cancel(deps, "globex", cmp_id)


def test_a_model_that_cannot_answer_fails_the_comparison(deps: EvaluatorDeps) -> None:
    cmp_id = _create(deps, 2, [MODELS[0], "missing-model"])
    assert _settle(deps, cmp_id) == "failed"
    out = comparisons.get(deps, TENANT, cmp_id)
    assert "missing-model" in out["error"]["message"]
    with pytest.raises(FailedPrecondition) as failed:
        comparisons.next_pair(deps, TENANT, cmp_id, "ann")
    assert failed.value.code == "comparison_failed"
    with pytest.raises(Conflict) as cancel:
        comparisons.cancel(deps, TENANT, cmp_id)
    assert cancel.value.code == "comparison_failed"


def _left(database: Database, cmp_id: str, eval_id: str) -> dict[str, int]:
    counts = {
        "comparisons": select(func.count()).select_from(Comparison).where(Comparison.id == cmp_id),
        "pairs": select(func.count()).select_from(ComparisonPair).where(ComparisonPair.comparison_id == cmp_id),
        "votes": select(func.count()).select_from(ComparisonVote).where(ComparisonVote.comparison_id == cmp_id),
        "evals": select(func.count()).select_from(Eval).where(Eval.id == eval_id),
        "runs": select(func.count()).select_from(EvalRun).where(EvalRun.eval_id == eval_id),
        "items": select(func.count()).select_from(EvalRunItem).join(EvalRun, EvalRun.id == EvalRunItem.run_id)
        .where(EvalRun.eval_id == eval_id),
    }
    with database.session() as s:
        return {name: s.scalar(q) or 0 for name, q in counts.items()}


def _eval_id(database: Database, cmp_id: str) -> str:
    with database.session() as s:
        return str(s.scalar(select(Comparison.eval_id).where(Comparison.id == cmp_id)))


def test_delete_removes_pairs_votes_and_answers(database: Database) -> None:
    deps = _deps(database)
    cmp_id, kept = _create(deps, 2, MODELS[:2]), _create(deps, 1, MODELS[:2])
    assert _settle(deps, cmp_id) == "ready"
    _vote_all(deps, cmp_id, "ann")
    eval_id = _eval_id(database, cmp_id)
    assert _left(database, cmp_id, eval_id) == {"comparisons": 1, "pairs": 2, "votes": 2, "evals": 1, "runs": 2,
                                                "items": 4}
    with pytest.raises(NotFound):
        comparisons.delete(deps, "globex", cmp_id)
    assert comparisons.delete(deps, TENANT, cmp_id) == {"id": cmp_id, "object": "comparison.deleted",
                                                        "deleted": True}
    assert set(_left(database, cmp_id, eval_id).values()) == {0}
    with pytest.raises(NotFound):
        comparisons.get(deps, TENANT, cmp_id)
    with pytest.raises(NotFound):
        comparisons.delete(deps, TENANT, cmp_id)
    assert [c["id"] for c in comparisons.list_(deps, TENANT)["data"]] == [kept]


def test_delete_while_generating_stops_the_runs(deps: EvaluatorDeps) -> None:
    answers = _answers(deps)
    answers.gate = threading.Event()
    cmp_id = _create(deps, 20)
    eval_id = _eval_id(deps.db, cmp_id)
    executor = RunExecutor(deps, "w1")
    executor.sweep()
    assert answers.started.wait(10)
    assert comparisons.delete(deps, TENANT, cmp_id)["deleted"] is True
    answers.gate.set()
    time.sleep(1)  # the workers notice the runs are gone and stop; nothing comes back
    executor.sweep()
    executor.stop()
    assert set(_left(deps.db, cmp_id, eval_id).values()) == {0}


def test_next_stays_fast_on_a_large_comparison(deps: EvaluatorDeps) -> None:
    """500 prompts x 4 models (3000 pairs), a voter with 2000 votes: the next pair is one quick query."""
    cmp_id = _create(deps, comparisons.MAX_PROMPTS, [*MODELS, "ft:coach-anna-w"])
    with deps.db.session() as s:  # the answers, as the runs would have written them
        c = repository.comparison(s, TENANT, cmp_id)
        s.execute(update(EvalRunItem).where(EvalRunItem.run_id.in_(c.run_ids)).values(
            status="pass", sample={"output": [{"role": "assistant", "content": "an answer"}]}))
        s.execute(update(EvalRun).where(EvalRun.id.in_(c.run_ids)).values(status="completed"))
        pairs = list(s.scalars(select(ComparisonPair).where(ComparisonPair.comparison_id == cmp_id)
                               .order_by(ComparisonPair.id)))
        assert len(pairs) == 3000
        s.add_all(ComparisonVote(id=f"vote-{i}", comparison_id=cmp_id, pair_id=p.id, voter="ann",
                                 left_model=p.model_a, winner_model=None) for i, p in enumerate(pairs[:2000]))
    comparisons.next_pair(deps, TENANT, cmp_id, "ann")  # warm
    started = time.perf_counter()
    pair = comparisons.next_pair(deps, TENANT, cmp_id, "ann")
    elapsed = time.perf_counter() - started
    assert pair is not None and pair["remaining"] == 1000
    assert pair["pair_id"] in {p.id for p in pairs[2000:]}
    assert elapsed < 0.5, elapsed
