"""Registry logic: register adapters from finished jobs (idempotently), list and resolve models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.registry.v1 import registry_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_registry.models import ModelVersion
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.db import Database
from coachforge_shared.errors import NotFound
from coachforge_shared.events import EventPublisher
from coachforge_shared.ids import new_id, to_unix
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.registry")

BASE_OWNER = "coachforge"


@dataclass
class RegistryDeps:
    db: Database
    settings: RegistrySettings
    publisher: EventPublisher | None = None


def base_model_proto(model_id: str) -> registry_pb2.Model:
    return registry_pb2.Model(id=model_id, owned_by=BASE_OWNER, created=0, base_model=model_id)


def version_proto(v: ModelVersion) -> registry_pb2.Model:
    return registry_pb2.Model(id=v.model_id, owned_by=v.tenant_id, created=to_unix(v.created_at),
                              base_model=v.base_model, adapter_uri=v.adapter_uri, adapter_name=v.id,
                              lora_rank=v.lora_rank, job_id=v.job_id or "")


def on_job_succeeded(deps: RegistryDeps, s: Session, env: Envelope, ev: trainer_pb2.JobSucceeded) -> Any:
    """Register the adapter a job produced. Runs in the event's idempotency transaction; a job
    already registered (e.g. replayed under a new event id) creates nothing new."""
    if s.scalar(select(ModelVersion.id).where(ModelVersion.job_id == ev.job_id)) is not None:
        log.info("job already registered", job_id=ev.job_id)
        return None
    v = ModelVersion(id=new_id("mv"), tenant_id=env.tenant_id, model_id=ev.fine_tuned_model,
                     base_model=ev.base_model, adapter_uri=ev.adapter_uri, lora_rank=ev.lora_rank,
                     target_modules_json=json.dumps(list(ev.target_modules)), job_id=ev.job_id)
    s.add(v)
    s.flush()
    log.info("model registered", model=v.model_id, tenant=env.tenant_id, job_id=ev.job_id)
    if deps.publisher is not None:
        deps.publisher.publish("model.registered", registry_pb2.ModelRegistered(model=version_proto(v)),
                               env.tenant_id, key=v.model_id)
    return None


def list_models(deps: RegistryDeps, tenant_id: str) -> list[registry_pb2.Model]:
    with deps.db.session() as s:
        versions = list(s.scalars(select(ModelVersion).where(ModelVersion.tenant_id == tenant_id)
                                  .order_by(ModelVersion.created_at.desc())))
    return [base_model_proto(m) for m in deps.settings.base_models] + [version_proto(v) for v in versions]


def get_model(deps: RegistryDeps, tenant_id: str, model_id: str) -> registry_pb2.Model:
    if model_id in deps.settings.base_models:
        return base_model_proto(model_id)
    with deps.db.session() as s:
        v = s.scalar(select(ModelVersion).where(ModelVersion.model_id == model_id,
                                                ModelVersion.tenant_id == tenant_id))
    if v is None:
        raise NotFound(f"The model '{model_id}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    return version_proto(v)


def to_openai(m: registry_pb2.Model) -> dict[str, object]:
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
