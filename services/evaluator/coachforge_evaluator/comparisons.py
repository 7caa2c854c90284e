"""Blind A/B comparisons with human votes (``/v1/comparisons``).

2-4 models answer the same prompts. The prompts are given inline (``prompts``), read from an
uploaded JSONL file (``file``: each line ``{"messages": [...]}`` or an evals item
``{"item": {"messages": [...]}}``) or taken from the tenant's stored chat completions
(``stored_completions``: a filter as for gold datasets; each one's request messages, without its
answer), at most :data:`MAX_PROMPTS` whatever the source. The answers come from the evaluator's own
run machinery: a comparison owns a hidden eval without testing criteria (the Evals API neither
lists nor serves it) and one ``completions`` run per model over the prompts (``item.messages``), so
they are sampled in the background, resumed after a crash and billed as evaluation like any run.
For each prompt and each unordered pair of models there is one pair; a voter is served the pairs
they have not judged, in an order and with left/right sides drawn for them from the comparison's
secret salt (the server recomputes, and keeps with the vote, which model was left), never with
model names. The next pair is found by one query, the voter's order computed in SQL from each
pair's random rank.

A comparison's status is ``generating`` (a run is queued or running), ``ready`` (every answer
generated: voting is open), ``canceled`` (asked to stop: its runs are canceled, voting is closed,
the votes cast are kept and the standings readable) or ``failed`` (a model's answers could not be
generated).

The votes that name a winner close the loop to training: ``GET /v1/comparisons/{id}/preferences``
gives them as OpenAI preference pairs (the prompt, the winner's answer preferred, the other's not),
a JSONL file to upload with purpose ``fine-tune`` for a ``dpo`` fine-tuning job.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coachforge.evaluator.v1 import evaluator_pb2
from coachforge.inference.v1 import inference_pb2
from coachforge_evaluator import repository, service, stats
from coachforge_evaluator.metrics import RUNS_CREATED
from coachforge_evaluator.models import Comparison, ComparisonPair, ComparisonVote, Eval, EvalRun, EvalRunItem
from coachforge_evaluator.repository import RANK_MODULUS
from coachforge_evaluator.schemas import SamplingParams, _Body, _metadata, parse
from coachforge_evaluator.service import EvaluatorDeps, FileReading, _descending, _limit, _page
from coachforge_shared.errors import Conflict, FailedPrecondition, Internal, InvalidArgument, NotFound, Unavailable
from coachforge_shared.ids import new_id, to_unix, utcnow
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.evaluator.comparisons")

MAX_PROMPTS = 500
"""Most prompts one comparison may have, whatever their source (a file or stored completions
with more are refused)."""
SOURCES = ("prompts", "file", "stored_completions")
"""The fields a comparison's prompts may come from: exactly one is given."""
FILE_PURPOSES = ("evals", "fine-tune")
"""An uploaded file of either purpose can give a comparison's prompts."""
ITEM_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"messages": {"type": "array"}},
                               "required": ["messages"]}


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class StoredCompletionsFilter(_Body):
    """Which stored chat completions give the prompts (the filter of a gold dataset's source)."""

    min_rating: int | None = Field(default=None, ge=1, le=5, description="Only completions rated at least this.")
    gold: bool | None = Field(default=None, description="true: only completions some rater marked gold.")
    model: str | None = Field(default=None, min_length=1, max_length=300,
                              description="Only this model (the one that answered, or as requested).")
    avatar: str | None = Field(default=None, min_length=1, max_length=300,
                               description="Only completions asked through this avatar.")
    metadata: dict[str, str] | None = Field(default=None, description="Only completions with all of these pairs.")
    created_after: int | None = Field(default=None, ge=0, description="Only completions created after (unix s).")
    limit: int | None = Field(default=None, ge=1, le=MAX_PROMPTS,
                              description="Take at most this many (oldest first); unset: all of them, which "
                                          f"must be at most {MAX_PROMPTS}.")


class CreateComparison(_Body):
    name: str | None = Field(default=None, max_length=200)
    models: list[str] = Field(min_length=2, max_length=4)
    prompts: list[list[Message]] | None = Field(default=None, min_length=1, max_length=MAX_PROMPTS)
    file: str | None = Field(default=None, min_length=1, max_length=64)
    stored_completions: StoredCompletionsFilter | None = None
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


# -- prompt sources ------------------------------------------------------------------------------

_MESSAGE = TypeAdapter(Message)


class _BadPrompt(ValueError):
    """A prompt that is not a list of {role, content} messages: where (a path) and why."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


def _prompt(value: Any, path: str, *, drop_answer: bool) -> list[dict[str, str]]:
    """``value`` as a prompt: chat messages with string contents (a content given as text parts is
    joined). With ``drop_answer``, a final assistant message (the answer of a conversation) is left
    out; what remains must not be empty."""
    if not isinstance(value, list):
        raise _BadPrompt(path, "not a list of messages")
    out: list[dict[str, str]] = []
    for i, message in enumerate(value):
        where = f"{path}[{i}]"
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            parts = message["content"]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in parts):
                raise _BadPrompt(f"{where}.content", "only text content can be compared")
            message = {**message, "content": "".join(p["text"] for p in parts)}
        if isinstance(message, dict):
            message = {k: message[k] for k in ("role", "content") if k in message}
        try:
            out.append(_MESSAGE.validate_python(message).model_dump())
        except ValidationError as err:
            first = err.errors()[0]
            field = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in first["loc"])
            raise _BadPrompt(where + field, first["msg"]) from None
    if drop_answer and out and out[-1]["role"] == "assistant":
        out.pop()
    if not out:
        raise _BadPrompt(path, "no message to ask (a prompt needs at least one message before any final answer)")
    return out


def _file_reading() -> FileReading:
    return FileReading(
        param="file", purposes=FILE_PURPOSES,
        purpose_rule="a comparison's prompts are read from a file uploaded with purpose 'evals' or 'fine-tune'.",
        limit=MAX_PROMPTS, too_many=f"A comparison may have at most {MAX_PROMPTS} prompts", noun="prompts",
        unavailable_param="file",
        unavailable="file cannot be read here (no dataset service is configured); pass the prompts inline "
                    "as prompts.")


def _file_item(file_id: str, number: int, raw: bytes) -> dict[str, Any]:
    """One line of a prompts file (``{"messages": [...]}`` or ``{"item": {"messages": [...]}}``) as
    the item of the answers' runs; a bad line is refused naming its number."""
    where = f"File {file_id}, line {number}: "
    try:
        obj = json.loads(raw)
    except ValueError as err:
        raise InvalidArgument(f"{where}invalid JSON ({err}).", param="file", code="invalid_file") from None
    if isinstance(obj, dict) and "messages" in obj:
        value, path = obj["messages"], "messages"
    elif isinstance(obj, dict) and isinstance(obj.get("item"), dict) and "messages" in obj["item"]:
        value, path = obj["item"]["messages"], "item.messages"
    else:
        raise InvalidArgument(f'{where}expected {{"messages": [...]}} or {{"item": {{"messages": [...]}}}}.',
                              param="file", code="invalid_file")
    try:
        return {"messages": _prompt(value, path, drop_answer=True), "file_line": number}
    except _BadPrompt as err:
        raise InvalidArgument(f"{where}{err}.", param="file", code="invalid_file") from None


def _file_items(deps: EvaluatorDeps, tenant_id: str, file_id: str) -> list[dict[str, Any]]:
    items, _ = service.read_file(deps, tenant_id, file_id, _file_reading(),
                                 lambda number, raw: _file_item(file_id, number, raw))
    return items


STORED = "stored_completions"


def _stored_request(flt: StoredCompletionsFilter) -> inference_pb2.ListStoredCompletionsRequest:
    # Without a limit, one more than a comparison may have is asked for: its arrival says "too many".
    request = inference_pb2.ListStoredCompletionsRequest(
        model=flt.model or "", avatar=flt.avatar or "", metadata=flt.metadata or {},
        created_after=flt.created_after or 0, limit=flt.limit or MAX_PROMPTS + 1)
    if flt.min_rating is not None:
        request.min_rating = flt.min_rating
    if flt.gold:
        request.gold = True
    return request


def _stored_items(deps: EvaluatorDeps, tenant_id: str, flt: StoredCompletionsFilter) -> list[dict[str, Any]]:
    """The request messages of the stored chat completions matching ``flt`` (their answer left out),
    read from inference."""
    if deps.inference is None:
        raise InvalidArgument("stored_completions cannot be read here (no inference service is configured).",
                              param=STORED, code="unsupported_source")
    shown = json.dumps(flt.model_dump(exclude_none=True), sort_keys=True)
    stream = deps.inference.stored_completions(tenant_id, _stored_request(flt))
    try:
        examples = list(itertools.islice(stream, MAX_PROMPTS + 1))
    except InvalidArgument as err:
        raise InvalidArgument(f"stored_completions: {err.message}", param=f"{STORED}.{err.param}" if err.param
                              else STORED, code=err.code) from None
    except (Unavailable, Internal) as err:
        raise Unavailable(f"Cannot read stored_completions from inference ({err.message}); try again.",
                          param=STORED) from None
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    if not examples:
        raise InvalidArgument(f"No stored chat completions match stored_completions {shown}.", param=STORED,
                              code="no_stored_completions")
    if len(examples) > MAX_PROMPTS:
        raise InvalidArgument(f"More than {MAX_PROMPTS} stored chat completions match stored_completions {shown}; "
                              f"a comparison may have at most {MAX_PROMPTS} prompts: narrow the filter or set "
                              "stored_completions.limit.", param=STORED, code="too_many_prompts")
    items = []
    for example in examples:
        try:
            messages = json.loads(example.messages_json)
            if not isinstance(messages, list) or not messages:
                raise _BadPrompt("messages", "not a list of messages")
            # The last message is the stored answer (or its correction): the models answer the rest.
            items.append({"messages": _prompt(messages[:-1], "messages", drop_answer=False),
                          "completion_id": example.id})
        except (ValueError, _BadPrompt) as err:
            raise InvalidArgument(f"Stored completion {example.id} cannot be a prompt: {err}.", param=STORED,
                                  code="invalid_stored_completion") from None
    return items


def _items(deps: EvaluatorDeps, tenant_id: str, req: CreateComparison) -> tuple[list[dict[str, Any]],
                                                                                  dict[str, Any]]:
    """The prompts as the items of the answers' runs, and the comparison's ``source``."""
    if req.file is not None:
        return _file_items(deps, tenant_id, req.file), {"type": "file", "file_id": req.file}
    if req.stored_completions is not None:
        return (_stored_items(deps, tenant_id, req.stored_completions),
                {"type": STORED, "filter": req.stored_completions.model_dump(exclude_none=True)})
    assert req.prompts is not None
    for i, prompt in enumerate(req.prompts):
        if not prompt:
            raise InvalidArgument("A prompt must have at least one message.", param=f"prompts[{i}]")
    return [{"messages": [m.model_dump() for m in prompt]} for prompt in req.prompts], {"type": "prompts"}


# -- create --------------------------------------------------------------------------------------


def create(deps: EvaluatorDeps, tenant_id: str, body: Any) -> dict[str, Any]:
    req = parse(CreateComparison, body)
    given = [name for name in SOURCES if getattr(req, name) is not None]
    if len(given) != 1:
        raise InvalidArgument("Give the prompts in exactly one of prompts, file or stored_completions"
                              + (f"; got {' and '.join(given)}." if given else "."),
                              param=given[1] if given else "prompts", code="invalid_source")
    for i, model in enumerate(req.models):
        if not model.strip() or len(model) > 300:
            raise InvalidArgument("A model id must be 1-300 characters.", param=f"models[{i}]")
        if model in req.models[:i]:
            raise InvalidArgument(f"The models must be distinct; {model!r} is given twice.", param=f"models[{i}]")
    if deps.registry is not None:
        for i, model in enumerate(req.models):
            try:
                deps.registry.model(tenant_id, model)
            except NotFound:
                raise InvalidArgument(f"The model {model!r} does not exist or you do not have access to it.",
                                      param=f"models[{i}]", code="model_not_found") from None
    items, source = _items(deps, tenant_id, req)
    now = utcnow()
    name = req.name or " vs ".join(req.models)
    params = req.sampling.model_dump(exclude_none=True) if req.sampling else {}
    cmp_id = new_id("cmp")
    hidden = Eval(id=new_id("eval"), tenant_id=tenant_id, name=f"comparison {cmp_id}",
                  data_source_config={"item_schema": ITEM_SCHEMA, "include_sample_schema": False},
                  testing_criteria=[], metadata_={}, created_at=now)
    rows = [{"item": item} for item in items]
    runs = [EvalRun(id=new_id("evalrun"), eval_id=hidden.id, tenant_id=tenant_id, name=f"{cmp_id} {model}",
                    model=model, status="queued", metadata_={"comparison_id": cmp_id}, cancel_requested=False,
                    created_at=now, data_source={
                        "type": "completions", "model": model,
                        "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
                        "sampling_params": params, "source": {"type": "file_content", "content": []}})
            for model in req.models]
    comparison = Comparison(id=cmp_id, tenant_id=tenant_id, eval_id=hidden.id, name=name, models=list(req.models),
                            run_ids=[r.id for r in runs], prompt_count=len(rows), salt=secrets.token_hex(16),
                            source=source, metadata_=req.metadata or {}, created_at=now)
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
                deps.publisher.publish_in(s, "eval.run.requested", evaluator_pb2.EvalRunRequested(
                    eval_id=hidden.id, run_id=run.id), tenant_id, key=run.id)
            RUNS_CREATED.labels(tenant_id).inc()
        s.bulk_insert_mappings(ComparisonPair, [
            {"id": new_id("pair"), "comparison_id": cmp_id, "prompt_index": i, "model_a": a, "model_b": b,
             "rank": secrets.randbelow(RANK_MODULUS)}
            for i in range(len(rows)) for a, b in itertools.combinations(req.models, 2)])
        out = _summary(comparison, "generating")
    log.info("comparison created", comparison_id=cmp_id, models=req.models, prompts=len(rows),
             source=source["type"])
    if deps.wake is not None:
        for run in runs:
            deps.wake(run.id)
    return out


# -- reading -------------------------------------------------------------------------------------


def _status(c: Comparison, runs: dict[str, EvalRun]) -> tuple[str, dict[str, Any] | None]:
    """canceled (asked to stop), generating (a run is queued or in progress), ready (all completed)
    or failed (one failed or was canceled on its own: its error)."""
    if c.canceled_at is not None:
        return "canceled", None
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


def _summary(c: Comparison, status: str, error: dict[str, Any] | None = None, votes: int = 0) -> dict[str, Any]:
    return {"id": c.id, "object": "comparison", "name": c.name, "status": status, "error": error,
            "models": list(c.models), "created_at": to_unix(c.created_at),
            "canceled_at": to_unix(c.canceled_at) if c.canceled_at is not None else None,
            "source": c.source or {"type": "prompts"}, "prompt_count": c.prompt_count,
            "pair_count": c.prompt_count * len(c.models) * (len(c.models) - 1) // 2, "vote_count": votes,
            "metadata": c.metadata_ or {}}


def _draw(salt: str, pair_id: str, voter: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{pair_id}:{voter}".encode()).digest()[:8], "big")


def _left_is_a(c: Comparison, pair_id: str, voter: str) -> bool:
    return _draw(c.salt + ":side", pair_id, voter) % 2 == 0


def _order(c: Comparison, voter: str) -> tuple[int, int]:
    """The voter's serving order: pairs by ``(rank * a + b) % RANK_MODULUS``, ``0 < a < RANK_MODULUS``."""
    digest = hashlib.sha256(f"{c.salt}:order:{voter}".encode()).digest()
    return (1 + int.from_bytes(digest[:8], "big") % (RANK_MODULUS - 1),
            int.from_bytes(digest[8:16], "big") % RANK_MODULUS)


def _text(sample: dict[str, Any] | None) -> str:
    output = (sample or {}).get("output") or [{}]
    return str(output[0].get("content", ""))


def _voting_open(s: Session, c: Comparison, what: str) -> None:
    """FailedPrecondition unless the comparison is ready."""
    status, error = _status(c, repository.runs_of(s, c.run_ids))
    if status == "ready":
        return
    why = {"generating": f"its answers are still being generated; {what} once it is ready.",
           "canceled": f"it was canceled, voting is closed (its standings stay readable); no {what}.",
           "failed": f"its answers could not all be generated; no {what}."}[status]
    raise FailedPrecondition(f"Comparison {c.id} is {status}: {why}" + (f" {error['message']}" if error else ""),
                             param="comparison_id", code=f"comparison_{status}")


def next_pair(deps: EvaluatorDeps, tenant_id: str, comparison_id: str, voter: str | None) -> dict[str, Any] | None:
    """A pair ``voter`` has not judged (None when none remain), with ``remaining`` (the pairs left for
    this voter, this one included); FailedPrecondition unless the comparison is ready."""
    voter = _voter(voter)
    with deps.db.session() as s:
        c = repository.comparison(s, tenant_id, comparison_id)
        _voting_open(s, c, "pairs are served")
        row = repository.next_pair(s, c.id, dict(zip(c.models, c.run_ids, strict=True)), voter, *_order(c, voter))
        if row is None:
            return None
        pair_id, item, sample_a, sample_b, remaining = row[0], row[4], row[5], row[6], row[7]
        left, right = (sample_a, sample_b) if _left_is_a(c, pair_id, voter) else (sample_b, sample_a)
        return {"object": "comparison.pair", "pair_id": pair_id, "comparison_id": c.id,
                "prompt": item["item"]["messages"], "left": {"content": _text(left)},
                "right": {"content": _text(right)}, "remaining": int(remaining)}


def vote(deps: EvaluatorDeps, tenant_id: str, comparison_id: str, body: Any) -> dict[str, Any]:
    req = parse(CreateVote, body)
    with deps.db.session() as s:
        c = repository.comparison(s, tenant_id, comparison_id)
        pair = s.scalar(select(ComparisonPair).where(ComparisonPair.id == req.pair_id,
                                                     ComparisonPair.comparison_id == c.id))
        if pair is None:
            raise NotFound(f"No pair with id {req.pair_id!r} in comparison {comparison_id!r}.",
                                   param="pair_id", code="pair_not_found")
        _voting_open(s, c, "votes are taken")
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


def preference_lines(deps: EvaluatorDeps, tenant_id: str, comparison_id: str) -> list[bytes]:
    """The votes as OpenAI preference pairs, the JSONL lines of a file a ``dpo`` fine-tuning job trains on:
    per vote with a winner, the prompt as ``input.messages``, the winner's answer as ``preferred_output``
    and the other's as ``non_preferred_output``, in voting order. Ties, and answers of equal text, teach
    no preference and are left out; a pair several voters preferred the same way is there once per vote."""
    with deps.db.session() as s:
        c = repository.comparison(s, tenant_id, comparison_id)
        votes = s.execute(select(ComparisonPair.prompt_index, ComparisonPair.model_a, ComparisonPair.model_b,
                                 ComparisonVote.winner_model)
                          .join(ComparisonPair, ComparisonPair.id == ComparisonVote.pair_id)
                          .where(ComparisonVote.comparison_id == c.id, ComparisonVote.winner_model.is_not(None))
                          .order_by(ComparisonVote.created_at, ComparisonVote.id)).all()
        answers = {(r.run_id, r.item_index): r for r in s.scalars(select(EvalRunItem).where(
            EvalRunItem.run_id.in_(list(c.run_ids)), EvalRunItem.status == "pass"))}
        run_of = dict(zip(c.models, c.run_ids, strict=True))
    lines = []
    for index, model_a, model_b, winner in votes:
        won = answers.get((run_of[winner], index))
        lost = answers.get((run_of[model_b if winner == model_a else model_a], index))
        if won is None or lost is None or _text(won.sample).strip() == _text(lost.sample).strip():
            continue
        lines.append(json.dumps({"input": {"messages": won.item["item"]["messages"]},
                                 "preferred_output": [{"role": "assistant", "content": _text(won.sample)}],
                                 "non_preferred_output": [{"role": "assistant", "content": _text(lost.sample)}]},
                                ensure_ascii=False).encode() + b"\n")
    return lines


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


def _full(s: Session, c: Comparison) -> dict[str, Any]:
    status, error = _status(c, repository.runs_of(s, c.run_ids))
    rows = s.execute(select(ComparisonVote.pair_id, ComparisonVote.voter, ComparisonPair.model_a,
                            ComparisonPair.model_b, ComparisonVote.winner_model)
                     .join(ComparisonPair, ComparisonPair.id == ComparisonVote.pair_id)
                     .where(ComparisonVote.comparison_id == c.id))
    votes = [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    return {**_summary(c, status, error, len(votes)), "results": results(list(c.models), votes)}


def get(deps: EvaluatorDeps, tenant_id: str, comparison_id: str) -> dict[str, Any]:
    """The comparison, and its standings from the votes so far."""
    with deps.db.session() as s:
        return _full(s, repository.comparison(s, tenant_id, comparison_id))


def list_(deps: EvaluatorDeps, tenant_id: str, *, after: str | None = None, limit: int = 20,
          order: str = "asc") -> dict[str, Any]:
    """The tenant's comparisons, a page at a time (by creation), without their standings."""
    with deps.db.session() as s:
        rows = repository.comparisons(s, tenant_id, after=after, limit=_limit(limit),
                                      descending=_descending(order))
        page = rows[:limit]
        runs = repository.runs_of(s, [r for c in page for r in c.run_ids])
        votes = repository.vote_counts(s, [c.id for c in page])
        return _page(rows, limit, lambda c: _summary(c, *_status(c, runs), votes.get(c.id, 0)))


# -- cancel and delete ---------------------------------------------------------------------------


def _stop_runs(runs: dict[str, EvalRun]) -> None:
    """Ask the comparison's unfinished runs to stop: a queued one is canceled at once, a running one
    after the answers in flight."""
    now = utcnow()
    for run in runs.values():
        if run.status in ("queued", "in_progress"):
            run.cancel_requested = True
            if run.status == "queued":
                run.status, run.finished_at = "canceled", now


def cancel(deps: EvaluatorDeps, tenant_id: str, comparison_id: str) -> dict[str, Any]:
    """Stop a generating or ready comparison: its runs are canceled and voting closes; the votes cast
    are kept and its standings stay readable."""
    with deps.db.session() as s:
        c = repository.comparison(s, tenant_id, comparison_id, lock=True)
        runs = repository.runs_of(s, c.run_ids, lock=True)
        status, _ = _status(c, runs)
        if status in ("canceled", "failed"):
            done = "been canceled" if status == "canceled" else "failed"
            raise Conflict(f"Comparison {comparison_id} has already {done}.", param="comparison_id",
                           code=f"comparison_{status}")
        _stop_runs(runs)
        c.canceled_at = utcnow()
        s.flush()
        out = _full(s, c)
    log.info("comparison canceled", comparison_id=comparison_id, was=status)
    return out


def delete(deps: EvaluatorDeps, tenant_id: str, comparison_id: str) -> dict[str, Any]:
    """Delete a comparison with its pairs, votes and answers; runs still generating are canceled (a
    worker sampling one stops at its next check, finding it gone)."""
    with deps.db.session() as s:
        c = repository.comparison(s, tenant_id, comparison_id, lock=True)
        _stop_runs(repository.runs_of(s, c.run_ids, lock=True))
        s.flush()
        repository.delete_comparison(s, c)
    log.info("comparison deleted", comparison_id=comparison_id)
    return {"id": comparison_id, "object": "comparison.deleted", "deleted": True}
