"""Continued training on the prepared base model, on CPU, kept to a few steps: a run started from a
parent adapter starts from the parent's weights (not a new adapter), so its first loss on the same
data is below a new adapter's; the parent's LoRA shape is enforced; and the finished job's
``job.succeeded`` makes the registry record the parent in the new version's lineage.

Uses the session fixture ``base_model_dir`` from ``tests/fixtures_models.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_registry import api as registry_api
from coachforge_registry import service as registry_service
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.events import decode, publish_in
from coachforge_shared.ids import utcnow
from coachforge_shared.models import OutboxEvent
from coachforge_trainer import lifecycle
from coachforge_trainer.models import Job
from coachforge_trainer.sft import Progress, TrainParams, TrainResult, run_sft

SHAPE: dict[str, Any] = {"lora_r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def _examples(count: int = 8) -> list[dict[str, Any]]:
    return [{"messages": [
        {"role": "user", "content": f"My tempo run {i} was {i + 5} km. What should I do tomorrow?"},
        {"role": "assistant", "content": f"Tomorrow: an easy {i % 3 + 4} km recovery jog, then stretch for 10 min."}]}
        for i in range(count)]


def _params(**overrides: Any) -> TrainParams:
    settings: dict[str, Any] = {"n_epochs": 1, "max_steps": 4, "batch_size": 4, "max_length": 128,
                                "learning_rate": 2e-3, **SHAPE}
    settings.update(overrides)
    return TrainParams(**settings)


@pytest.fixture(scope="module")
def parent(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, list[Progress]]:
    """A new adapter (rank 8 on q_proj/v_proj) trained four steps on the examples: the parent."""
    reports: list[Progress] = []
    result = run_sft(base_model_dir, _examples(), tmp_path_factory.mktemp("parent"), _params(),
                     on_progress=reports.append)
    return result, reports


def test_continued_training_starts_from_the_parent_s_weights(
        base_model_dir: Path, tmp_path: Path, parent: tuple[TrainResult, list[Progress]]) -> None:
    parent_result, parent_reports = parent
    fresh_first_loss = parent_reports[0].train_loss  # a new adapter's loss on the first batch
    assert fresh_first_loss is not None
    reports: list[Progress] = []
    # Learning rate 0: the saved adapter is exactly what training started from.
    result = run_sft(base_model_dir, _examples(), tmp_path / "continued", _params(max_steps=1, learning_rate=0.0),
                     on_progress=reports.append, parent_adapter_dir=parent_result.adapter_dir)

    first_loss = reports[0].train_loss
    assert first_loss is not None and first_loss < fresh_first_loss  # same first batch, the parent's weights
    assert (result.lora_r, result.target_modules) == (8, ["q_proj", "v_proj"])
    parent_weights = load_file(parent_result.adapter_dir / "adapter_model.safetensors")
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert weights.keys() == parent_weights.keys()
    assert all(torch.equal(weights[name], parent_weights[name]) for name in weights)
    assert any(t.abs().sum() > 0 for name, t in weights.items() if "lora_B" in name)  # not a new adapter
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (8, 16, ["q_proj", "v_proj"])
    assert config.get("inference_mode", True)  # saved for serving, like a new adapter


@pytest.fixture(scope="module")
def continued(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
              parent: tuple[TrainResult, list[Progress]]) -> tuple[TrainResult, list[Progress]]:
    """Two more steps of the parent's training, on the same examples."""
    reports: list[Progress] = []
    result = run_sft(base_model_dir, _examples(), tmp_path_factory.mktemp("continued"), _params(max_steps=2),
                     on_progress=reports.append, parent_adapter_dir=parent[0].adapter_dir)
    return result, reports


def test_continued_training_keeps_learning(parent: tuple[TrainResult, list[Progress]],
                                           continued: tuple[TrainResult, list[Progress]]) -> None:
    result, reports = continued
    assert result.steps == 2 and [p.step for p in reports] == [1, 2]
    parent_weights = load_file(parent[0].adapter_dir / "adapter_model.safetensors")
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert any(not torch.equal(weights[name], parent_weights[name]) for name in weights)  # trained further


@pytest.mark.parametrize(("shape", "message"), [({"lora_r": 16}, "LoRA rank 8"), ({"lora_alpha": 32}, "alpha 16")])
def test_a_run_of_another_lora_shape_is_refused(base_model_dir: Path, tmp_path: Path,
                                                parent: tuple[TrainResult, list[Progress]], shape: dict[str, Any],
                                                message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_sft(base_model_dir, _examples(), tmp_path / "continued", _params(**shape),
                parent_adapter_dir=parent[0].adapter_dir)


class OutboxOnly:
    """The publisher without a broker: events go to the outbox in the caller's transaction."""

    def publish_in(self, s: Session, event_type: str, payload: Any, tenant_id: str, key: str | None = None) -> str:
        return publish_in(s, event_type, payload, tenant_id, key)


def test_the_registered_version_names_its_parent(base_model_dir: Path, tmp_path: Path, db: Database,
                                                 continued: tuple[TrainResult, list[Progress]]) -> None:
    create_tenant(db, "acme")
    result = continued[0]
    parent_model = f"ft:{BASE_MODEL_ID}:acme:coach:parent01"
    job = Job(id="ftjob-child0001", tenant_id="acme", model=BASE_MODEL_ID, parent_model=parent_model,
              status="running", worker_id="w-1", training_file="file-1", suffix="coach", n_epochs=1, batch_size=4,
              learning_rate_multiplier=1.0, seed=42, method_json=json.dumps(SHAPE), queued_at=utcnow())
    with db.session() as s:
        s.add(job)
    with db.session() as s:
        lifecycle.succeed(s, OutboxOnly(), job, "w-1", result,  # type: ignore[arg-type]
                          fine_tuned_model=f"ft:{BASE_MODEL_ID}:acme:coach:child001", result_file=None,
                          learning_rate=2e-3)
    with db.session() as s:
        [(env, event)] = [decode(row.envelope) for row in s.scalars(select(OutboxEvent))
                          if decode(row.envelope)[0].type == "job.succeeded"]
    assert (event.parent_model, event.method, event.backend) == (parent_model, "supervised", "trl")

    registry = RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE_MODEL_ID]),
                            artifacts_dir=tmp_path / "store", platform_models_dir=base_model_dir.parent)
    with db.session() as s:
        registry_service.on_job_succeeded(registry, s, Envelope(tenant_id=env.tenant_id), event)
    version = registry_service.get_model(registry, "acme", f"ft:{BASE_MODEL_ID}:acme:coach:child001")
    lineage = json.loads(version.lineage_json)
    assert (lineage["parent_model"], lineage["method"], lineage["backend"]) == (parent_model, "supervised", "trl")
    assert lineage["hyperparameters"]["lora_r"] == 8 and version.lora_rank == 8
    assert registry_api.to_openai(version)["parent_model"] == parent_model
