"""Evaluator logic: evals (data source config + testing criteria), runs (queued as jobs, executed by
:mod:`coachforge_evaluator.runner`), their output items, and comparisons of runs on the same items."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, TypeVar

import jsonschema
from pydantic import Field, TypeAdapter

from coachforge.evaluator.v1 import evaluator_pb2
from coachforge_evaluator import graders, repository, stats
from coachforge_evaluator.clients import DatasetClient, InferenceClient, RegistryClient
from coachforge_evaluator.metrics import RUNS_CREATED
from coachforge_evaluator.models import Eval, EvalRun, EvalRunItem
from coachforge_evaluator.schemas import (
    CompletionsDataSource,
    CreateEval,
    CreateRun,
    FileContentSource,
    FileIdSource,
    InputItemReference,
    InputTemplate,
    UpdateEval,
    parse,
)
from coachforge_evaluator.settings import EvaluatorSettings
from coachforge_shared.db import Database
from coachforge_shared.errors import (
    CoachForgeError,
    Conflict,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from coachforge_shared.events import EventPublisher
from coachforge_shared.ids import new_id, to_unix, utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.streams import iter_lines

log = get_logger("coachforge.evaluator")

FINAL = ("completed", "failed", "canceled")
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"model": {"type": "string"}, "output_text": {"type": "string"}, "output_json": {},
                   "choices": {"type": "array"}},
    "required": ["model", "output_text"],
}


@dataclass
class EvaluatorDeps:
    db: Database
    settings: EvaluatorSettings
    publisher: EventPublisher | None = None
    inference: InferenceClient | None = None
    """Samples and judge answers (none: only ``jsonl`` runs, whose items carry their samples)."""
    registry: RegistryClient | None = None
    """Checks a run's model when the run is created (none: the first sample tells)."""
    dataset: DatasetClient | None = None
    """Reads the items of a run whose source is an uploaded evals file (none: ``file_id`` sources are refused)."""
    wake: Callable[[str], None] | None = None
    """Called with a new run's id so that this process starts it at once (the sweep would find it too)."""


# -- evals ---------------------------------------------------------------------------------------


def eval_to_openai(e: Eval) -> dict[str, Any]:
    config = e.data_source_config
    schema: dict[str, Any] = {"type": "object", "properties": {"item": config["item_schema"]}, "required": ["item"]}
    if config.get("include_sample_schema"):
        schema["properties"]["sample"] = SAMPLE_SCHEMA
        schema["required"] = ["item", "sample"]
    return {"object": "eval", "id": e.id, "name": e.name, "created_at": to_unix(e.created_at),
            "data_source_config": {"type": "custom", "schema": schema}, "testing_criteria": e.testing_criteria,
            "metadata": e.metadata_ or {}}


def _check_item_schema(schema: dict[str, Any]) -> None:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise InvalidArgument(f"item_schema is not a valid JSON Schema: {err.message}",
                              param="data_source_config.item_schema") from None


def create_eval(deps: EvaluatorDeps, tenant_id: str, body: Any) -> dict[str, Any]:
    req = parse(CreateEval, body)
    _check_item_schema(req.data_source_config.item_schema)
    criteria = graders.validate_criteria(req.testing_criteria)
    if not req.data_source_config.include_sample_schema:
        for i, criterion in enumerate(criteria):
            if "{{sample." in json.dumps(criterion):
                raise InvalidArgument("This criterion refers to {{sample.*}}: set "
                                      "data_source_config.include_sample_schema to true.",
                                      param=f"testing_criteria[{i}]")
    row = Eval(id=new_id("eval"), tenant_id=tenant_id, name=req.name or "eval",
               data_source_config=req.data_source_config.model_dump(exclude={"type"}), testing_criteria=criteria,
               metadata_=req.metadata or {}, created_at=utcnow())
    with deps.db.session() as s:
        s.add(row)
        s.flush()
        return eval_to_openai(row)


def get_eval(deps: EvaluatorDeps, tenant_id: str, eval_id: str) -> dict[str, Any]:
    with deps.db.session() as s:
        return eval_to_openai(repository.eval_(s, tenant_id, eval_id))


def update_eval(deps: EvaluatorDeps, tenant_id: str, eval_id: str, body: Any) -> dict[str, Any]:
    req = parse(UpdateEval, body)
    with deps.db.session() as s:
        e = repository.eval_(s, tenant_id, eval_id)
        if req.name is not None:
            e.name = req.name
        if req.metadata is not None:
            e.metadata_ = req.metadata
        return eval_to_openai(e)


def delete_eval(deps: EvaluatorDeps, tenant_id: str, eval_id: str) -> dict[str, Any]:
    with deps.db.session() as s:
        e = repository.eval_(s, tenant_id, eval_id)
        if repository.unfinished_runs(s, eval_id):
            raise Conflict(f"Eval {eval_id} has queued or running runs; cancel them first.", param="eval_id",
                           code="eval_in_use")
        s.delete(e)
    return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}


def _page(rows: list[Any], limit: int, convert: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    data = [convert(r) for r in rows[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}


def _limit(limit: int) -> int:
    if not 1 <= limit <= 100:
        raise InvalidArgument("limit must be between 1 and 100.", param="limit")
    return limit


def _descending(order: str) -> bool:
    if order not in ("asc", "desc"):
        raise InvalidArgument("order must be asc or desc.", param="order")
    return order == "desc"


def list_evals(deps: EvaluatorDeps, tenant_id: str, *, after: str | None = None, limit: int = 20,
               order: str = "asc") -> dict[str, Any]:
    with deps.db.session() as s:
        rows = repository.evals(s, tenant_id, after=after, limit=_limit(limit), descending=_descending(order))
        return _page(rows, limit, eval_to_openai)


# -- runs ----------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _item_validator(schema_json: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def _messages(source: InputTemplate | InputItemReference, row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The chat messages one item's sample is asked with."""
    if isinstance(source, InputTemplate):
        out = []
        for i, message in enumerate(source.template):
            text = message.content if isinstance(message.content, str) else message.content.text
            role = "system" if message.role == "developer" else message.role
            try:
                out.append({"role": role, "content": graders.render(text, row["item"], None)})
            except InvalidArgument as err:
                raise InvalidArgument(err.message, param=f"data_source.input_messages.template[{i}].content",
                                      code=err.code) from None
        return out
    value: Any = {"item": row["item"]}
    for part in source.item_reference.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        raise InvalidArgument(f"{source.item_reference} must be a non-empty list of {{role, content}} messages.",
                              param=where)
    return [{"role": m["role"], "content": m["content"]} for m in value]


_INPUT = TypeAdapter(Annotated[InputTemplate | InputItemReference, Field(discriminator="type")])


def input_messages(data_source: dict[str, Any]) -> Callable[[dict[str, Any]], list[dict[str, str]]]:
    """For a stored completions data source: the function giving one item's messages (the runner's)."""
    source = _INPUT.validate_python(data_source["input_messages"])
    return lambda row: _messages(source, row, "data_source.input_messages")


FILE_PARAM = "data_source.source.id"
EVALS_PURPOSE = "evals"


def _file_row(file_id: str, number: int, raw: bytes) -> dict[str, Any]:
    """One line of an evals file as a run's row ``{"item": …, "sample"?: …}`` (the dataset service
    validated it at upload; a line that is not one anyway is refused, naming it)."""
    try:
        obj = json.loads(raw)
    except ValueError as err:
        raise InvalidArgument(f"File {file_id}, line {number}: line: invalid JSON ({err}).", param=FILE_PARAM,
                              code="invalid_file") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("item"), dict):
        raise InvalidArgument(f"File {file_id}, line {number}: item: missing or not a JSON object.",
                              param=FILE_PARAM, code="invalid_file")
    row: dict[str, Any] = {"item": obj["item"]}
    if obj.get("sample") is not None:
        if not isinstance(obj["sample"], dict):
            raise InvalidArgument(f"File {file_id}, line {number}: sample: not a JSON object.", param=FILE_PARAM,
                                  code="invalid_file")
        row["sample"] = obj["sample"]
    return row


@dataclass(frozen=True)
class FileReading:
    """How an uploaded file is read from the dataset service for one use, and how its problems are
    worded (the parameter they name, the purposes it may have, how many lines it may hold)."""

    param: str
    """The request field the file's problems name."""
    purposes: tuple[str, ...]
    """The purposes the file may have been uploaded with."""
    purpose_rule: str
    """Says which purposes are accepted (after "File … has purpose …; ")."""
    limit: int
    """Most non-blank lines read; a file with more is refused (without reading it all when its count says so)."""
    too_many: str
    """Says the limit, e.g. "A run may have at most 10 items"."""
    noun: str
    """What one line is, in the plural ("items")."""
    unavailable_param: str
    """The field a request naming a file names when no dataset service is configured."""
    unavailable: str
    """Why, and what to do instead, when no dataset service is configured."""


T = TypeVar("T")


def read_file(deps: EvaluatorDeps, tenant_id: str, file_id: str, reading: FileReading,
              parse_line: Callable[[int, bytes], T]) -> tuple[list[T], list[int]]:
    """Each non-blank line of an uploaded file parsed by ``parse_line(line number, raw line)``, and
    the file line of each, read from the dataset service as it streams. The file must exist for the
    tenant and have one of ``reading.purposes``; one with more than ``reading.limit`` lines is refused
    without reading it all. Blank lines (a lenient upload's dropped lines) are skipped."""
    if deps.dataset is None:
        raise InvalidArgument(reading.unavailable, param=reading.unavailable_param, code="unsupported_source")
    limit = reading.limit
    rows: list[T] = []
    lines: list[int] = []
    try:
        f = deps.dataset.file(tenant_id, file_id)
        if f.purpose not in reading.purposes:
            raise InvalidArgument(f"File {file_id} has purpose {f.purpose!r}; {reading.purpose_rule}",
                                  param=reading.param, code="invalid_file")
        if f.example_count > limit:
            raise InvalidArgument(f"{reading.too_many}; file {file_id} has {f.example_count}.", param=reading.param)
        chunks = deps.dataset.content(tenant_id, file_id)
        try:
            for number, raw in iter_lines(chunks):
                if not raw.strip():
                    continue
                if len(rows) == limit:
                    raise InvalidArgument(f"{reading.too_many}; file {file_id} has more.", param=reading.param)
                rows.append(parse_line(number, raw))
                lines.append(number)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    except (NotFound, FailedPrecondition) as err:  # no such file for the tenant, or its content was lost
        message = f"File {file_id} not found." if isinstance(err, NotFound) else err.message
        raise InvalidArgument(message, param=reading.param, code="file_not_found" if isinstance(err, NotFound)
                              else err.code) from None
    except (Unavailable, Internal) as err:
        raise Unavailable(f"Cannot read file {file_id} from the dataset service ({err.message}); try again.",
                          param=reading.param) from None
    if not rows:
        raise InvalidArgument(f"File {file_id} has no {reading.noun}.", param=reading.param, code="invalid_file")
    return rows, lines


def file_rows(deps: EvaluatorDeps, tenant_id: str, file_id: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of an uploaded evals file and the file line of each, read from the dataset service.
    The file must exist for the tenant and have purpose ``evals``; one with more than ``max_items``
    items is refused without reading it all. Blank lines (a lenient upload's dropped lines) are skipped."""
    limit = deps.settings.max_items
    reading = FileReading(
        param=FILE_PARAM, purposes=(EVALS_PURPOSE,),
        purpose_rule=f"a run's source file must be uploaded with purpose {EVALS_PURPOSE!r}.", limit=limit,
        too_many=f"A run may have at most {limit} items", noun="items", unavailable_param="data_source.source.type",
        unavailable="source type file_id is not available here (no dataset service is configured); pass the items "
                    "inline as file_content.")
    return read_file(deps, tenant_id, file_id, reading, lambda number, raw: _file_row(file_id, number, raw))


def _rows(deps: EvaluatorDeps, tenant_id: str, req: CreateRun) -> tuple[list[dict[str, Any]], list[int] | None]:
    """The run's rows and, for a ``file_id`` source, the file line of each (``None`` for inline items)."""
    source = req.data_source.source
    if isinstance(source, FileIdSource):
        return file_rows(deps, tenant_id, source.id)
    assert isinstance(source, FileContentSource)
    return [row.model_dump(exclude_none=True) for row in source.content], None


def run_to_openai(run: EvalRun, counts: dict[str | None, int], criteria: list[dict[str, Any]],
                  criterion_counts: dict[str, tuple[int, int]], usage: tuple[int, int, int]) -> dict[str, Any]:
    total = sum(counts.values())
    error = {"code": run.error_code, "message": run.error_message or ""} if run.error_code else None
    samples, prompt, completion = usage
    per_model = [] if not run.model else [{
        "model_name": run.model, "invocation_count": samples, "prompt_tokens": prompt,
        "completion_tokens": completion, "total_tokens": prompt + completion, "cached_tokens": 0}]
    return {
        "object": "eval.run", "id": run.id, "eval_id": run.eval_id, "name": run.name, "model": run.model,
        "status": run.status, "created_at": to_unix(run.created_at), "data_source": run.data_source,
        "error": error, "metadata": run.metadata_ or {},
        "result_counts": {"total": total, "passed": counts.get("pass", 0), "failed": counts.get("fail", 0),
                          "errored": counts.get("error", 0)},
        "per_testing_criteria_results": [
            {"testing_criteria": c["name"], "passed": criterion_counts.get(c["name"], (0, 0))[0],
             "failed": criterion_counts.get(c["name"], (0, 0))[1]} for c in criteria],
        "per_model_usage": per_model,
        "report_url": f"/v1/evals/{run.eval_id}/runs/{run.id}/output_items",
    }


def per_criterion(items: list[EvalRunItem]) -> dict[str, tuple[int, int]]:
    """Passes and failures of each criterion (errored results count in neither)."""
    out: dict[str, list[int]] = {}
    for it in items:
        for r in it.results or ():
            if r.get("passed") is None:
                continue
            entry = out.setdefault(r["name"], [0, 0])
            entry[0 if r["passed"] else 1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def _run_json(s: Any, run: EvalRun) -> dict[str, Any]:
    e = s.get(Eval, run.eval_id)
    items = repository.graded_items(s, run.id)
    return run_to_openai(run, repository.status_counts(s, run.id), e.testing_criteria if e else [],
                         per_criterion(items), repository.usage(s, run.id))


def create_run(deps: EvaluatorDeps, tenant_id: str, eval_id: str, body: Any) -> dict[str, Any]:
    req = parse(CreateRun, body)
    ds = req.data_source
    with deps.db.session() as s:
        e = repository.eval_(s, tenant_id, eval_id)
        config = dict(e.data_source_config)
    rows, lines = _rows(deps, tenant_id, req)
    if len(rows) > deps.settings.max_items:
        raise InvalidArgument(f"A run may have at most {deps.settings.max_items} items; got {len(rows)}.",
                              param="data_source.source.content")
    validator = _item_validator(json.dumps(config["item_schema"], sort_keys=True))
    file_id = ds.source.id if isinstance(ds.source, FileIdSource) else ""
    for i, row in enumerate(rows):
        # An inline item is named by its index; an item from a file by the file's line.
        where = f"data_source.source.content[{i}]"
        on_line = "" if lines is None else f"File {file_id}, line {lines[i]}: "
        problem = next(iter(validator.iter_errors(row["item"])), None)
        if problem is not None:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.absolute_path)
            if lines is None:
                raise InvalidArgument(f"Item {i} does not match the eval's item_schema: {problem.message}",
                                      param=f"{where}.item{path}")
            raise InvalidArgument(f"{on_line}item{path}: does not match the eval's item_schema: {problem.message}",
                                  param=FILE_PARAM)
        if isinstance(ds, CompletionsDataSource):
            try:
                _messages(ds.input_messages, row, "data_source.input_messages")
            except InvalidArgument as err:
                if lines is None:
                    raise
                raise InvalidArgument(on_line + err.message, param=err.param, code=err.code) from None
        elif not isinstance(row.get("sample"), dict) or not isinstance(row["sample"].get("output_text"), str):
            if lines is None:
                raise InvalidArgument("A jsonl data source's items must carry a sample with output_text.",
                                      param=f"{where}.sample")
            raise InvalidArgument(f"{on_line}sample: a jsonl data source's items must carry a sample with "
                                  "output_text.", param=FILE_PARAM)
    model = ds.model if isinstance(ds, CompletionsDataSource) else ""
    if model and deps.registry is not None:
        try:
            deps.registry.model(tenant_id, model)
        except NotFound:
            raise InvalidArgument(f"The model {model!r} does not exist or you do not have access to it.",
                                  param="data_source.model", code="model_not_found") from None
    stored = ds.model_dump(exclude_none=True)
    if lines is None:
        stored["source"] = {"type": "file_content", "content": []}  # the items are the run's output items
    run = EvalRun(id=new_id("evalrun"), eval_id=eval_id, tenant_id=tenant_id, name=req.name or model or "run",
                  model=model, status="queued", data_source=stored, metadata_=req.metadata or {},
                  cancel_requested=False, created_at=utcnow())
    with deps.db.session() as s:
        s.add(run)
        s.flush()
        repository.add_items(s, [{"id": new_id("outputitem"), "run_id": run.id, "item_index": i, "item": row,
                                  "prompt_tokens": 0, "completion_tokens": 0} for i, row in enumerate(rows)])
        if deps.publisher is not None:
            deps.publisher.publish_in(s, "eval.run.requested",
                                      evaluator_pb2.EvalRunRequested(eval_id=eval_id, run_id=run.id), tenant_id,
                                      key=run.id)
        RUNS_CREATED.labels(tenant_id).inc()
        out = run_to_openai(run, {None: len(rows)}, e.testing_criteria, {}, (0, 0, 0))
    log.info("eval run queued", eval_id=eval_id, run_id=run.id, items=len(rows), model=model)
    if deps.wake is not None:
        deps.wake(run.id)
    return out


def get_run(deps: EvaluatorDeps, tenant_id: str, eval_id: str, run_id: str) -> dict[str, Any]:
    with deps.db.session() as s:
        return _run_json(s, repository.run(s, tenant_id, eval_id, run_id))


def list_runs(deps: EvaluatorDeps, tenant_id: str, eval_id: str, *, after: str | None = None, limit: int = 20,
              order: str = "asc", status: str | None = None) -> dict[str, Any]:
    with deps.db.session() as s:
        repository.eval_(s, tenant_id, eval_id)
        rows = repository.runs(s, tenant_id, eval_id, after=after, limit=_limit(limit),
                               descending=_descending(order), status=status)
        return _page(rows, limit, lambda r: _run_json(s, r))


def cancel_run(deps: EvaluatorDeps, tenant_id: str, eval_id: str, run_id: str) -> dict[str, Any]:
    """A queued run is canceled at once; a running one stops after the items in flight."""
    with deps.db.session() as s:
        run = repository.run(s, tenant_id, eval_id, run_id, lock=True)
        if run.status in FINAL:
            raise Conflict(f"Run {run_id} has already {run.status}.", param="run_id")
        run.cancel_requested = True
        if run.status == "queued":
            run.status, run.finished_at = "canceled", utcnow()
        return _run_json(s, run)


def delete_run(deps: EvaluatorDeps, tenant_id: str, eval_id: str, run_id: str) -> dict[str, Any]:
    with deps.db.session() as s:
        run = repository.run(s, tenant_id, eval_id, run_id, lock=True)
        if run.status not in FINAL:
            raise Conflict(f"Run {run_id} is {run.status}; cancel it first.", param="run_id")
        s.delete(run)
    return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}


# -- output items --------------------------------------------------------------------------------


def item_to_openai(run: EvalRun, it: EvalRunItem) -> dict[str, Any]:
    return {"object": "eval.run.output_item", "id": it.id, "run_id": run.id, "eval_id": run.eval_id,
            "created_at": to_unix(it.graded_at), "status": it.status, "datasource_item_id": it.item_index,
            "datasource_item": it.item.get("item", {}), "results": it.results or [], "sample": it.sample or {}}


def list_output_items(deps: EvaluatorDeps, tenant_id: str, eval_id: str, run_id: str, *, after: str | None = None,
                      limit: int = 20, order: str = "asc", status: str | None = None) -> dict[str, Any]:
    if status is not None and status not in ("pass", "fail", "error"):
        raise InvalidArgument("status must be pass, fail or error.", param="status")
    with deps.db.session() as s:
        run = repository.run(s, tenant_id, eval_id, run_id)
        after_index = repository.item(s, run_id, after).item_index if after else None
        rows = repository.items(s, run_id, after_index=after_index, limit=_limit(limit),
                                descending=_descending(order), status=status)
        return _page(rows, limit, lambda it: item_to_openai(run, it))


def get_output_item(deps: EvaluatorDeps, tenant_id: str, eval_id: str, run_id: str, item_id: str) -> dict[str, Any]:
    with deps.db.session() as s:
        run = repository.run(s, tenant_id, eval_id, run_id)
        return item_to_openai(run, repository.item(s, run_id, item_id))


# -- comparison ----------------------------------------------------------------------------------

ALPHA = 0.05
"""Significance level of the better/worse verdicts."""


def _item_key(item: dict[str, Any]) -> str:
    """Items are paired across runs by their content (runs of one eval may list them in another order)."""
    return hashlib.sha256(json.dumps(item.get("item"), sort_keys=True).encode()).hexdigest()


def _verdict(difference: float, p_value: float) -> str:
    if p_value < ALPHA:
        return "better" if difference > 0 else "worse"
    return "no_difference"


def _model_facts(deps: EvaluatorDeps, tenant_id: str, model: str, usage: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run's model costs and weighs: its price per 1M tokens (inference's price table), the
    run's cost and its blended price over the run's token mix, and the adapter's size (registry).
    A fact that cannot be had now (a model since deleted, a service down) is None."""
    facts: dict[str, Any] = {"adapter_bytes": None, "price_per_million": None, "cost_usd": None,
                             "cost_per_million_tokens": None}
    if not model:
        return facts
    if deps.registry is not None:
        try:
            facts["adapter_bytes"] = int(deps.registry.model(tenant_id, model).size_bytes) or None
        except CoachForgeError as err:
            log.info("no adapter size for the comparison", model=model, error=err.message)
    if deps.inference is not None:
        try:
            _, input_price, output_price = deps.inference.price(tenant_id, model)
        except CoachForgeError as err:
            log.info("no price for the comparison", model=model, error=err.message)
        else:
            facts["price_per_million"] = {"input": input_price, "output": output_price}
            prompt = sum(u["prompt_tokens"] for u in usage)
            completion = sum(u["completion_tokens"] for u in usage)
            cost = (prompt * input_price + completion * output_price) / 1_000_000
            facts["cost_usd"] = cost
            if prompt + completion:
                facts["cost_per_million_tokens"] = cost / (prompt + completion) * 1_000_000
    return facts


def compare_runs(deps: EvaluatorDeps, tenant_id: str, eval_id: str, run_ids: list[str]) -> dict[str, Any]:
    """Per testing criterion, each run's pass rate with its Wilson interval; against the first run
    (the baseline), the paired difference on the items both graded, with an exact McNemar p-value
    and, for scores, a paired bootstrap interval; per run, latency and throughput."""
    run_ids = [r for r in dict.fromkeys(run_ids) if r]
    if len(run_ids) < 2:
        raise InvalidArgument("Compare needs at least two distinct run ids.", param="runs")
    with deps.db.session() as s:
        e = repository.eval_(s, tenant_id, eval_id)
        runs = repository.runs_by_ids(s, tenant_id, eval_id, run_ids)
        graded = {r.id: repository.graded_items(s, r.id) for r in runs}
        summaries = [_run_json(s, r) for r in runs]
    names = [c["name"] for c in e.testing_criteria]
    # run -> item key -> criterion -> (passed, score)
    results: dict[str, dict[str, dict[str, tuple[bool, float]]]] = {}
    for run_id, items in graded.items():
        table = results[run_id] = {}
        for it in items:
            table[_item_key(it.item)] = {r["name"]: (bool(r["passed"]), float(r["score"]))
                                         for r in it.results or () if r.get("passed") is not None}
    base = runs[0].id
    criteria = []
    for name in names:
        per_run = []
        for run in runs:
            outcomes = [v[name][0] for v in results[run.id].values() if name in v]
            passed, n = sum(outcomes), len(outcomes)
            low, high = stats.wilson_interval(passed, n)
            per_run.append({"run_id": run.id, "model": run.model, "passed": passed, "graded": n,
                            "pass_rate": passed / n if n else None, "interval": [low, high]})
        paired = []
        for run in runs[1:]:
            keys = [k for k, v in results[base].items() if name in v and name in results[run.id].get(k, {})]
            a = [results[base][k][name] for k in keys]
            b = [results[run.id][k][name] for k in keys]
            only_base = sum(1 for x, y in zip(a, b, strict=True) if x[0] and not y[0])
            only_run = sum(1 for x, y in zip(a, b, strict=True) if y[0] and not x[0])
            difference = (only_run - only_base) / len(keys) if keys else 0.0
            p_value = stats.mcnemar_exact(only_base, only_run)
            score_diff, score_low, score_high = (stats.paired_bootstrap([x[1] for x in a], [y[1] for y in b])
                                                 if keys else (0.0, 0.0, 0.0))
            paired.append({"run_id": run.id, "baseline_run_id": base, "paired_items": len(keys),
                           "difference": difference, "baseline_only_passed": only_base,
                           "run_only_passed": only_run, "p_value": p_value,
                           "score_difference": score_diff, "score_interval": [score_low, score_high],
                           "verdict": _verdict(difference, p_value)})
        criteria.append({"testing_criteria": name, "runs": per_run, "paired": paired})
    performance = []
    for run, summary in zip(runs, summaries, strict=True):
        items = graded[run.id]
        latencies = [it.latency_s for it in items if it.latency_s is not None]
        ttfts = [it.ttft_s for it in items if it.ttft_s is not None]
        speeds = [it.output_tokens_per_s for it in items if it.output_tokens_per_s is not None]
        performance.append({"run_id": run.id, "model": run.model, "status": run.status,
                            "result_counts": summary["result_counts"],
                            "latency_p50_s": stats.percentile(latencies, 50),
                            "latency_p95_s": stats.percentile(latencies, 95),
                            "ttft_p50_s": stats.percentile(ttfts, 50),
                            "output_tokens_per_s_p50": stats.percentile(speeds, 50),
                            "usage": summary["per_model_usage"],
                            **_model_facts(deps, tenant_id, run.model, summary["per_model_usage"])})
    return {"object": "eval.comparison", "eval_id": eval_id, "baseline_run_id": base, "alpha": ALPHA,
            "criteria": criteria, "runs": performance}
