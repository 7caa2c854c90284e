"""Eval runs as jobs: each evaluator process executes runs in the background.

A run is queued when it is created (``eval.run.requested`` is published, and the creating process
is woken). An executor claims it with a lease (a compare-and-set on its status), samples and
grades its ungraded items, ``run_concurrency`` at a time, renewing the lease as it goes, and
finishes it (``completed``, ``failed`` or ``canceled``, published as ``eval.run.succeeded|failed|
canceled``). A sweep in every process takes queued runs nobody started and runs whose lease
expired (their process died): such a run resumes with the items not graded yet, and an item's
result is written only while it is still ungraded, so no item counts twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from coachforge.evaluator.v1 import evaluator_pb2
from coachforge_evaluator import graders, repository, service
from coachforge_evaluator.clients import Sampled
from coachforge_evaluator.metrics import GRADER_ERRORS, ITEM_SECONDS, ITEMS, RUNS_ACTIVE, RUNS_FINISHED, RUNS_RESUMED
from coachforge_evaluator.models import Eval
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_shared.db import OutageBackoff
from coachforge_shared.errors import CoachForgeError, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from coachforge_shared.ids import utcnow
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.evaluator.runner")

RUN_ERRORS = (NotFound, InvalidArgument, PermissionDenied, Unauthenticated)
"""Sampling errors that no other item would escape (unknown model, bad parameters): the run fails."""
FLUSH_S = 0.25
FLUSH_ITEMS = 32
"""Graded items are written together, at least every FLUSH_S seconds or FLUSH_ITEMS items (one
transaction instead of one per item; a crash loses at most that much work, done again on resume)."""
CANCEL_CHECK_S = 0.25
"""How often a running run looks whether it was asked to stop (a cancel is honoured within this
and the items in flight)."""
FINISHED_EVENTS = {"completed": "eval.run.succeeded", "failed": "eval.run.failed", "canceled": "eval.run.canceled"}


@dataclass
class _Run:
    """What executing one run needs, read once when it is claimed."""

    id: str
    eval_id: str
    eval_name: str
    tenant_id: str
    model: str
    criteria: list[dict[str, Any]]
    params: dict[str, Any]
    messages: Callable[[dict[str, Any]], list[dict[str, str]]] | None
    """An item's messages (None: a jsonl run, whose items carry their samples)."""
    fatal: CoachForgeError | None = None
    graded: int = field(default=0)


def _output_json(text: str) -> Any:
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        return None


class RunExecutor:
    """Executes eval runs in this process (at most ``max_runs`` at a time)."""

    def __init__(self, deps: EvaluatorDeps, worker_id: str) -> None:
        self.deps, self.worker_id = deps, worker_id
        self.settings = deps.settings
        self._runs = ThreadPoolExecutor(self.settings.max_runs, thread_name_prefix="eval-run")
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="eval-sweep", daemon=True)
            self._sweeper.start()

    def stop(self) -> None:
        """Stop taking items; runs in progress give their lease back so another process resumes them."""
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        self._runs.shutdown(wait=True, cancel_futures=True)

    def running(self) -> bool:
        return self._sweeper is not None and self._sweeper.is_alive()

    def submit(self, run_id: str) -> None:
        """Execute ``run_id`` here unless it already is (another process may have it: the claim decides)."""
        with self._lock:
            if run_id in self._active or self._stop.is_set():
                return
            self._active.add(run_id)
        try:
            self._runs.submit(self._execute, run_id)
        except RuntimeError:  # shutting down
            with self._lock:
                self._active.discard(run_id)

    def _sweep_loop(self) -> None:
        backoff = OutageBackoff("eval-sweep")
        while not self._stop.wait(backoff.wait(self.settings.sweep_interval_s)):
            try:
                self.sweep()
            except Exception as err:  # the sweeper survives a database outage (logged once, retried)
                backoff.failed(err, "eval run sweep failed")
            else:
                backoff.succeeded()

    def sweep(self) -> None:
        """Take queued runs nobody started and runs whose lease expired."""
        with self.deps.db.session() as s:
            ids = repository.runnable(s, utcnow(), self.settings.max_runs * 2)
        for run_id in ids:
            self.submit(run_id)

    # --- one run ---

    def _lease(self) -> Any:
        return utcnow() + timedelta(seconds=self.settings.lease_seconds)

    def _claim(self, run_id: str) -> _Run | None:
        with self.deps.db.session() as s:
            row = repository.run_by_id(s, run_id)
            if row is None:
                return None
            resumed = row.status == "in_progress"
            if not repository.claim(s, run_id, self.worker_id, utcnow(), self._lease()):
                return None
            e = s.get(Eval, row.eval_id)
            assert e is not None
            ds = row.data_source
            params = dict(ds.get("sampling_params") or {})
            params.setdefault("max_completion_tokens", self.settings.default_max_completion_tokens)
            run = _Run(id=row.id, eval_id=row.eval_id, eval_name=e.name, tenant_id=row.tenant_id, model=row.model,
                       criteria=list(e.testing_criteria), params=params,
                       messages=service.input_messages(ds) if ds.get("type") == "completions" else None)
        if resumed:
            RUNS_RESUMED.inc()
            log.info("eval run resumed", run_id=run_id, worker=self.worker_id)
        return run

    def _execute(self, run_id: str) -> None:
        RUNS_ACTIVE.inc()
        try:
            run = self._claim(run_id)
            if run is not None:
                self._items(run)
        except Exception as err:
            log.exception("eval run broke", run_id=run_id)
            self._finish(run_id, "failed", ("run_error", f"{type(err).__name__}: {err}"))
        finally:
            RUNS_ACTIVE.dec()
            with self._lock:
                self._active.discard(run_id)

    def _items(self, run: _Run) -> None:
        with self.deps.db.session() as s:
            pending = repository.pending_items(s, run.id)
        renew_every = self.settings.lease_seconds / 3
        next_renewal = time.monotonic() + renew_every
        next_check = time.monotonic() + CANCEL_CHECK_S
        stop_reason = ""
        graded: list[tuple[str, dict[str, Any]]] = []
        next_flush = time.monotonic() + FLUSH_S
        with ThreadPoolExecutor(self.settings.run_concurrency, thread_name_prefix=f"eval-{run.id[-6:]}") as pool:
            in_flight: set[Future[tuple[str, dict[str, Any]]]] = set()
            queue = iter(pending)
            while True:
                if len(graded) >= FLUSH_ITEMS or time.monotonic() >= next_flush:
                    self._flush(graded)
                    next_flush = time.monotonic() + FLUSH_S
                if not stop_reason and run.fatal is not None:
                    stop_reason = "failed"
                if not stop_reason and self._stop.is_set():
                    stop_reason = "shutdown"
                if not stop_reason and time.monotonic() >= next_check:
                    with self.deps.db.session() as s:
                        if time.monotonic() >= next_renewal:
                            ours, cancel = repository.renew(s, run.id, self.worker_id, self._lease())
                            next_renewal = time.monotonic() + renew_every
                        else:
                            ours, cancel = True, repository.cancel_requested(s, run.id)
                    next_check = time.monotonic() + CANCEL_CHECK_S
                    stop_reason = "lost" if not ours else "canceled" if cancel else ""
                while not stop_reason and len(in_flight) < self.settings.run_concurrency:
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    in_flight.add(pool.submit(self._item, run, *nxt))
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, timeout=CANCEL_CHECK_S, return_when=FIRST_COMPLETED)
                for future in done:
                    graded.append(future.result())  # an item never raises (its errors are its result)
        self._flush(graded)
        if stop_reason in ("lost", "shutdown"):
            if stop_reason == "shutdown":
                with self.deps.db.session() as s:  # let another process resume it now, not at lease expiry
                    repository.renew(s, run.id, self.worker_id, utcnow())
            log.info("eval run left to another worker", run_id=run.id, reason=stop_reason)
            return
        with self.deps.db.session() as s:
            _, cancel = repository.renew(s, run.id, self.worker_id, self._lease())
        if run.fatal is not None:
            self._finish(run.id, "failed", (run.fatal.code or type(run.fatal).__name__, run.fatal.message))
        else:
            self._finish(run.id, "canceled" if cancel or stop_reason == "canceled" else "completed", None)

    def _sample(self, run: _Run, row: dict[str, Any]) -> tuple[Sampled | None, list[dict[str, str]],
                                                                CoachForgeError | None]:
        if run.messages is None:
            given = row["sample"]
            sample = Sampled(text=str(given.get("output_text", "")), finish_reason="", prompt_tokens=0,
                             completion_tokens=0, latency_s=0.0, ttft_s=None, model=str(given.get("model", "")))
            return sample, [], None
        messages = run.messages(row)
        assert self.deps.inference is not None, "completions runs need the inference client"
        try:
            return self.deps.inference.sample(run.tenant_id, run.model, messages, run.params), messages, None
        except CoachForgeError as err:
            return None, messages, err

    def _judge(self, run: _Run) -> graders.Judge | None:
        client = self.deps.inference
        if client is None:
            return None

        def judge(model: str, messages: list[dict[str, str]], response_format: dict[str, Any],
                  params: dict[str, Any]) -> str:
            return client.judge(run.tenant_id, model, messages, response_format, params)

        return judge

    def _item(self, run: _Run, item_id: str, index: int, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Sample and grade one item; its result, to be written by :meth:`_flush`."""
        started = time.perf_counter()
        sampled, messages, error = self._sample(run, row)
        if isinstance(error, RUN_ERRORS):
            run.fatal = run.fatal or error
        results: list[dict[str, Any]] = []
        if sampled is not None:
            grader_sample = {"model": sampled.model, "output_text": sampled.text,
                             "output_json": _output_json(sampled.text)}
            judge = self._judge(run)
            for criterion in run.criteria:
                result = graders.grade(criterion, row["item"], grader_sample, judge)
                if result.error is not None:
                    GRADER_ERRORS.labels(result.type).inc()
                results.append({k: v for k, v in asdict(result).items() if v is not None or k in ("score", "passed")})
        if sampled is None or any(r.get("error") for r in results):
            status = "error"
        elif all(r["passed"] for r in results):
            status = "pass"
        else:
            status = "fail"
        usage = {"prompt_tokens": sampled.prompt_tokens if sampled else 0,
                 "completion_tokens": sampled.completion_tokens if sampled else 0, "cached_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        sample = {"input": messages, "output": [{"role": "assistant", "content": sampled.text}] if sampled else [],
                  "model": sampled.model if sampled else run.model,
                  "finish_reason": sampled.finish_reason if sampled else "", "usage": usage,
                  "error": {"code": error.code or type(error).__name__, "message": error.message} if error else None,
                  "temperature": run.params.get("temperature"), "top_p": run.params.get("top_p"),
                  "seed": run.params.get("seed"), "max_completion_tokens": run.params.get("max_completion_tokens")}
        values = {"status": status, "sample": sample, "results": results, "graded_at": utcnow(),
                  "latency_s": sampled.latency_s if sampled and run.messages else None,
                  "ttft_s": sampled.ttft_s if sampled else None,
                  "output_tokens_per_s": sampled.output_tokens_per_s if sampled else None,
                  "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}
        ITEM_SECONDS.observe(time.perf_counter() - started)
        return item_id, values

    def _flush(self, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Write graded items, several in one transaction (each only while still ungraded)."""
        if not results:
            return
        with self.deps.db.session() as s:
            written = [values["status"] for item_id, values in results if repository.record_item(s, item_id, values)]
        for status in written:
            ITEMS.labels(status).inc()
        results.clear()

    def _finish(self, run_id: str, status: str, error: tuple[str, str] | None) -> None:
        with self.deps.db.session() as s:
            row = repository.run_by_id(s, run_id)
            if row is None:
                return
            values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "lease_expires_at": None}
            if error is not None:
                values["error_code"], values["error_message"] = error[0][:64], error[1]
            if not repository.finish(s, run_id, self.worker_id, values):
                return  # no longer ours
            counts = repository.status_counts(s, run_id)
            items = repository.graded_items(s, run_id)
            rates = {}
            for name, (passed, failed) in service.per_criterion(items).items():
                if passed + failed:
                    rates[name] = passed / (passed + failed)
            e = s.get(Eval, row.eval_id)
            # A comparison's runs are not evaluations of the model (the registry would keep them).
            if self.deps.publisher is not None and not repository.hidden_eval(s, row.eval_id):
                self.deps.publisher.publish_in(s, FINISHED_EVENTS[status], evaluator_pb2.EvalRunFinished(
                    eval_id=row.eval_id, eval_name=e.name if e else "", run_id=run_id, model=row.model,
                    status=status, total=sum(counts.values()), passed=counts.get("pass", 0),
                    failed=counts.get("fail", 0), errored=counts.get("error", 0), criteria_pass_rates=rates),
                    row.tenant_id, key=run_id)
        RUNS_FINISHED.labels(status).inc()
        log.info("eval run finished", run_id=run_id, status=status, counts=counts)
