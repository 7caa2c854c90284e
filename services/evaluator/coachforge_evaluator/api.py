"""REST: OpenAI's Evals API (``/v1/evals…``), run comparisons (``/v1/evals/{id}/compare``) and blind
A/B comparisons with human votes (``/v1/comparisons…``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response

from coachforge_evaluator import comparisons, service
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_shared.http import CurrentPrincipal

router = APIRouter(prefix="/v1/evals", tags=["evals"])

Order = Literal["asc", "desc"]


def _deps(request: Request) -> EvaluatorDeps:
    deps: EvaluatorDeps = request.app.state.evaluator
    return deps


@router.post("")
def create_eval(request: Request, principal: CurrentPrincipal, body: Any = Body(...)) -> dict[str, Any]:
    """Create an eval: a ``custom`` data source config (the items' JSON Schema) and testing criteria."""
    return service.create_eval(_deps(request), principal.tenant_id, body)


@router.get("")
def list_evals(request: Request, principal: CurrentPrincipal, after: str | None = None,
               limit: int = Query(20, ge=1, le=100), order: Order = "asc",
               order_by: Literal["created_at", "updated_at"] = "created_at") -> dict[str, Any]:
    return service.list_evals(_deps(request), principal.tenant_id, after=after, limit=limit, order=order)


@router.get("/{eval_id}")
def get_eval(request: Request, principal: CurrentPrincipal, eval_id: str) -> dict[str, Any]:
    return service.get_eval(_deps(request), principal.tenant_id, eval_id)


@router.post("/{eval_id}")
def update_eval(request: Request, principal: CurrentPrincipal, eval_id: str,
                body: Any = Body(...)) -> dict[str, Any]:
    """Rename an eval or replace its metadata."""
    return service.update_eval(_deps(request), principal.tenant_id, eval_id, body)


@router.delete("/{eval_id}")
def delete_eval(request: Request, principal: CurrentPrincipal, eval_id: str) -> dict[str, Any]:
    return service.delete_eval(_deps(request), principal.tenant_id, eval_id)


@router.get("/{eval_id}/compare")
def compare(request: Request, principal: CurrentPrincipal, eval_id: str,
            runs: str = Query(..., description="Run ids, comma separated; the first is the baseline.")
            ) -> dict[str, Any]:
    """Per testing criterion: pass rates with Wilson 95% intervals; against the first run, the paired
    difference with an exact McNemar p-value; per run: latency, time to first token, tokens/s."""
    return service.compare_runs(_deps(request), principal.tenant_id, eval_id, runs.split(","))


@router.post("/{eval_id}/runs")
def create_run(request: Request, principal: CurrentPrincipal, eval_id: str,
               body: Any = Body(...)) -> dict[str, Any]:
    """Start a run: a ``completions`` data source (a model samples each item) or ``jsonl`` (items
    carry their samples). The run is queued and executed in the background."""
    return service.create_run(_deps(request), principal.tenant_id, eval_id, body)


@router.get("/{eval_id}/runs")
def list_runs(request: Request, principal: CurrentPrincipal, eval_id: str, after: str | None = None,
              limit: int = Query(20, ge=1, le=100), order: Order = "asc",
              status: Literal["queued", "in_progress", "completed", "canceled", "failed"] | None = None
              ) -> dict[str, Any]:
    return service.list_runs(_deps(request), principal.tenant_id, eval_id, after=after, limit=limit, order=order,
                             status=status)


@router.get("/{eval_id}/runs/{run_id}")
def get_run(request: Request, principal: CurrentPrincipal, eval_id: str, run_id: str) -> dict[str, Any]:
    return service.get_run(_deps(request), principal.tenant_id, eval_id, run_id)


@router.post("/{eval_id}/runs/{run_id}/cancel")
def cancel_run(request: Request, principal: CurrentPrincipal, eval_id: str, run_id: str) -> dict[str, Any]:
    return service.cancel_run(_deps(request), principal.tenant_id, eval_id, run_id)


@router.delete("/{eval_id}/runs/{run_id}")
def delete_run(request: Request, principal: CurrentPrincipal, eval_id: str, run_id: str) -> dict[str, Any]:
    return service.delete_run(_deps(request), principal.tenant_id, eval_id, run_id)


@router.get("/{eval_id}/runs/{run_id}/output_items")
def list_output_items(request: Request, principal: CurrentPrincipal, eval_id: str, run_id: str,
                      after: str | None = None, limit: int = Query(20, ge=1, le=100), order: Order = "asc",
                      status: Literal["pass", "fail", "error"] | None = None) -> dict[str, Any]:
    return service.list_output_items(_deps(request), principal.tenant_id, eval_id, run_id, after=after,
                                     limit=limit, order=order, status=status)


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
def get_output_item(request: Request, principal: CurrentPrincipal, eval_id: str, run_id: str,
                    output_item_id: str) -> dict[str, Any]:
    return service.get_output_item(_deps(request), principal.tenant_id, eval_id, run_id, output_item_id)


comparisons_router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"])


@comparisons_router.post("")
def create_comparison(request: Request, principal: CurrentPrincipal, body: Any = Body(...)) -> dict[str, Any]:
    """Blind A/B comparison of 2-4 models on 1-500 prompts, given as ``prompts``, read from an uploaded
    ``file`` or taken from ``stored_completions``; the answers are generated in the background."""
    return comparisons.create(_deps(request), principal.tenant_id, body)


@comparisons_router.get("")
def list_comparisons(request: Request, principal: CurrentPrincipal, after: str | None = None,
                     limit: int = Query(20, ge=1, le=100), order: Order = "asc") -> dict[str, Any]:
    """The tenant's comparisons by creation time, with their status and vote count (no standings)."""
    return comparisons.list_(_deps(request), principal.tenant_id, after=after, limit=limit, order=order)


@comparisons_router.get("/{comparison_id}")
def get_comparison(request: Request, principal: CurrentPrincipal, comparison_id: str) -> dict[str, Any]:
    """Status and standings: wins/losses/ties, win rates with Wilson intervals, Bradley-Terry, agreement."""
    return comparisons.get(_deps(request), principal.tenant_id, comparison_id)


@comparisons_router.post("/{comparison_id}/cancel")
def cancel_comparison(request: Request, principal: CurrentPrincipal, comparison_id: str) -> dict[str, Any]:
    """Stop generating and close voting (status ``canceled``); the votes cast and the standings are kept."""
    return comparisons.cancel(_deps(request), principal.tenant_id, comparison_id)


@comparisons_router.delete("/{comparison_id}")
def delete_comparison(request: Request, principal: CurrentPrincipal, comparison_id: str) -> dict[str, Any]:
    """Delete the comparison with its pairs, votes and answers; runs still generating are canceled."""
    return comparisons.delete(_deps(request), principal.tenant_id, comparison_id)


@comparisons_router.get("/{comparison_id}/next", response_model=None,
                        responses={204: {"description": "No pair is left for this voter."}})
def next_pair(request: Request, principal: CurrentPrincipal, comparison_id: str,
              voter: str | None = None) -> dict[str, Any] | Response:
    """A pair this voter has not judged, without model names, and how many remain for them (204 when none
    remain, 409 unless the comparison is ready)."""
    pair = comparisons.next_pair(_deps(request), principal.tenant_id, comparison_id, voter)
    return Response(status_code=204) if pair is None else pair


@comparisons_router.get("/{comparison_id}/preferences", response_class=Response,
                        responses={200: {"content": {"application/jsonl": {}}}})
def comparison_preferences(request: Request, principal: CurrentPrincipal, comparison_id: str) -> Response:
    """The votes as OpenAI preference pairs (JSONL, one per vote with a winner): upload it with purpose
    ``fine-tune`` and train a ``dpo`` job on it."""
    lines = comparisons.preference_lines(_deps(request), principal.tenant_id, comparison_id)
    return Response(b"".join(lines), media_type="application/jsonl")


@comparisons_router.post("/{comparison_id}/votes")
def create_vote(request: Request, principal: CurrentPrincipal, comparison_id: str,
                body: Any = Body(...)) -> dict[str, Any]:
    """``{"pair_id", "voter", "winner": "left"|"right"|"tie"}``; one vote per pair and voter."""
    return comparisons.vote(_deps(request), principal.tenant_id, comparison_id, body)
