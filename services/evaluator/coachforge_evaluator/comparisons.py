"""Blind A/B comparisons with human votes (``/v1/comparisons``).

2-4 models answer the same prompts. The answers come from the evaluator's own run machinery: a
comparison owns a hidden eval without testing criteria (the Evals API neither lists nor serves it)
and one ``completions`` run per model over the prompts (``item.messages``), so they are sampled in
the background, resumed after a crash and billed as evaluation like any run. For each prompt and
each unordered pair of models there is one pair; a voter is served the pairs they have not judged,
in an order and with left/right sides drawn for them from the comparison's secret salt (the server
recomputes, and keeps with the vote, which model was left), never with model names.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from typing import Any, Literal

from pydantic import Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coachforge.evaluator.v1 import evaluator_pb2
from coachforge_evaluator import repository, stats
from coachforge_evaluator.metrics import RUNS_CREATED
from coachforge_evaluator.models import Comparison, ComparisonPair, ComparisonVote, Eval, EvalRun, EvalRunItem
from coachforge_evaluator.schemas import SamplingParams, _Body, _metadata, parse
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_shared.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from coachforge_shared.ids import new_id, to_unix, utcnow
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.evaluator.comparisons")

MAX_PROMPTS = 500
ITEM_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"messages": {"type": "array"}},
                               "required": ["messages"]}


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class CreateComparison(_Body):
    name: str | None = Field(default=None, max_length=200)
    models: list[str] = Field(min_length=2, max_length=4)
    prompts: list[list[Message]] = Field(min_length=1, max_length=MAX_PROMPTS)
    sampling: SamplingParams | None = None
    metadata: dict[str, str] | None = None

    _check_metadata = field_validator("metadata")(_metadata)


class CreateVote(_Body):
    pair_id: str = Field(min_length=1, max_length=64)
    voter: str = Field(min_length=1, max_length=256)
    winner: Literal["left", "right", "tie"]


def _voter(voter: str | None) -> str:
    if not voter or len(voter) > 256:
        raise InvalidArgument("voter is required (1-256 characters).", param="voter")
    return voter


# -- create --------------------------------------------------------------------------------------


def create(deps: EvaluatorDeps, tenant_id: str, body: Any) -> dict[str, Any]:
    req = parse(CreateComparison, body)
    for i, model in enumerate(req.models):
        if not model.strip() or len(model) > 300:
            raise InvalidArgument("A model id must be 1-300 characters.", param=f"models[{i}]")
        if model in req.models[:i]:
            raise InvalidArgument(f"The models must be distinct; {model!r} is given twice.", param=f"models[{i}]")
    for i, prompt in enumerate(req.prompts):
        if not prompt:
            raise InvalidArgument("A prompt must have at least one message.", param=f"prompts[{i}]")
    if deps.registry is not None:
        for i, model in enumerate(req.models):
            try:
                deps.registry.model(tenant_id, model)
            except NotFound:
                raise InvalidArgument(f"The model {model!r} does not exist or you do not have access to it.",
                                      param=f"models[{i}]", code="model_not_found") from None
    now = utcnow()
    name = req.name or " vs ".join(req.models)
    params = req.sampling.model_dump(exclude_none=True) if req.sampling else {}
    cmp_id = new_id("cmp")
    hidden = Eval(id=new_id("eval"), tenant_id=tenant_id, name=f"comparison {cmp_id}",
                  data_source_config={"item_schema": ITEM_SCHEMA, "include_sample_schema": False},
                  testing_criteria=[], metadata_={}, created_at=now)
    rows = [{"item": {"messages": [m.model_dump() for m in prompt]}} for prompt in req.prompts]
    runs = [EvalRun(id=new_id("evalrun"), eval_id=hidden.id, tenant_id=tenant_id, name=f"{cmp_id} {model}",
                    model=model, status="queued", metadata_={"comparison_id": cmp_id}, cancel_requested=False,
                    created_at=now, data_source={
                        "type": "completions", "model": model,
                        "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
                        "sampling_params": params, "source": {"type": "file_content", "content": []}})
            for model in req.models]
    comparison = Comparison(id=cmp_id, tenant_id=tenant_id, eval_id=hidden.id, name=name, models=list(req.models),
                            run_ids=[r.id for r in runs], prompt_count=len(rows), salt=secrets.token_hex(16),
                            metadata_=req.metadata or {}, created_at=now)
    with deps.db.session() as s:
        s.add(hidden)
        s.flush()
        s.add(comparison)
        s.add_all(runs)
        s.flush()
        for run in runs:
            repository.add_items(s, [{"id": new_id("outputitem"), "run_id": run.id, "item_index": i, "item": row,
                                      "prompt_tokens": 0, "completion_tokens": 0} for i, row in enumerate(rows)])
            if deps.publisher is not None:
                deps.publisher.publish("eval.run.requested",
                                       evaluator_pb2.EvalRunRequested(eval_id=hidden.id, run_id=run.id), tenant_id,
                                       key=run.id)
            RUNS_CREATED.labels(tenant_id).inc()
        s.bulk_insert_mappings(ComparisonPair, [
            {"id": new_id("pair"), "comparison_id": cmp_id, "prompt_index": i, "model_a": a, "model_b": b}
            for i in range(len(rows)) for a, b in itertools.combinations(req.models, 2)])
        out = _summary(comparison, "generating")
    log.info("comparison created", comparison_id=cmp_id, models=req.models, prompts=len(rows))
    if deps.wake is not None:
        for run in runs:
            deps.wake(run.id)
    return out


# -- reading -------------------------------------------------------------------------------------


def _comparison(s: Session, tenant_id: str, comparison_id: str) -> Comparison:
    found: Comparison | None = s.scalar(select(Comparison).where(Comparison.id == comparison_id,
                                                                 Comparison.tenant_id == tenant_id))
    if found is None:
        raise NotFound(f"No comparison with id {comparison_id!r}.", param="comparison_id",
                       code="comparison_not_found")
    return found


def _status(s: Session, c: Comparison) -> tuple[str, dict[str, Any] | None]:
    """generating (a run is queued or in progress), ready (all completed) or failed (one failed or
    was canceled: its error)."""
    runs = {r.id: r for r in s.scalars(select(EvalRun).where(EvalRun.id.in_(c.run_ids)))}
    for run_id in c.run_ids:
        run = runs.get(run_id)
        if run is None or run.status in ("failed", "canceled"):
            reason = (run.error_message or run.status) if run is not None else "deleted"
            return "failed", {"code": (run.error_code if run is not None else None) or "generation_failed",
                              "message": f"Answers of {run.model if run else run_id} could not be generated: "
                                         f"{reason}"}
    if all(runs[r].status == "completed" for r in c.run_ids):
        return "ready", None
    return "generating", None


def _summary(c: Comparison, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": c.id, "object": "comparison", "name": c.name, "status": status, "error": error,
            "models": list(c.models), "created_at": to_unix(c.created_at), "prompt_count": c.prompt_count,
            "pair_count": c.prompt_count * len(c.models) * (len(c.models) - 1) // 2, "metadata": c.metadata_ or {}}


def _answers(s: Session, c: Comparison) -> dict[tuple[str, int], EvalRunItem]:
    """(model, prompt index) -> its answer, for answers that were generated (not errored)."""
    model_of = dict(zip(c.run_ids, c.models, strict=True))
    items = s.scalars(select(EvalRunItem).where(EvalRunItem.run_id.in_(c.run_ids), EvalRunItem.status == "pass"))
    return {(model_of[it.run_id], it.item_index): it for it in items}


def _draw(salt: str, pair_id: str, voter: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{pair_id}:{voter}".encode()).digest()[:8], "big")


def _left_is_a(c: Comparison, pair_id: str, voter: str) -> bool:
    return _draw(c.salt + ":side", pair_id, voter) % 2 == 0


def _text(it: EvalRunItem) -> str:
    output = (it.sample or {}).get("output") or [{}]
    return str(output[0].get("content", ""))


def next_pair(deps: EvaluatorDeps, tenant_id: str, comparison_id: str, voter: str | None) -> dict[str, Any] | None:
    """A pair ``voter`` has not judged (None when none remain); FailedPrecondition while generating."""
    voter = _voter(voter)
    with deps.db.session() as s:
        c = _comparison(s, tenant_id, comparison_id)
        status, error = _status(s, c)
        if status != "ready":
            raise FailedPrecondition(f"Comparison {comparison_id} is {status}; pairs are served once it is ready."
                                     + (f" {error['message']}" if error else ""), param="comparison_id",
                                     code=f"comparison_{status}")
        judged = set(s.scalars(select(ComparisonVote.pair_id).where(ComparisonVote.comparison_id == c.id,
                                                                     ComparisonVote.voter == voter)))
        pairs = [p for p in s.scalars(select(ComparisonPair).where(ComparisonPair.comparison_id == c.id))
                 if p.id not in judged]
        answers = _answers(s, c)
        pairs = [p for p in pairs if (p.model_a, p.prompt_index) in answers and (p.model_b, p.prompt_index) in answers]
        if not pairs:
            return None
        pair = min(pairs, key=lambda p: _draw(c.salt, p.id, voter))
        a, b = answers[(pair.model_a, pair.prompt_index)], answers[(pair.model_b, pair.prompt_index)]
        left, right = (a, b) if _left_is_a(c, pair.id, voter) else (b, a)
        return {"object": "comparison.pair", "pair_id": pair.id, "comparison_id": c.id,
                "prompt": a.item["item"]["messages"], "left": {"content": _text(left)},
                "right": {"content": _text(right)}, "remaining": len(pairs)}


def vote(deps: EvaluatorDeps, tenant_id: str, comparison_id: str, body: Any) -> dict[str, Any]:
    req = parse(CreateVote, body)
    with deps.db.session() as s:
        c = _comparison(s, tenant_id, comparison_id)
        pair = s.scalar(select(ComparisonPair).where(ComparisonPair.id == req.pair_id,
                                                     ComparisonPair.comparison_id == c.id))
        if pair is None:
            raise NotFound(f"No pair with id {req.pair_id!r} in comparison {comparison_id!r}.", param="pair_id",
                           code="pair_not_found")
        left, right = ((pair.model_a, pair.model_b) if _left_is_a(c, pair.id, req.voter)
                       else (pair.model_b, pair.model_a))
        winner = {"left": left, "right": right, "tie": None}[req.winner]
        already = Conflict(f"Voter {req.voter!r} has already voted on pair {req.pair_id}.", param="pair_id",
                           code="already_voted")
        if s.scalar(select(ComparisonVote.id).where(ComparisonVote.pair_id == pair.id,
                                                    ComparisonVote.voter == req.voter)) is not None:
            raise already
        row = ComparisonVote(id=new_id("vote"), comparison_id=c.id, pair_id=pair.id, voter=req.voter,
                             left_model=left, winner_model=winner, created_at=utcnow())
        s.add(row)
        try:
            s.flush()  # two votes racing: the unique (pair_id, voter) keeps one
        except IntegrityError:
            raise already from None
        return {"object": "comparison.vote", "id": row.id, "comparison_id": c.id, "pair_id": pair.id,
                "voter": req.voter, "winner": req.winner, "created_at": to_unix(row.created_at)}


def results(models: list[str], votes: list[tuple[str, str, str, str, str | None]]) -> dict[str, Any]:
    """The standings from votes ``(pair_id, voter, model_a, model_b, winner or None for a tie)``."""
    tally = {m: {"wins": 0, "losses": 0, "ties": 0} for m in models}
    index = {m: i for i, m in enumerate(models)}
    wins = [[0.0] * len(models) for _ in models]
    per_voter: dict[str, int] = {}
    by_pair: dict[str, list[str | None]] = {}
    for pair_id, voter, a, b, winner in votes:
        per_voter[voter] = per_voter.get(voter, 0) + 1
        by_pair.setdefault(pair_id, []).append(winner)
        if winner is None:
            tally[a]["ties"] += 1
            tally[b]["ties"] += 1
            wins[index[a]][index[b]] += 0.5
            wins[index[b]][index[a]] += 0.5
        else:
            loser = b if winner == a else a
            tally[winner]["wins"] += 1
            tally[loser]["losses"] += 1
            wins[index[winner]][index[loser]] += 1
    standings = []
    for m in models:
        t = tally[m]
        n = t["wins"] + t["losses"] + t["ties"]
        score = t["wins"] + t["ties"] / 2
        low, high = stats.wilson_interval(score, n)
        standings.append({"model": m, **t, "votes": n, "win_rate": score / n if n else None, "interval": [low, high]})
    several = [w for w in by_pair.values() if len(w) > 1]
    agreeing = sum(1 for w in several if len(set(w)) == 1)
    out: dict[str, Any] = {
        "vote_count": len(votes), "models": standings, "votes_per_voter": dict(sorted(per_voter.items())),
        "agreement": {"pairs_with_several_votes": len(several), "pairs_all_agree": agreeing,
                      "rate": agreeing / len(several) if several else None}}
    if len(models) > 2:
        scores = stats.bradley_terry(wins) if votes else [1.0 / len(models)] * len(models)
        out["bradley_terry"] = [{"model": m, "score": x} for m, x in zip(models, scores, strict=True)]
    return out


def get(deps: EvaluatorDeps, tenant_id: str, comparison_id: str) -> dict[str, Any]:
    """The comparison, and its standings from the votes so far."""
    with deps.db.session() as s:
        c = _comparison(s, tenant_id, comparison_id)
        status, error = _status(s, c)
        rows = s.execute(select(ComparisonVote.pair_id, ComparisonVote.voter, ComparisonPair.model_a,
                                ComparisonPair.model_b, ComparisonVote.winner_model)
                         .join(ComparisonPair, ComparisonPair.id == ComparisonVote.pair_id)
                         .where(ComparisonVote.comparison_id == c.id))
        votes = [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
        return {**_summary(c, status, error), "results": results(list(c.models), votes)}
