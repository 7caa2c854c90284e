"""Registry logic: register adapters from finished jobs (idempotently), list and resolve models."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.registry.v1 import registry_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_registry.models import Avatar, AvatarChange, ModelVersion
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from coachforge_shared.events import EventPublisher
from coachforge_shared.ids import new_id, to_unix, utcnow
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


def _find_model(s: Session, deps: RegistryDeps, tenant_id: str, model_id: str) -> registry_pb2.Model | None:
    if model_id in deps.settings.base_models:
        return base_model_proto(model_id)
    v = s.scalar(select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.tenant_id == tenant_id))
    return version_proto(v) if v is not None else None


def get_model(deps: RegistryDeps, tenant_id: str, model_id: str) -> registry_pb2.Model:
    """Resolve a model id, or an avatar name to the model it points at."""
    with deps.db.session() as s:
        found = _find_model(s, deps, tenant_id, model_id)
        if found is None:
            avatar = s.scalar(select(Avatar).where(Avatar.tenant_id == tenant_id, Avatar.name == model_id))
            if avatar is not None:
                found = _find_model(s, deps, tenant_id, avatar.active_model)
                if found is not None:
                    found.fallback = avatar.fallback
    if found is None:
        raise NotFound(f"The model '{model_id}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    return found


def to_openai(m: registry_pb2.Model) -> dict[str, object]:
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}


# -- avatars ------------------------------------------------------------------------------------

AVATAR_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FALLBACKS = ("error", "base")


def _avatar(s: Session, tenant_id: str, name: str, *, lock: bool = False) -> Avatar:
    q = select(Avatar).where(Avatar.tenant_id == tenant_id, Avatar.name == name)
    avatar = s.scalar(q.with_for_update() if lock else q)
    if avatar is None:
        raise NotFound(f"No avatar named {name!r}.", param="avatar", code="avatar_not_found")
    return avatar


def _require_model(s: Session, deps: RegistryDeps, tenant_id: str, model_id: str) -> registry_pb2.Model:
    found = _find_model(s, deps, tenant_id, model_id)
    if found is None:
        raise InvalidArgument(f"The model '{model_id}' does not exist or you do not have access to it.",
                              param="model", code="model_not_found")
    return found


def _publish(deps: RegistryDeps, event: str, tenant_id: str, avatar: Avatar, previous: str | None) -> None:
    if deps.publisher is not None:
        deps.publisher.publish(event, registry_pb2.AvatarChanged(avatar=avatar.name, model=avatar.active_model,
                                                                 previous_model=previous or ""),
                               tenant_id, key=avatar.name)


def create_avatar(deps: RegistryDeps, tenant_id: str, actor: str, name: str, model_id: str,
                  fallback: str = "error", reason: str = "") -> Avatar:
    if not AVATAR_NAME.match(name):
        raise InvalidArgument("Avatar names are 1-64 lower-case letters, digits, '.', '_' or '-'.", param="name")
    if fallback not in FALLBACKS:
        raise InvalidArgument(f"fallback must be one of {', '.join(FALLBACKS)}.", param="fallback")
    with deps.db.session() as s:
        if _find_model(s, deps, tenant_id, name) is not None:
            raise InvalidArgument(f"{name!r} is already a model id.", param="name")
        if s.scalar(select(Avatar.id).where(Avatar.tenant_id == tenant_id, Avatar.name == name)) is not None:
            raise Conflict(f"An avatar named {name!r} already exists.", param="name", code="avatar_exists")
        _require_model(s, deps, tenant_id, model_id)
        avatar = Avatar(id=new_id("avatar"), tenant_id=tenant_id, name=name, active_model=model_id,
                        fallback=fallback)
        s.add(avatar)
        s.flush()
        s.add(AvatarChange(avatar_id=avatar.id, action="created", from_model=None, to_model=model_id, actor=actor,
                           reason=reason))
        _publish(deps, "model.activated", tenant_id, avatar, None)
    return avatar


def get_avatar(deps: RegistryDeps, tenant_id: str, name: str) -> Avatar:
    with deps.db.session() as s:
        return _avatar(s, tenant_id, name)


def list_avatars(deps: RegistryDeps, tenant_id: str) -> list[Avatar]:
    with deps.db.session() as s:
        return list(s.scalars(select(Avatar).where(Avatar.tenant_id == tenant_id).order_by(Avatar.name)))


def activate(deps: RegistryDeps, tenant_id: str, actor: str, name: str, model_id: str, reason: str = "") -> Avatar:
    """Point the avatar at ``model_id`` in one transaction, with a history row and ``model.activated``."""
    with deps.db.session() as s:
        avatar = _avatar(s, tenant_id, name, lock=True)
        _require_model(s, deps, tenant_id, model_id)
        previous = avatar.active_model
        avatar.active_model, avatar.updated_at = model_id, utcnow()
        s.add(AvatarChange(avatar_id=avatar.id, action="activated", from_model=previous, to_model=model_id,
                           actor=actor, reason=reason))
        _publish(deps, "model.activated", tenant_id, avatar, previous)
    return avatar


def rollback(deps: RegistryDeps, tenant_id: str, actor: str, name: str, reason: str = "") -> Avatar:
    """Point the avatar back at the model it had before its latest change."""
    with deps.db.session() as s:
        avatar = _avatar(s, tenant_id, name, lock=True)
        last = s.scalar(select(AvatarChange).where(AvatarChange.avatar_id == avatar.id)
                        .order_by(AvatarChange.seq.desc()).limit(1))
        if last is None or last.from_model is None:
            raise FailedPrecondition(f"Avatar {name!r} has no earlier model to roll back to.", param="avatar")
        _require_model(s, deps, tenant_id, last.from_model)
        previous = avatar.active_model
        avatar.active_model, avatar.updated_at = last.from_model, utcnow()
        s.add(AvatarChange(avatar_id=avatar.id, action="rolled_back", from_model=previous, to_model=last.from_model,
                           actor=actor, reason=reason))
        _publish(deps, "model.rolled_back", tenant_id, avatar, previous)
    return avatar


def history(deps: RegistryDeps, tenant_id: str, name: str) -> list[AvatarChange]:
    with deps.db.session() as s:
        avatar = _avatar(s, tenant_id, name)
        return list(s.scalars(select(AvatarChange).where(AvatarChange.avatar_id == avatar.id)
                              .order_by(AvatarChange.seq.desc())))


def avatar_to_openai(a: Avatar) -> dict[str, object]:
    return {"object": "avatar", "name": a.name, "active_model": a.active_model, "fallback": a.fallback,
            "created_at": to_unix(a.created_at), "updated_at": to_unix(a.updated_at)}


def change_to_openai(c: AvatarChange) -> dict[str, object]:
    return {"object": "avatar.change", "action": c.action, "from_model": c.from_model, "to_model": c.to_model,
            "actor": c.actor, "reason": c.reason, "created_at": to_unix(c.created_at)}


def avatar_proto(a: Avatar) -> registry_pb2.Avatar:
    return registry_pb2.Avatar(name=a.name, active_model=a.active_model, fallback=a.fallback,
                               created_at=to_unix(a.created_at), updated_at=to_unix(a.updated_at))
