"""Models: every model (base and fine-tuned versions) with lineage and evaluations, a model's page,
and a side-by-side comparison of two or more models (better/worse against the first)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from coachforge_console.pages.common import model_path, parts
from coachforge_console.web import UserPage, router

LOWER_IS_BETTER = ("loss", "latency", "cost", "seconds", "_ms", "_s", "error", "ttft", "size")


def lower_is_better(metric: str) -> bool:
    name = metric.lower()
    return any(word in name for word in LOWER_IS_BETTER)


def compare_rows(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per fact or metric: each model's value and whether it is better or worse than the first's."""
    facts: list[tuple[str, Any]] = [
        ("base model", lambda m: m.get("base_model") or m["id"]), ("version", lambda m: m.get("version")),
        ("status", lambda m: m.get("status")), ("LoRA rank", lambda m: m.get("lora_rank")),
        ("size (bytes)", lambda m: m.get("size_bytes")),
        ("trained tokens", lambda m: (m.get("lineage") or {}).get("trained_tokens")),
        ("final training loss", lambda m: (m.get("lineage") or {}).get("final_loss")),
        ("final validation loss", lambda m: (m.get("lineage") or {}).get("valid_loss")),
        ("training data", lambda m: (m.get("lineage") or {}).get("dataset_version")
         or (m.get("lineage") or {}).get("training_file")),
    ]
    rows = [{"name": name, "values": [get(m) for m in models], "compare": name.startswith("final")}
            for name, get in facts]
    metric_names: list[tuple[str, str]] = []
    for m in models:
        for eval_name, metrics in (m.get("evaluations") or {}).items():
            if isinstance(metrics, dict):
                for metric in metrics:
                    if (eval_name, metric) not in metric_names:
                        metric_names.append((eval_name, metric))
    for eval_name, metric in metric_names:
        values = []
        for m in models:
            metrics = (m.get("evaluations") or {}).get(eval_name)
            values.append(metrics.get(metric) if isinstance(metrics, dict) else None)
        rows.append({"name": f"{eval_name}: {metric}", "values": values, "compare": True})
    for row in rows:
        marks: list[str] = []
        first = row["values"][0]
        lower = lower_is_better(row["name"])
        for i, value in enumerate(row["values"]):
            mark = ""
            if row["compare"] and i and isinstance(value, int | float) and isinstance(first, int | float) \
                    and not isinstance(value, bool) and value != first:
                mark = "better" if (value < first) == lower else "worse"
            marks.append(mark)
        row["marks"] = marks
    return rows


@router.get("/models")
async def models_page(page: UserPage) -> Response:
    models = await page.api.get("/v1/models")
    return page.render("models.html", title="Models", models=models.get("data") or [])


@router.get("/models/compare")
async def compare_page(page: UserPage, models: list[str] | None = None) -> Response:
    chosen = [m for m in dict.fromkeys(models or []) if m][:6]
    found = await parts(*(page.api.get(f"/v1/models/{model_path(m)}") for m in chosen))
    ok = [p.value for p in found if p.ok]
    errors = [f"{m}: {p.error}" for m, p in zip(chosen, found, strict=True) if not p.ok]
    return page.render("models_compare.html", title="Compare models", models=ok, errors=errors,
                       rows=compare_rows(ok) if len(ok) >= 2 else [])


@router.get("/models/{model_id:path}")
async def model_page(page: UserPage, model_id: str) -> Response:
    model = await page.api.get(f"/v1/models/{model_path(model_id)}")
    (versions,) = await parts(page.api.get(f"/v1/models/{model_path(model_id)}/versions"))
    return page.render("model.html", title=f"Model {model_id}", m=model, versions=versions)
