"""Queries of the registry tables; every one is scoped to a tenant (or to an avatar of one)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from coachforge_registry.models import (
    Avatar,
    AvatarChange,
    AvatarPersona,
    ModelExport,
    ModelVersion,
    RetrainPolicy,
    RetrainRun,
)
from coachforge_shared.errors import NotFound

# -- model versions -----------------------------------------------------------------------------


def version(s: Session, tenant_id: str, model_id: str, *, lock: bool = False) -> ModelVersion | None:
    """The tenant's version with this model id; with ``lock``, locked for update."""
    q = select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.tenant_id == tenant_id)
    return s.scalar(q.with_for_update() if lock else q)


def versions(s: Session, tenant_id: str) -> list[ModelVersion]:
    """The tenant's versions, newest first."""
    return list(s.scalars(select(ModelVersion).where(ModelVersion.tenant_id == tenant_id)
                          .order_by(ModelVersion.created_at.desc())))


def versions_on_base(s: Session, tenant_id: str, base_model: str) -> list[ModelVersion]:
    """Every line of the tenant on ``base_model``, by suffix, newest version first."""
    return list(s.scalars(select(ModelVersion).where(ModelVersion.tenant_id == tenant_id,
                                                     ModelVersion.base_model == base_model)
                          .order_by(ModelVersion.suffix, ModelVersion.version.desc())))


def versions_of_line(s: Session, tenant_id: str, base_model: str, suffix: str) -> list[ModelVersion]:
    """One line (tenant, base model, suffix), newest version first."""
    return list(s.scalars(select(ModelVersion).where(ModelVersion.tenant_id == tenant_id,
                                                     ModelVersion.base_model == base_model,
                                                     ModelVersion.suffix == suffix)
                          .order_by(ModelVersion.suffix, ModelVersion.version.desc())))


def latest_version(s: Session, tenant_id: str, base_model: str, suffix: str) -> int:
    """The highest version number of a line; 0 when it has none."""
    latest = s.scalar(select(func.max(ModelVersion.version)).where(
        ModelVersion.tenant_id == tenant_id, ModelVersion.base_model == base_model, ModelVersion.suffix == suffix))
    return int(latest or 0)


def job_registered(s: Session, job_id: str) -> bool:
    """Whether a version was registered from this job (of any tenant)."""
    return s.scalar(select(ModelVersion.id).where(ModelVersion.job_id == job_id)) is not None


def add_version(s: Session, v: ModelVersion) -> None:
    """Insert the version now (so a clash of version numbers raises here)."""
    s.add(v)
    s.flush()


def delete_version(s: Session, v: ModelVersion) -> None:
    s.delete(v)


# -- avatars ------------------------------------------------------------------------------------


def avatar(s: Session, tenant_id: str, name: str, *, lock: bool = False) -> Avatar:
    """The tenant's avatar; ``NotFound`` when it has none of that name. With ``lock``, locked for update."""
    q = select(Avatar).where(Avatar.tenant_id == tenant_id, Avatar.name == name)
    found: Avatar | None = s.scalar(q.with_for_update() if lock else q)
    if found is None:
        raise NotFound(f"No avatar named {name!r}.", param="avatar", code="avatar_not_found")
    return found


def find_avatar(s: Session, tenant_id: str, name: str) -> Avatar | None:
    return s.scalar(select(Avatar).where(Avatar.tenant_id == tenant_id, Avatar.name == name))


def avatar_exists(s: Session, tenant_id: str, name: str) -> bool:
    return s.scalar(select(Avatar.id).where(Avatar.tenant_id == tenant_id, Avatar.name == name)) is not None


def avatars(s: Session, tenant_id: str) -> list[Avatar]:
    """The tenant's avatars by name."""
    return list(s.scalars(select(Avatar).where(Avatar.tenant_id == tenant_id).order_by(Avatar.name)))


def avatars_using(s: Session, tenant_id: str, model_id: str) -> list[Avatar]:
    """The tenant's avatars with ``model_id`` as their active or candidate model, by name."""
    return list(s.scalars(select(Avatar).where(
        Avatar.tenant_id == tenant_id,
        or_(Avatar.active_model == model_id, Avatar.candidate_model == model_id)).order_by(Avatar.name)))


def count_active_on(s: Session, tenant_id: str, model_id: str) -> int:
    """How many of the tenant's avatars answer with ``model_id`` (as their active model)."""
    return int(s.scalar(select(func.count()).select_from(Avatar).where(
        Avatar.tenant_id == tenant_id, Avatar.active_model == model_id)) or 0)


def add_avatar(s: Session, a: Avatar) -> None:
    s.add(a)
    s.flush()


# -- avatar history -----------------------------------------------------------------------------


def add_change(s: Session, c: AvatarChange) -> None:
    s.add(c)


def last_change(s: Session, avatar_id: str, actions: Iterable[str]) -> AvatarChange | None:
    """The avatar's latest change among ``actions``."""
    return s.scalar(select(AvatarChange).where(AvatarChange.avatar_id == avatar_id,
                                               AvatarChange.action.in_(tuple(actions)))
                    .order_by(AvatarChange.seq.desc()).limit(1))


def changes(s: Session, avatar_id: str) -> list[AvatarChange]:
    """The avatar's changes, newest first."""
    return list(s.scalars(select(AvatarChange).where(AvatarChange.avatar_id == avatar_id)
                          .order_by(AvatarChange.seq.desc())))


# -- personas -----------------------------------------------------------------------------------


def persona(s: Session, avatar_id: str, version: int) -> AvatarPersona | None:
    return s.get(AvatarPersona, (avatar_id, version))


def personas(s: Session, avatar_id: str) -> list[AvatarPersona]:
    """The avatar's persona versions, newest first."""
    return list(s.scalars(select(AvatarPersona).where(AvatarPersona.avatar_id == avatar_id)
                          .order_by(AvatarPersona.version.desc())))


def latest_persona_version(s: Session, avatar_id: str) -> int:
    """The avatar's highest persona version; 0 when it has none."""
    return int(s.scalar(select(func.max(AvatarPersona.version)).where(AvatarPersona.avatar_id == avatar_id)) or 0)


def add_persona(s: Session, row: AvatarPersona) -> None:
    """Insert the version now (the avatar is locked: numbers cannot clash)."""
    s.add(row)
    s.flush()


# -- retrain policies and runs --------------------------------------------------------------------

RETRAIN_FINISHED = ("promoted", "rejected", "failed", "canceled")


def retrain_policy(s: Session, avatar_id: str, *, lock: bool = False) -> RetrainPolicy | None:
    q = select(RetrainPolicy).where(RetrainPolicy.avatar_id == avatar_id)
    return s.scalars(q.with_for_update() if lock else q).first()


def enabled_retrain_policies(s: Session) -> list[RetrainPolicy]:
    return list(s.scalars(select(RetrainPolicy).where(RetrainPolicy.enabled.is_(True))))


def claim_policy_check(s: Session, avatar_id: str, seen: datetime | None, now: datetime) -> bool:
    """Mark the policy checked at ``now`` unless another process did since it was read as ``seen``."""
    q = update(RetrainPolicy).where(RetrainPolicy.avatar_id == avatar_id)
    q = q.where(RetrainPolicy.checked_at.is_(None) if seen is None else RetrainPolicy.checked_at == seen)
    return bool(s.execute(q.values(checked_at=now)).rowcount)  # type: ignore[attr-defined]


def retrain_run(s: Session, tenant_id: str, run_id: str) -> RetrainRun | None:
    return s.scalars(select(RetrainRun).where(RetrainRun.tenant_id == tenant_id, RetrainRun.id == run_id)).first()


def retrain_runs(s: Session, avatar_id: str, limit: int) -> list[RetrainRun]:
    q = select(RetrainRun).where(RetrainRun.avatar_id == avatar_id)
    return list(s.scalars(q.order_by(RetrainRun.created_at.desc(), RetrainRun.id.desc()).limit(limit)))


def retrain_in_progress(s: Session, avatar_id: str) -> RetrainRun | None:
    q = select(RetrainRun).where(RetrainRun.avatar_id == avatar_id, RetrainRun.status.not_in(RETRAIN_FINISHED))
    return s.scalars(q.limit(1)).first()


def claimable_retrains(s: Session, now: datetime, limit: int = 20) -> list[str]:
    """Runs not finished that no live process holds."""
    q = select(RetrainRun.id).where(RetrainRun.status.not_in(RETRAIN_FINISHED),
                                    or_(RetrainRun.lease_until.is_(None), RetrainRun.lease_until < now))
    return list(s.scalars(q.order_by(RetrainRun.created_at).limit(limit)))


def claim_retrain(s: Session, run_id: str, owner: str, now: datetime, until: datetime) -> bool:
    """Take the run's lease (compare-and-set: one process advances a run at a time)."""
    q = update(RetrainRun).where(RetrainRun.id == run_id, RetrainRun.status.not_in(RETRAIN_FINISHED),
                                 or_(RetrainRun.lease_until.is_(None), RetrainRun.lease_until < now))
    return bool(s.execute(q.values(lease_owner=owner, lease_until=until)).rowcount)  # type: ignore[attr-defined]


def release_retrain(s: Session, run_id: str, owner: str) -> None:
    s.execute(update(RetrainRun).where(RetrainRun.id == run_id, RetrainRun.lease_owner == owner)
              .values(lease_owner=None, lease_until=None))


# -- model exports --------------------------------------------------------------------------------

EXPORT_FINISHED = ("succeeded", "failed")


def export(s: Session, tenant_id: str, version_id: str, export_id: str) -> ModelExport | None:
    """One export of the tenant's version."""
    return s.scalar(select(ModelExport).where(ModelExport.tenant_id == tenant_id,
                                              ModelExport.version_id == version_id, ModelExport.id == export_id))


def find_export(s: Session, version_id: str, fmt: str, quantization: str, avatar_id: str,
                persona_version: int) -> ModelExport | None:
    """The export of this version, format, quantization and persona, if one was asked for before."""
    return s.scalar(select(ModelExport).where(
        ModelExport.version_id == version_id, ModelExport.format == fmt, ModelExport.quantization == quantization,
        ModelExport.avatar_id == avatar_id, ModelExport.persona_version == persona_version))


def exports_of(s: Session, version_id: str) -> list[ModelExport]:
    """A version's exports, newest first."""
    return list(s.scalars(select(ModelExport).where(ModelExport.version_id == version_id)
                          .order_by(ModelExport.created_at.desc(), ModelExport.id.desc())))


def delete_exports(s: Session, version_id: str) -> None:
    """Remove a version's export rows (with the version; their files are removed after the commit)."""
    s.execute(delete(ModelExport).where(ModelExport.version_id == version_id))


def add_export(s: Session, row: ModelExport) -> None:
    """Insert now (a concurrent request for the same export raises here)."""
    s.add(row)
    s.flush()


def stale_exports(s: Session, now: datetime, max_attempts: int) -> list[ModelExport]:
    """Running exports whose worker let its lease lapse after the last allowed attempt."""
    return list(s.scalars(select(ModelExport).where(
        ModelExport.status == "running", ModelExport.lease_until < now, ModelExport.attempts >= max_attempts)))


def claimable_exports(s: Session, now: datetime, limit: int = 20) -> list[str]:
    """Queued exports, and running ones whose worker let its lease lapse; oldest first."""
    q = select(ModelExport.id).where(or_(
        ModelExport.status == "queued",
        (ModelExport.status == "running") & or_(ModelExport.lease_until.is_(None), ModelExport.lease_until < now)))
    return list(s.scalars(q.order_by(ModelExport.created_at, ModelExport.id).limit(limit)))


def claim_export(s: Session, export_id: str, owner: str, now: datetime, until: datetime) -> bool:
    """Take the export (compare-and-set: one worker runs it at a time); counts an attempt."""
    q = update(ModelExport).where(ModelExport.id == export_id, or_(
        ModelExport.status == "queued",
        (ModelExport.status == "running") & or_(ModelExport.lease_until.is_(None), ModelExport.lease_until < now)))
    result = s.execute(q.values(status="running", lease_owner=owner, lease_until=until, started_at=now, updated_at=now,
                                attempts=ModelExport.attempts + 1))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def extend_export_lease(s: Session, export_id: str, owner: str, until: datetime) -> bool:
    """Keep holding a running export; False when this worker no longer holds it."""
    result = s.execute(update(ModelExport).where(ModelExport.id == export_id, ModelExport.lease_owner == owner,
                                                 ModelExport.status == "running").values(lease_until=until))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def held_export(s: Session, export_id: str, owner: str) -> ModelExport | None:
    """The running export this worker holds, locked for update (None when it lost it or it is gone)."""
    return s.scalar(select(ModelExport).where(ModelExport.id == export_id, ModelExport.lease_owner == owner,
                                              ModelExport.status == "running").with_for_update())
