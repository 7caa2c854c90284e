"""Model exports as jobs: asked for over the API (one per version, format, quantization and
persona: asking again returns the same one, a failed one is queued again), made by the export
worker of a registry process (:class:`ExportWorker`, a thread holding a renewed lease on the
export it converts), stored in the artifact store with their sha256, and downloaded as files.

A worker that stops mid-way (a restart, a crash) lets its lease lapse: the export is then run
again by any worker, up to ``export_max_attempts`` starts, after which it is marked failed. The
conversions themselves are the pure functions of :mod:`coachforge_registry.exports`."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coachforge.registry.v1 import registry_pb2
from coachforge_registry import exports, repository
from coachforge_registry.adapters import ADAPTER_FILES
from coachforge_registry.metrics import EXPORTS
from coachforge_registry.models import Avatar, ModelExport, ModelVersion
from coachforge_registry.service import RegistryDeps
from coachforge_registry.storage import ArtifactFile, export_key, sha256_file
from coachforge_shared.errors import CoachForgeError, Conflict, FailedPrecondition, InvalidArgument, NotFound
from coachforge_shared.ids import to_unix, utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.loops import BackgroundLoop
from coachforge_shared.redact import plain_name, redact_paths

log = get_logger("coachforge.registry.exports")

def new_export_id() -> str:
    return f"export_{secrets.token_hex(12)}"


def _model_not_found(model_id: str) -> NotFound:
    return NotFound(f"The model '{model_id}' does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def _version(s: Session, deps: RegistryDeps, tenant_id: str, model_id: str, *, lock: bool = False) -> ModelVersion:
    """The tenant's fine-tuned version (a base model has nothing of the tenant's to export)."""
    if model_id in deps.settings.base_models:
        raise InvalidArgument(f"'{model_id}' is a base model; only fine-tuned models are exported.", param="model",
                              code="model_not_exportable")
    v = repository.version(s, tenant_id, model_id, lock=lock)
    if v is None:
        raise _model_not_found(model_id)
    return v


def check_request(fmt: str, quantization: str | None, avatar: str | None) -> str:
    """The quantization the request means ("" for adapter/merged); refusals name the field."""
    if fmt not in exports.FORMATS:
        raise InvalidArgument(f"Unknown format {fmt!r}; one of {', '.join(exports.FORMATS)}.", param="format",
                              code="invalid_value")
    if fmt not in exports.QUANTIZED_FORMATS:
        if quantization:
            raise InvalidArgument(f"quantization applies to the {' and '.join(exports.QUANTIZED_FORMATS)} formats, "
                                  f"not to {fmt}.", param="quantization", code="invalid_value")
        quantization = ""
    else:
        quantization = quantization or exports.DEFAULT_QUANTIZATION
        if quantization not in exports.QUANTIZATIONS:
            raise InvalidArgument(f"Unknown quantization {quantization!r}; one of {', '.join(exports.QUANTIZATIONS)}.",
                                  param="quantization", code="invalid_value")
    if avatar and fmt != "ollama":
        raise InvalidArgument("avatar applies to the ollama format only (its persona goes into the Modelfile).",
                              param="avatar", code="invalid_value")
    return quantization


def _persona_avatar(s: Session, tenant_id: str, model_id: str, avatar_name: str | None) -> Avatar | None:
    """The avatar whose persona an Ollama export carries: the one named (it must answer with the
    model, as its active or candidate model), else the first by name with the model as its active
    model and a persona; None when there is none."""
    if avatar_name:
        found = repository.avatar(s, tenant_id, avatar_name)
        if model_id not in (found.active_model, found.candidate_model):
            raise InvalidArgument(f"Avatar {avatar_name!r} does not answer with '{model_id}'.", param="avatar",
                                  code="avatar_model_mismatch")
        return found if found.persona_version else None
    for candidate in repository.avatars_using(s, tenant_id, model_id):
        if candidate.active_model == model_id and candidate.persona_version:
            return candidate
    return None


def create_export(deps: RegistryDeps, tenant_id: str, model_id: str, fmt: str, quantization: str | None = None,
                  avatar: str | None = None) -> ModelExport:
    """Ask for an export of a fine-tuned version; the same one asked for before is returned (a failed
    one is queued again), otherwise a new one is queued and the worker woken."""
    quantization = check_request(fmt, quantization, avatar)
    for _ in range(3):
        try:
            with deps.db.session() as s:
                v = _version(s, deps, tenant_id, model_id)
                if v.external_model:
                    raise InvalidArgument(
                        f"'{model_id}' is an external model, served by the remote that trained it "
                        f"({v.external_base_url}); it has no adapter here to export.", param="model",
                        code="model_not_exportable")
                persona_avatar = _persona_avatar(s, tenant_id, model_id, avatar) if fmt == "ollama" else None
                persona_json = ""
                if persona_avatar is not None:
                    persona_row = repository.persona(s, persona_avatar.id, persona_avatar.persona_version or 0)
                    persona_json = persona_row.settings_json if persona_row is not None else ""
                avatar_id, avatar_name, persona_version = "", "", 0
                if persona_avatar is not None and persona_json:
                    avatar_id, avatar_name = persona_avatar.id, persona_avatar.name
                    persona_version = persona_avatar.persona_version or 0
                found = repository.find_export(s, v.id, fmt, quantization, avatar_id, persona_version)
                if found is not None and found.status != "failed":
                    return found
                now = utcnow()
                if found is not None:  # asked for again after it failed: run it again
                    found.status, found.error, found.error_code, found.attempts = "queued", "", "", 0
                    found.finished_at, found.updated_at = None, now
                    row = found
                else:
                    row = ModelExport(
                        id=new_export_id(), tenant_id=tenant_id, version_id=v.id, model_id=v.model_id, format=fmt,
                        quantization=quantization, avatar_id=avatar_id, avatar=avatar_name,
                        persona_version=persona_version, persona_json=persona_json, status="queued",
                        filename=exports.export_filename(v.model_id, fmt, quantization or None), created_at=now,
                        updated_at=now)
                    repository.add_export(s, row)
            log.info("export queued", export=row.id, model=model_id, format=fmt, quantization=quantization)
            _wake(deps)
            return row
        except IntegrityError:  # the same export asked for at the same time: return that one
            continue
    raise Conflict("The same export was asked for at the same time; retry.", param="format", code="export_conflict")


def _wake(deps: RegistryDeps) -> None:
    if deps.export_wake is not None:
        deps.export_wake()


def get_export(deps: RegistryDeps, tenant_id: str, model_id: str, export_id: str) -> ModelExport:
    with deps.db.session() as s:
        v = _version(s, deps, tenant_id, model_id)
        row = repository.export(s, tenant_id, v.id, export_id)
        if row is None:
            raise NotFound(f"The model '{model_id}' has no export '{export_id}'.", param="export_id",
                           code="export_not_found")
        return row


def list_exports(deps: RegistryDeps, tenant_id: str, model_id: str) -> list[ModelExport]:
    with deps.db.session() as s:
        v = _version(s, deps, tenant_id, model_id)
        return repository.exports_of(s, v.id)


@dataclass
class ExportContent:
    """A succeeded export (its file name, size and sha256) and its file: where it lies on this
    machine (a local store, else None) and how to open it."""

    export: ModelExport
    path: Path | None
    stream: Callable[[], IO[bytes]]


def export_content(deps: RegistryDeps, tenant_id: str, model_id: str, export_id: str) -> ExportContent:
    """The file of a succeeded export (``FailedPrecondition`` while it is not)."""
    row = get_export(deps, tenant_id, model_id, export_id)
    if row.status != "succeeded" or not row.artifact_uri:
        raise FailedPrecondition(f"The export '{export_id}' is {row.status}; its content is there once it succeeded.",
                                 param="export_id", code="export_not_ready")
    store = deps.artifact_store()
    path = store.local_path(row.artifact_uri)
    if path is not None and not path.is_file():
        raise FailedPrecondition(f"The file of export '{export_id}' is missing from the artifact store.",
                                 param="export_id", code="artifact_missing")
    uri = row.artifact_uri
    return ExportContent(export=row, path=path, stream=lambda: store.open(uri))


def export_to_openai(e: ModelExport) -> dict[str, Any]:
    """The REST form: ``model.export`` with its status, and once succeeded its size and sha256."""
    done = e.status == "succeeded"
    return {"id": e.id, "object": "model.export", "model": e.model_id, "format": e.format,
            "quantization": e.quantization or None, "status": e.status, "filename": e.filename,
            "sha256": e.sha256 if done else None, "bytes": e.size_bytes if done else None,
            "avatar": e.avatar or None, "persona_version": e.persona_version or None,
            "created_at": to_unix(e.created_at), "finished_at": to_unix(e.finished_at) if e.finished_at else None,
            "error": {"code": e.error_code or "export_failed", "message": e.error} if e.status == "failed" else None}


def export_proto(e: ModelExport) -> registry_pb2.ModelExport:
    done = e.status == "succeeded"
    return registry_pb2.ModelExport(
        id=e.id, model=e.model_id, format=e.format, quantization=e.quantization, status=e.status,
        sha256=e.sha256 if done else "", bytes=e.size_bytes if done else 0, filename=e.filename, avatar=e.avatar,
        persona_version=e.persona_version, created_at=to_unix(e.created_at),
        finished_at=to_unix(e.finished_at) if e.finished_at else 0,
        error=e.error if e.status == "failed" else "", error_code=e.error_code if e.status == "failed" else "")


# -- the worker ------------------------------------------------------------------------------------

class ExportWorker(BackgroundLoop):
    """Runs queued exports one at a time in a thread of the registry process (a conversion holds a
    merged model in memory). It holds each export with a lease renewed while it converts; exports
    whose worker stopped are taken over once their lease lapsed."""

    failure_message = "export pass failed"

    def __init__(self, deps: RegistryDeps, owner: str) -> None:
        super().__init__("export-worker", deps.settings.export_poll_interval_s)
        self.deps, self.owner, self.settings = deps, owner, deps.settings

    def run_pass(self) -> None:
        while not self.stopping.is_set() and self.run_next():
            pass

    def _lease(self) -> timedelta:
        return timedelta(seconds=self.settings.export_lease_s)

    def run_next(self) -> bool:
        """Fail exports interrupted too often, then take and run the oldest one free; False when none is."""
        now = utcnow()
        with self.deps.db.session() as s:
            for row in repository.stale_exports(s, now, self.settings.export_max_attempts):
                self._finish_failed(s, row, f"The export was interrupted {row.attempts} times (the registry process "
                                    "converting it stopped); ask for it again.", "export_interrupted")
            ids = repository.claimable_exports(s, now)
        for export_id in ids:
            now = utcnow()
            with self.deps.db.session() as s:
                claimed = repository.claim_export(s, export_id, self.owner, now, now + self._lease())
            if claimed:
                self.run(export_id)
                return True
        return False

    def run(self, export_id: str) -> None:
        """Convert the export this worker holds, store its file, and record the outcome."""
        with self.deps.db.session() as s:
            row = s.get(ModelExport, export_id)
            v = s.get(ModelVersion, row.version_id) if row is not None else None
            if row is None or v is None:
                return
            s.expunge(row)
            s.expunge(v)
        log.info("export started", export=export_id, model=row.model_id, format=row.format,
                 quantization=row.quantization, attempt=row.attempts)
        staging = self.deps.staging_dir()
        staging.mkdir(parents=True, exist_ok=True)
        renewing = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(export_id, renewing), name="export-lease", daemon=True)
        renewer.start()
        stored_uri = ""
        try:
            with tempfile.TemporaryDirectory(prefix="export-", dir=staging) as tmp:
                work = Path(tmp)
                out = exports.produce(self._request(row, v, work), work)
                digest, size = sha256_file(out), out.stat().st_size
                store = self.deps.artifact_store()
                stored_uri = store.put_file(out, f"{export_key(row.tenant_id, row.id)}/{row.filename}", digest)
        except (exports.ExportError, CoachForgeError) as err:
            self._fail(export_id, str(err) if isinstance(err, exports.ExportError) else err.message, "export_failed")
            return
        except Exception as err:  # a bug, a full disk, a broken file: the message without server paths
            log.exception("export failed", export=export_id)
            message = redact_paths(f"{type(err).__name__}: {err}", {"staging": staging})[:2000]
            self._fail(export_id, f"The export could not be made: {message}", "export_failed")
            return
        finally:
            renewing.set()
            renewer.join(timeout=10)
        with self.deps.db.session() as s:
            held = repository.held_export(s, export_id, self.owner)
            if held is not None:
                held.status, held.artifact_uri, held.sha256, held.size_bytes = "succeeded", stored_uri, digest, size
                held.error, held.error_code, held.lease_owner, held.lease_until = "", "", None, None
                held.finished_at = held.updated_at = utcnow()
                self._publish(s, "model.export.succeeded", held)
        if held is None:  # deleted, or taken over after a lapsed lease: this copy is not the record's
            if stored_uri and not self._recorded(export_id, stored_uri):
                self.deps.artifact_store().remove(stored_uri)
            log.warning("export finished without holding it", export=export_id)
            return
        EXPORTS.labels(row.format, "succeeded").inc()
        log.info("export succeeded", export=export_id, model=row.model_id, bytes=size, sha256=digest)

    def _recorded(self, export_id: str, uri: str) -> bool:
        with self.deps.db.session() as s:
            row = s.get(ModelExport, export_id)
            return row is not None and row.artifact_uri == uri

    def _request(self, row: ModelExport, v: ModelVersion, work: Path) -> exports.ExportRequest:
        """Local copies of what the conversion reads: the adapter (checked against its recorded
        sha256s) and the base model's folder."""
        adapter_dir = work / "adapter"
        adapter_dir.mkdir()
        files = [ArtifactFile(**f) for f in json.loads(v.files_json or "[]")]
        if v.artifact_uri and files:
            try:
                self.deps.artifact_store().get_dir(v.artifact_uri, files, adapter_dir)
            except OSError as err:
                raise exports.ExportError(f"The model's adapter cannot be read from the artifact store: "
                                          f"{redact_paths(str(err))}") from None
        elif v.adapter_uri and "://" not in v.adapter_uri and Path(v.adapter_uri).is_dir():
            for name in ADAPTER_FILES:  # registered without a stored copy: the trainer's folder
                shutil.copyfile(Path(v.adapter_uri) / name, adapter_dir / name)
        else:
            raise exports.ExportError("The model's adapter is not stored in the registry; it cannot be exported.")
        base_dir = self.deps.models_dir() / v.base_model
        if not plain_name(v.base_model) or not (base_dir / "config.json").is_file():
            raise exports.ExportError(f"The base model '{v.base_model}' is not available to the registry.")
        persona = exports.Persona.from_settings(json.loads(row.persona_json)) if row.persona_json else None
        return exports.ExportRequest(model_id=v.model_id, base_model=v.base_model, base_dir=base_dir,
                                     adapter_dir=adapter_dir, format=row.format,
                                     quantization=row.quantization or None, persona=persona)

    def _renew(self, export_id: str, done: threading.Event) -> None:
        interval = self.settings.export_lease_s / 3
        while not done.wait(interval):
            try:
                with self.deps.db.session() as s:
                    if not repository.extend_export_lease(s, export_id, self.owner, utcnow() + self._lease()):
                        return
            except Exception as err:  # the database is out: try again next time, the lease may still hold
                log.warning("export lease not renewed", export=export_id, error=str(err))

    def _fail(self, export_id: str, message: str, code: str) -> None:
        with self.deps.db.session() as s:
            held = repository.held_export(s, export_id, self.owner)
            if held is not None:
                self._finish_failed(s, held, message, code)

    def _finish_failed(self, s: Session, row: ModelExport, message: str, code: str) -> None:
        row.status, row.error, row.error_code = "failed", message, code
        row.lease_owner, row.lease_until = None, None
        row.finished_at = row.updated_at = utcnow()
        self._publish(s, "model.export.failed", row)
        EXPORTS.labels(row.format, "failed").inc()
        log.warning("export failed", export=row.id, model=row.model_id, format=row.format, error=message)

    def _publish(self, s: Session, event: str, row: ModelExport) -> None:
        if self.deps.publisher is not None:
            self.deps.publisher.publish_in(s, event, export_proto(row), row.tenant_id, key=row.model_id)
