"""Evaluations: evals, an eval's runs, the comparison of runs (pass rates with intervals, paired
differences, latency, tokens/s, cost), and a run's items with the model's output and each grader's
verdict."""

from __future__ import annotations

from starlette.responses import Response

from coachforge_console.pages.common import parts, seg
from coachforge_console.web import UserPage, router


@router.get("/evals")
async def evals_page(page: UserPage, after: str | None = None) -> Response:
    evals = await page.api.get("/v1/evals", order="desc", limit=50, after=after)
    return page.render("evals.html", title="Evaluations", evals=evals)


@router.get("/evals/{eval_id}")
async def eval_page(page: UserPage, eval_id: str) -> Response:
    ev, runs = await parts(page.api.get(f"/v1/evals/{seg(eval_id)}"),
                           page.api.get(f"/v1/evals/{seg(eval_id)}/runs", order="desc", limit=50))
    if not ev.ok:
        return page.render("error.html", status=404, title="Evaluation", message=ev.error)
    return page.render("eval.html", title=f"Evaluation {eval_id}", ev=ev.value, runs=runs)


@router.get("/evals/{eval_id}/compare")
async def compare_runs(page: UserPage, eval_id: str, runs: list[str] | None = None) -> Response:
    chosen = [r for r in dict.fromkeys(runs or []) if r]
    comparison = None
    if len(chosen) >= 2:
        comparison = await page.api.get(f"/v1/evals/{seg(eval_id)}/compare", runs=",".join(chosen))
    return page.render("eval_compare.html", title="Compare runs", eval_id=eval_id, comparison=comparison)


@router.get("/evals/{eval_id}/runs/{run_id}")
async def run_page(page: UserPage, eval_id: str, run_id: str, status: str | None = None,
                   after: str | None = None) -> Response:
    base = f"/v1/evals/{seg(eval_id)}/runs/{seg(run_id)}"
    run = await page.api.get(base)
    items = await page.api.get(f"{base}/output_items", limit=50, after=after,
                               status=status if status in ("pass", "fail", "error") else None)
    return page.render("eval_run.html", title=f"Run {run_id}", eval_id=eval_id, run=run, items=items,
                       status=status or "")
