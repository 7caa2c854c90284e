"""Registry logic: register adapters (from finished jobs, idempotently, or uploaded), check they
can be served, number their versions per line, store their artifacts, and resolve models and avatars."""

from __future__ import annotations

import json
import lzma
import os
import re
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.evaluator.v1 import evaluator_pb2
from coachforge.registry.v1 import registry_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_registry import repository
from coachforge_registry.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    PICKLED_WEIGHTS,
    AdapterFacts,
    base_config_sha256,
    check_compatible,
    pickled_weights_refused,
    read_adapter,
)
from coachforge_registry.feedback import FeedbackSource
from coachforge_registry.knowledge import KnowledgeBaseCheck
from coachforge_registry.models import Avatar, AvatarChange, AvatarPersona, ModelVersion
from coachforge_registry.retrain_clients import RetrainClients
from coachforge_registry.schemas import PersonaSettings
from coachforge_registry.settings import RegistrySettings
from coachforge_registry.storage import ArtifactFile, ArtifactStore, export_key, manifest_digest, sha256_file
from coachforge_shared.db import Database
from coachforge_shared.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from coachforge_shared.events import EventPublisher, InvalidEvent
from coachforge_shared.ids import new_id, to_unix, utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.redact import redact_paths

log = get_logger("coachforge.registry")

BASE_OWNER = "coachforge"
SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_ARCHIVE_MEMBERS = 10_000
"""Most entries an uploaded archive may hold (an adapter has two files)."""
MAX_IGNORED_LISTED = 100
"""Most ignored file names a version's lineage lists (the total is given when there are more)."""
STAGING_FOLDER = ".registry-staging"
CHUNK = 1 << 20


@dataclass
class RegistryDeps:
    db: Database
    settings: RegistrySettings
    publisher: EventPublisher | None = None
    store: ArtifactStore | None = None
    artifacts_dir: Path | None = None
    """Local folder for artifacts when ``settings.storage_url`` is unset (the wiring passes
    ``<artifacts_dir>/registry``)."""
    platform_models_dir: Path | None = None
    """Prepared base models when ``settings.models_dir`` is unset (the platform's)."""
    retrain: RetrainClients | None = None
    """The other services a retrain needs (None: retraining is off)."""
    retrain_wake: Callable[[], None] | None = None
    """Wakes this process's retrain driver (a retrain was queued)."""
    export_wake: Callable[[], None] | None = None
    """Wakes this process's export worker (an export was queued; None: no worker here)."""
    feedback: FeedbackSource | None = None
    """Inference's feedback statistics for avatars' experiments (None: GET /v1/avatars/{name}/experiment
    is unavailable)."""
    knowledge_bases: KnowledgeBaseCheck | None = None
    """The dataset service, asked whether the tenant has the knowledge base a persona names (None: only
    the id's form is checked, and inference reports a knowledge base it cannot search)."""
    job_artifacts_dir: Path | None = None
    """Where trainer workers write adapters (the platform's artifacts_dir, one folder per tenant): a
    ``job.succeeded`` naming anything else is refused (None: not checked)."""

    def artifact_store(self) -> ArtifactStore:
        """Where artifacts go: ``storage_url`` (with ``storage_endpoint_url`` and ``storage_options``),
        else :attr:`artifacts_dir` on local disk."""
        if self.store is None:
            url = self.settings.storage_url or (str(self.artifacts_dir) if self.artifacts_dir else None)
            if url is None:
                raise RuntimeError("the registry has no artifact store: set storage_url or artifacts_dir")
            options = dict(self.settings.storage_options)
            if self.settings.storage_endpoint_url:
                options["endpoint_url"] = self.settings.storage_endpoint_url
            self.store = ArtifactStore(url, options)
        return self.store

    def models_dir(self) -> Path:
        found = self.settings.models_dir or self.platform_models_dir
        if found is None:
            raise RuntimeError("the registry has no models folder: set models_dir or platform_models_dir")
        return found

    def staging_dir(self) -> Path:
        """Where uploads are received and archives unpacked before they are checked and stored:
        ``settings.staging_dir``, else ``.registry-staging`` beside :attr:`artifacts_dir` (on the
        data volume), else beside a local store's folder; never the system's temporary folder."""
        if self.settings.staging_dir is not None:
            return self.settings.staging_dir
        if self.artifacts_dir is not None:
            return self.artifacts_dir.parent / STAGING_FOLDER
        store = self.artifact_store()
        if store.is_local:
            return Path(store.root).parent / STAGING_FOLDER
        raise RuntimeError("the registry has no folder to stage uploads in: set staging_dir")


def base_model_proto(model_id: str) -> registry_pb2.Model:
    return registry_pb2.Model(id=model_id, owned_by=BASE_OWNER, created=0, base_model=model_id)


def version_proto(v: ModelVersion) -> registry_pb2.Model:
    return registry_pb2.Model(
        id=v.model_id, owned_by=v.tenant_id, created=to_unix(v.created_at), base_model=v.base_model,
        adapter_uri=v.adapter_uri, adapter_name=v.id, lora_rank=v.lora_rank, job_id=v.job_id or "",
        version=v.version, status=v.status, suffix=v.suffix, target_modules=json.loads(v.target_modules_json),
        files=[registry_pb2.ArtifactFile(**f) for f in json.loads(v.files_json)], size_bytes=v.size_bytes,
        artifact_sha256=v.artifact_sha256, base_config_sha256=v.base_config_sha256, artifact_uri=v.artifact_uri,
        source=v.source, lineage_json=v.lineage_json, evaluations_json=v.eval_json,
        external_model=v.external_model or "", external_base_url=v.external_base_url or "")


def suffix_of(model_id: str) -> str:
    """``ft:<base>:<tenant>:<suffix>:<id>`` -> suffix."""
    parts = model_id.split(":")
    return parts[-2] if model_id.startswith("ft:") and len(parts) >= 5 else ""


def _next_version(s: Session, tenant_id: str, base_model: str, suffix: str) -> int:
    """Version numbers count up per line (tenant, base model, suffix) from 1."""
    return repository.latest_version(s, tenant_id, base_model, suffix) + 1


def _adapter_files(adapter_dir: Path) -> tuple[list[ArtifactFile], list[str]]:
    """The adapter's files the registry keeps (:data:`ADAPTER_FILES`, checksummed) and the paths of
    every other file in the folder, which are ignored (never stored, never given to the engines)."""
    files = [ArtifactFile(name, sha256_file(adapter_dir / name), (adapter_dir / name).stat().st_size)
             for name in ADAPTER_FILES]
    ignored = sorted(p.relative_to(adapter_dir).as_posix() for p in adapter_dir.rglob("*")
                     if (p.is_file() or p.is_symlink()) and p.relative_to(adapter_dir).as_posix() not in ADAPTER_FILES)
    return files, ignored


def _register(s: Session, deps: RegistryDeps, *, tenant_id: str, base_model: str, suffix: str, model_id: str,
              facts: AdapterFacts, adapter_dir: Path | None, adapter_uri: str, source: str, job_id: str | None,
              lineage: dict[str, Any], param: str, ignored: Iterable[str] = (),
              external: tuple[str, str] | None = None) -> tuple[ModelVersion, str]:
    """Check compatibility, store the artifact (when readable: only adapter_config.json and the
    safetensors weights; every other file, found in the folder or given in ``ignored``, is listed
    in the lineage's ``ignored_files``), insert the row as a candidate. Returns the row and the
    stored artifact's URI ("" when none) so a caller can remove it if its transaction fails.
    ``external``: the remote model and base URL of an external model, which has no artifact and is
    not checked against the engines (the remote serves it)."""
    if external is None:
        check_compatible(base_model=base_model, adapter_base=facts.base_model_name_or_path,
                         lora_rank=facts.lora_rank, target_modules=facts.target_modules,
                         modules_to_save=facts.modules_to_save, base_models=deps.settings.base_models,
                         max_lora_rank=deps.settings.max_lora_rank, param=param)
    config_sha = base_config_sha256(deps.models_dir(), base_model)  # a configured base model's folder only
    vid = new_id("mv")
    files: list[ArtifactFile] = []
    artifact_uri = ""
    if adapter_dir is not None:
        files, found = _adapter_files(adapter_dir)
        skipped = sorted({*ignored, *found})
        if skipped:
            lineage = {**lineage, "ignored_files": skipped[:MAX_IGNORED_LISTED]}
            if len(skipped) > MAX_IGNORED_LISTED:
                lineage["ignored_files_total"] = len(skipped)
        store = deps.artifact_store()
        artifact_uri = store.put_dir(adapter_dir, f"{tenant_id}/{vid}", files)
        adapter_uri = artifact_uri
    try:
        v = ModelVersion(
            id=vid, tenant_id=tenant_id, model_id=model_id or f"ft:{base_model}:{tenant_id}:{suffix}:{vid[-8:]}",
            base_model=base_model, adapter_uri=adapter_uri, lora_rank=facts.lora_rank,
            target_modules_json=json.dumps(facts.target_modules), job_id=job_id, status="candidate",
            suffix=suffix, version=_next_version(s, tenant_id, base_model, suffix), source=source,
            artifact_uri=artifact_uri, files_json=json.dumps([f.__dict__ for f in files]),
            size_bytes=sum(f.size for f in files), artifact_sha256=manifest_digest(files) if files else "",
            base_config_sha256=config_sha, lineage_json=json.dumps(lineage), updated_at=utcnow(),
            external_model=external[0] if external else None, external_base_url=external[1] if external else None)
        repository.add_version(s, v)
        if deps.publisher is not None:
            deps.publisher.publish_in(s, "model.registered", registry_pb2.ModelRegistered(model=version_proto(v)),
                                      tenant_id, key=v.model_id)
    except BaseException:
        if artifact_uri:
            deps.artifact_store().remove(artifact_uri)
        raise
    log.info("model registered", model=v.model_id, tenant=tenant_id, version=v.version, source=source,
             job_id=job_id, size=v.size_bytes, external=bool(external))
    return v, artifact_uri


def job_lineage(ev: trainer_pb2.JobSucceeded) -> dict[str, Any]:
    """Where a job's adapter came from: job, data, hyperparameters, training metrics, and for continued
    training the parent model it started from. Facts an older trainer did not send (validation file,
    hyperparameters, valid loss, epochs, steps, result file, parent, method, backend, remote job) are
    left out rather than shown as zeros."""
    lineage: dict[str, Any] = {"job_id": ev.job_id, "training_file": ev.training_file,
                               "trained_tokens": ev.trained_tokens, "final_loss": ev.final_loss}
    if ev.validation_file:
        lineage["validation_file"] = ev.validation_file
    if ev.dataset_version:
        lineage["dataset_version"] = ev.dataset_version
    if ev.hyperparameters_json:
        try:
            hyperparameters = json.loads(ev.hyperparameters_json)
        except ValueError:
            hyperparameters = None
        if isinstance(hyperparameters, dict):
            lineage["hyperparameters"] = hyperparameters
        else:
            log.warning("job hyperparameters are not a JSON object", job_id=ev.job_id)
    if ev.HasField("valid_loss"):
        lineage["valid_loss"] = ev.valid_loss
    if ev.n_epochs:
        lineage["n_epochs"] = ev.n_epochs
    if ev.steps:
        lineage["steps"] = ev.steps
    if ev.result_file:
        lineage["result_file"] = ev.result_file
    if ev.parent_model:
        lineage["parent_model"] = ev.parent_model  # continued training: the version it started from
    if ev.method:
        lineage["method"] = ev.method
    if ev.backend:
        lineage["backend"] = ev.backend
    if ev.remote_job_id:  # trained by a remote fine-tuning API: its job, model and base URL
        lineage["remote"] = {"job_id": ev.remote_job_id, "model": ev.remote_model, "base_url": ev.remote_base_url}
    return lineage


def check_job_artifact(deps: RegistryDeps, tenant_id: str, adapter_uri: str) -> None:
    """Refuse (:class:`InvalidEvent`) a job's adapter that is not a local path inside the tenant's
    folder of the job artifact store: a forged or corrupted event must not make the registry copy,
    or inference load, files from anywhere else (another tenant's folder, the server's files, a
    foreign bucket)."""
    root = deps.job_artifacts_dir
    if root is None:
        return
    if not adapter_uri:
        raise InvalidEvent("job.succeeded names no adapter (adapter_uri is empty).")
    if "://" in adapter_uri or adapter_uri.startswith("file:"):
        raise InvalidEvent(f"job.succeeded adapter_uri {adapter_uri[:200]!r} has a scheme; only paths inside "
                           "the job artifact store are accepted.")
    tenant_root = Path(os.path.realpath(root / tenant_id))
    if not tenant_id or not Path(adapter_uri).is_absolute() or not Path(
            os.path.realpath(adapter_uri)).is_relative_to(tenant_root):
        raise InvalidEvent(f"job.succeeded adapter_uri {adapter_uri[:200]!r} is outside the job artifact store "
                           f"of tenant {tenant_id!r}.")


def on_job_succeeded(deps: RegistryDeps, s: Session, env: Envelope, ev: trainer_pb2.JobSucceeded) -> Any:
    """Register the adapter a job produced. Runs in the event's idempotency transaction; a job
    already registered (e.g. replayed under a new event id) creates nothing new. An incompatible
    adapter is not registered: ``model.rejected`` says which fact differs. An adapter outside the
    tenant's job artifact folder is refused (:func:`check_job_artifact`: dead-lettered). A job
    without an adapter whose remote serves its model (``remote_model``: the remote offers no
    download) is registered as an external model (:func:`_register_external`)."""
    external = not ev.adapter_uri and bool(ev.remote_model)
    if external:
        check_external(ev)
    else:
        check_job_artifact(deps, env.tenant_id, ev.adapter_uri)
    if repository.job_registered(s, ev.job_id):
        log.info("job already registered", job_id=ev.job_id)
        return None
    if external:
        return _register_external(deps, s, env, ev)
    adapter_dir = Path(ev.adapter_uri) if ev.adapter_uri and "://" not in ev.adapter_uri else None
    lineage = job_lineage(ev)
    try:
        if adapter_dir is not None and adapter_dir.is_dir():
            facts = read_adapter(adapter_dir, param="adapter_uri")
        else:
            # The artifact cannot be read here: register the facts the trainer reported, without checksums.
            log.warning("adapter not readable at registration", job_id=ev.job_id, adapter_uri=ev.adapter_uri)
            facts = AdapterFacts(base_model_name_or_path="", lora_rank=ev.lora_rank,
                                 target_modules=sorted(set(ev.target_modules)))
            adapter_dir = None
        # Every refusal (InvalidArgument) happens before anything is written.
        _register(s, deps, tenant_id=env.tenant_id, base_model=ev.base_model, suffix=suffix_of(ev.fine_tuned_model),
                  model_id=ev.fine_tuned_model, facts=facts, adapter_dir=adapter_dir, adapter_uri=ev.adapter_uri,
                  source="job", job_id=ev.job_id, lineage=lineage, param="adapter_uri")
    except InvalidArgument as err:
        log.warning("adapter refused", job_id=ev.job_id, model=ev.fine_tuned_model, reason=err.message)
        if deps.publisher is not None:
            deps.publisher.publish_in(s, "model.rejected", registry_pb2.ModelRejected(
                job_id=ev.job_id, model_id=ev.fine_tuned_model, reason=err.message), env.tenant_id,
                key=ev.fine_tuned_model)
        return None
    return None


def check_external(ev: trainer_pb2.JobSucceeded) -> None:
    """Refuse (:class:`InvalidEvent`) an external model's job that does not name where it is served: a
    remote model id and an http(s) base URL without credentials (inference forwards its requests
    there, and only when it is the tenant's configured remote)."""
    if len(ev.remote_model) > 300 or any(c.isspace() for c in ev.remote_model):
        raise InvalidEvent(f"job.succeeded remote_model {ev.remote_model[:200]!r} is not a model id.")
    parts = urlsplit(ev.remote_base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or len(ev.remote_base_url) > 1000:
        raise InvalidEvent(f"job.succeeded remote_base_url {ev.remote_base_url[:200]!r} is not an http(s) URL "
                           "without credentials; an external model needs the remote that serves it.")


def _register_external(deps: RegistryDeps, s: Session, env: Envelope, ev: trainer_pb2.JobSucceeded) -> None:
    """Register a job's external model: no artifact (no files, size 0) and no engine checks (the remote
    serves it, so neither the engines' base models nor their LoRA limits apply)."""
    _register(s, deps, tenant_id=env.tenant_id, base_model=ev.base_model, suffix=suffix_of(ev.fine_tuned_model),
              model_id=ev.fine_tuned_model, facts=AdapterFacts(base_model_name_or_path="", lora_rank=0,
                                                                target_modules=[]),
              adapter_dir=None, adapter_uri="", source="job", job_id=ev.job_id, lineage=job_lineage(ev),
              param="remote_model", external=(ev.remote_model, ev.remote_base_url.rstrip("/")))


# -- upload -------------------------------------------------------------------------------------

def _member_path(name: str) -> str | None:
    """An archive entry's path as ``a/b`` (``./`` parts dropped), or None when it is absolute,
    climbs out ('..') or holds a backslash or NUL."""
    if not name or "\\" in name or "\x00" in name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return None
    return "/".join(part for part in path.parts if part != ".")


def _archive_root(names: Iterable[str]) -> str:
    """The folder of the archive holding adapter_config.json: its top (""), or its one top-level folder."""
    names = set(names)
    if ADAPTER_CONFIG in names:
        return ""
    found = sorted(n for n in names if n.rsplit("/", 1)[-1] == ADAPTER_CONFIG)
    if len(found) == 1 and found[0].count("/") == 1:
        return found[0].split("/", 1)[0]
    if len(found) > 1:
        raise InvalidArgument("The upload holds more than one adapter_config.json.", param="file")
    raise InvalidArgument("The upload has no adapter_config.json (at its top or in one top-level folder).",
                          param="file")


@dataclass
class _Entry:
    """One entry of an uploaded archive."""

    name: str
    kind: str  # "file", "dir" or "other" (links, devices, ...)
    size: int
    ref: Any  # the TarInfo or ZipInfo


def _unpack(entries: list[_Entry], open_entry: Callable[[Any], IO[bytes]], dest: Path, limit: int) -> list[str]:
    """Write the adapter's files (:data:`ADAPTER_FILES`) of an archive's entries to ``dest``; the
    paths of the other files, which are not written, are returned. Links, special files, absolute
    or parent paths, more than ``limit`` bytes unpacked and pickled weights are refused."""
    if any(e.kind == "other" for e in entries):
        raise InvalidArgument("The archive holds links or special files; only files are accepted.", param="file")
    files: dict[str, _Entry] = {}
    for e in entries:
        path = _member_path(e.name)
        if path is None:
            raise InvalidArgument("The archive holds an absolute or parent ('..') path.", param="file")
        if e.kind == "file":
            files[path] = e
    if sum(e.size for e in files.values()) > limit:
        raise PayloadTooLarge(f"The archive unpacks to more than {limit} bytes.", param="file")
    root = _archive_root(files)
    prefix = f"{root}/" if root else ""
    if prefix + PICKLED_WEIGHTS in files:
        raise pickled_weights_refused("file")
    for name in ADAPTER_FILES:
        entry = files.get(prefix + name)
        if entry is None:
            continue
        with open_entry(entry.ref) as src, (dest / name).open("wb") as out:
            written = 0
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > entry.size:
                    raise InvalidArgument(f"The archive's {name} is longer than its entry says.", param="file")
                out.write(chunk)
    return sorted(n for n in files if n not in {prefix + name for name in ADAPTER_FILES})


def _too_many_entries() -> InvalidArgument:
    return InvalidArgument(f"The archive holds more than {MAX_ARCHIVE_MEMBERS} entries; an adapter needs two files.",
                           param="file")


def _archive_error(err: BaseException, staging: Path) -> str:
    """What went wrong reading an archive, without a server path (an OSError's text names its file)."""
    if isinstance(err, OSError) and (err.filename or err.filename2):
        return err.strerror or "read error"
    return redact_paths(str(err), {"upload": staging})[:300] or type(err).__name__


def _extract(archive: Path, dest: Path, limit: int) -> list[str]:
    """Unpack the adapter's files of a .tar(.gz)/.tgz/.zip archive into ``dest`` (see :func:`_unpack`);
    the other files' paths are returned. Entries are counted and sized as they are read, so a
    bomb is refused before it is unpacked."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                if len(infos) > MAX_ARCHIVE_MEMBERS:
                    raise _too_many_entries()
                entries = []
                for info in infos:
                    mode = stat.S_IFMT(info.external_attr >> 16)
                    kind = "dir" if info.is_dir() else "file" if mode in (0, stat.S_IFREG) else "other"
                    entries.append(_Entry(info.filename, kind, info.file_size, info))
                return _unpack(entries, zf.open, dest, limit)
        with tarfile.open(archive, "r:*") as tf:
            entries, total = [], 0
            for member in tf:
                if len(entries) >= MAX_ARCHIVE_MEMBERS:
                    raise _too_many_entries()
                kind = "file" if member.isfile() else "dir" if member.isdir() else "other"
                total += member.size if kind == "file" else 0
                if total > limit:
                    raise PayloadTooLarge(f"The archive unpacks to more than {limit} bytes.", param="file")
                entries.append(_Entry(member.name, kind, member.size, member))

            def open_member(member: tarfile.TarInfo) -> IO[bytes]:
                found = tf.extractfile(member)
                assert found is not None  # a regular file
                return found

            return _unpack(entries, open_member, dest, limit)
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, lzma.LZMAError,
            OSError, NotImplementedError, RuntimeError, ValueError) as err:
        # ValueError: a damaged zip's fields; RuntimeError: an encrypted zip entry; NotImplementedError: an
        # unknown compression method.
        raise InvalidArgument(f"The archive cannot be read: {_archive_error(err, dest.parent)}",
                              param="file") from None


def _receive(stream: IO[bytes], target: Path | None, total: int, limit: int) -> int:
    """Read one uploaded file into ``target`` (None: read and count it only); the upload's running total."""
    out = target.open("wb") if target is not None else None
    try:
        while chunk := stream.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"The upload exceeds {limit} bytes.", param="file")
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    return total


def upload_version(deps: RegistryDeps, tenant_id: str, actor: str, base_model: str, suffix: str,
                   uploads: list[tuple[str, IO[bytes]]]) -> ModelVersion:
    """Register an existing PEFT LoRA adapter: files (adapter_config.json + adapter_model.safetensors)
    or one archive (.tar.gz/.tgz/.tar/.zip) holding them at its top or in one top-level folder.
    Validated, checked for compatibility, checksummed, stored, a candidate. Weights in pickle form
    (adapter_model.bin) are refused; any other file is ignored (not stored, listed in the lineage's
    ``ignored_files``). The upload is received, and an archive unpacked, in a folder of
    :meth:`RegistryDeps.staging_dir` (the data volume, not the system's temporary folder), removed
    afterwards; file names sent by the client are never used as paths."""
    if base_model not in deps.settings.base_models:
        raise NotFound(f"The base model '{base_model}' does not exist.", param="base_model", code="model_not_found")
    if suffix and not SUFFIX.match(suffix):
        raise InvalidArgument("suffix is 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit).",
                              param="suffix")
    if not uploads:
        raise InvalidArgument("Send the adapter files or one archive in 'file'.", param="file")
    limit = deps.settings.max_upload_bytes
    staging_root = deps.staging_dir()
    staging_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upload-", dir=staging_root) as tmp:
        archive_path, staging = Path(tmp) / "archive", Path(tmp) / "adapter"
        staging.mkdir()
        total = 0
        names: list[str] = []
        archives: list[str] = []
        for filename, stream in uploads:
            name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
            if not name or name in (".", "..") or "\x00" in name or len(name) > 255:
                raise InvalidArgument(f"Bad file name {(filename or '')[:300]!r}.", param="file")
            if name in names:
                raise InvalidArgument(f"The file {name!r} was sent twice.", param="file")
            names.append(name)
            if name == PICKLED_WEIGHTS:
                raise pickled_weights_refused("file")
            if name.lower().endswith(ARCHIVES):
                archives.append(name)
                ext = next(e for e in ARCHIVES if name.lower().endswith(e))
                archive_path = Path(tmp) / f"archive{ext}"
                target: Path | None = archive_path if len(archives) == 1 else None
            else:
                target = staging / name if name in ADAPTER_FILES else None
            total = _receive(stream, target, total, limit)
        if archives:
            if len(names) != 1:
                raise InvalidArgument("Send either one archive or the adapter's files, not both.", param="file")
            ignored = _extract(archive_path, staging, limit)
        else:
            ignored = [n for n in names if n not in ADAPTER_FILES]
        facts = read_adapter(staging, param="file")
        for attempt in range(3):
            artifact_uri = ""
            try:
                with deps.db.session() as s:
                    v, artifact_uri = _register(
                        s, deps, tenant_id=tenant_id, base_model=base_model, suffix=suffix, model_id="",
                        facts=facts, adapter_dir=staging, adapter_uri="", source="upload", job_id=None,
                        lineage={"uploaded_by": actor, "files": names}, param="file", ignored=ignored)
                return v
            except IntegrityError:  # a concurrent registration took the same version number
                if artifact_uri:
                    deps.artifact_store().remove(artifact_uri)
                if attempt == 2:
                    raise Conflict("Another version of this line was registered at the same time; retry.",
                                   param="suffix", code="version_conflict") from None
            except BaseException:
                if artifact_uri:
                    deps.artifact_store().remove(artifact_uri)
                raise
    raise AssertionError("unreachable")


def list_models(deps: RegistryDeps, tenant_id: str) -> list[registry_pb2.Model]:
    with deps.db.session() as s:
        versions = repository.versions(s, tenant_id)
    return [base_model_proto(m) for m in deps.settings.base_models] + [version_proto(v) for v in versions]


def _find_model(s: Session, deps: RegistryDeps, tenant_id: str, model_id: str) -> registry_pb2.Model | None:
    if model_id in deps.settings.base_models:
        return base_model_proto(model_id)
    v = repository.version(s, tenant_id, model_id)
    return version_proto(v) if v is not None else None


def get_model(deps: RegistryDeps, tenant_id: str, model_id: str) -> registry_pb2.Model:
    """Resolve a model id, or an avatar name to the model it points at."""
    with deps.db.session() as s:
        found = _find_model(s, deps, tenant_id, model_id)
        if found is None:
            avatar = repository.find_avatar(s, tenant_id, model_id)
            if avatar is not None:
                found = _find_model(s, deps, tenant_id, avatar.active_model)
                if found is not None:
                    found.fallback = avatar.fallback
    if found is None:
        raise _not_found(model_id)
    return found


def _not_found(model_id: str) -> NotFound:
    return NotFound(f"The model '{model_id}' does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def list_versions(deps: RegistryDeps, tenant_id: str, model_id: str) -> list[registry_pb2.Model]:
    """A fine-tuned model's line (same tenant, base and suffix), or every line of the tenant on a
    base model; newest version first."""
    with deps.db.session() as s:
        if model_id in deps.settings.base_models:
            rows = repository.versions_on_base(s, tenant_id, model_id)
        else:
            v = repository.version(s, tenant_id, model_id)
            if v is None:
                raise _not_found(model_id)
            rows = repository.versions_of_line(s, tenant_id, v.base_model, v.suffix)
    return [version_proto(v) for v in rows]


def delete_model(deps: RegistryDeps, tenant_id: str, model_id: str) -> dict[str, object]:
    """Delete a fine-tuned version with its exports. Refused while an avatar points at it (active or
    candidate); its artifact and its exports' files are removed only after the rows are gone (committed)."""
    if model_id in deps.settings.base_models:
        raise PermissionDenied(f"The base model '{model_id}' cannot be deleted.", param="model",
                               code="model_not_deletable")
    with deps.db.session() as s:
        v = repository.version(s, tenant_id, model_id, lock=True)
        if v is None:
            raise _not_found(model_id)
        users = repository.avatars_using(s, tenant_id, model_id)
        if users:
            roles = ", ".join(f"{a.name} ({'active' if a.active_model == model_id else 'candidate'})" for a in users)
            raise FailedPrecondition(f"The model '{model_id}' is in use by avatar(s) {roles}; point them "
                                     "elsewhere first.", param="model", code="model_in_use")
        artifact_uri, adapter_name = v.artifact_uri, v.id
        exported = [export_key(e.tenant_id, e.id) for e in repository.exports_of(s, v.id)]
        repository.delete_exports(s, v.id)
        repository.delete_version(s, v)
        if deps.publisher is not None:
            deps.publisher.publish_in(s, "model.deleted", registry_pb2.ModelDeleted(
                model_id=model_id, adapter_name=adapter_name), tenant_id, key=model_id)
    if artifact_uri or exported:
        store = deps.artifact_store()
        for uri in [u for u in (artifact_uri,) if u] + [store.uri(key) for key in exported]:
            try:
                store.remove(uri)
            except OSError as err:  # the row is gone; a leftover file is only disk space
                log.warning("artifact not removed", model=model_id, artifact_uri=uri, error=str(err))
    log.info("model deleted", model=model_id, tenant=tenant_id, exports=len(exported))
    return {"id": model_id, "object": "model", "deleted": True}


EVAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def record_evaluation(deps: RegistryDeps, tenant_id: str, actor: str, model_id: str, name: str,
                      metrics: dict[str, float]) -> registry_pb2.Model:
    """Keep an evaluation's metrics on the version (a repeat of the same name replaces it)."""
    if not EVAL_NAME.match(name):
        raise InvalidArgument("name is 1-64 letters, digits, '.', '_' or '-'.", param="name")
    if not metrics or len(metrics) > 100:
        raise InvalidArgument("metrics must hold 1-100 numbers.", param="metrics")
    for key, value in metrics.items():
        if not key or len(key) > 64 or isinstance(value, bool) or not isinstance(value, int | float) \
                or value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgument(f"metrics.{key} must be a finite number under a 1-64 character name.",
                                  param=f"metrics.{key}")
    with deps.db.session() as s:
        v = repository.version(s, tenant_id, model_id, lock=True)
        if v is None:
            raise _not_found(model_id)
        _store_evaluation(v, name, metrics, actor)
        return version_proto(v)


def _store_evaluation(v: ModelVersion, name: str, metrics: dict[str, float], actor: str) -> None:
    evaluations = json.loads(v.eval_json or "{}")
    evaluations[name] = {"metrics": {k: float(x) for k, x in metrics.items()},
                         "recorded_at": to_unix(utcnow()), "actor": actor}
    v.eval_json, v.updated_at = json.dumps(evaluations), utcnow()


def on_eval_run_succeeded(deps: RegistryDeps, s: Session, env: Envelope, ev: evaluator_pb2.EvalRunFinished) -> None:
    """A completed eval run of a registered version is kept on it (under the eval's id), so that
    ``GET /v1/models/{id}`` shows its latest results; runs of base models or avatars are not."""
    v = repository.version(s, env.tenant_id, ev.model, lock=True)
    if v is None:
        return
    graded = ev.passed + ev.failed + ev.errored
    metrics = {"pass_rate": ev.passed / graded if graded else 0.0, "items": float(ev.total),
               "errored": float(ev.errored)}
    for criterion, rate in list(ev.criteria_pass_rates.items())[:90]:
        metrics[f"criteria.{criterion}"[:64]] = rate
    _store_evaluation(v, ev.eval_id, metrics, f"eval-run:{ev.run_id}")
    log.info("eval run recorded on the version", model=ev.model, eval_id=ev.eval_id, run_id=ev.run_id)


# -- avatars ------------------------------------------------------------------------------------

AVATAR_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FALLBACKS = ("error", "base")
# Changes that moved the active model (rollback goes back along these).
ACTIVE_CHANGES = ("created", "activated", "rolled_back", "pinned")


def _require_servable(s: Session, deps: RegistryDeps, tenant_id: str, model_id: str,
                      param: str = "model") -> registry_pb2.Model:
    """The model exists for this tenant and the engines can serve it (checked again at activation:
    settings or the base model may have changed since registration); an external model is served by
    its remote, not the engines."""
    if model_id in deps.settings.base_models:
        return base_model_proto(model_id)
    v = repository.version(s, tenant_id, model_id, lock=True)  # locked: a concurrent delete waits
    if v is None:
        raise InvalidArgument(f"The model '{model_id}' does not exist or you do not have access to it.",
                              param=param, code="model_not_found")
    if v.external_model:
        return version_proto(v)
    check_compatible(base_model=v.base_model, adapter_base="", lora_rank=v.lora_rank,
                     target_modules=json.loads(v.target_modules_json), base_models=deps.settings.base_models,
                     max_lora_rank=deps.settings.max_lora_rank, registered_config_sha256=v.base_config_sha256,
                     current_config_sha256=base_config_sha256(deps.models_dir(), v.base_model), param=param)
    if v.artifact_uri:
        files = [ArtifactFile(**f) for f in json.loads(v.files_json)]
        problem = deps.artifact_store().verify(v.artifact_uri, files)
        if problem:
            raise FailedPrecondition(f"The model '{model_id}' cannot be served: {problem}.", param=param,
                                     code="artifact_corrupt")
    return version_proto(v)


def _sync_status(s: Session, tenant_id: str, model_ids: Iterable[str | None]) -> None:
    """Lifecycle: a version an avatar answers with is active; an active one no avatar uses any more
    is retired; candidates stay candidates until activated."""
    s.flush()
    for model_id in {m for m in model_ids if m}:
        v = repository.version(s, tenant_id, model_id)
        if v is None:
            continue
        used = repository.count_active_on(s, tenant_id, model_id)
        status = "active" if used else ("retired" if v.status == "active" else v.status)
        if status != v.status:
            v.status, v.updated_at = status, utcnow()


def _publish(s: Session, deps: RegistryDeps, event: str, tenant_id: str, avatar: Avatar,
             previous: str | None) -> None:
    """The avatar's change as an event, in the change's transaction (the outbox)."""
    if deps.publisher is not None:
        deps.publisher.publish_in(s, event, registry_pb2.AvatarChanged(
            avatar=avatar.name, model=avatar.active_model, previous_model=previous or "",
            candidate_model=avatar.candidate_model or "", candidate_share=avatar.candidate_share,
            pinned=avatar.pinned), tenant_id, key=avatar.name)


def _record(s: Session, avatar: Avatar, action: str, previous: str | None, actor: str, reason: str,
            **detail: object) -> None:
    avatar.updated_at = utcnow()
    repository.add_change(s, AvatarChange(avatar_id=avatar.id, action=action, from_model=previous,
                                          to_model=avatar.active_model, actor=actor, reason=reason,
                                          detail_json=json.dumps(detail)))


def _not_pinned(avatar: Avatar) -> None:
    if avatar.pinned:
        raise FailedPrecondition(f"Avatar {avatar.name!r} is pinned to {avatar.active_model!r}; unpin it first.",
                                 param="avatar", code="avatar_pinned")


def create_avatar(deps: RegistryDeps, tenant_id: str, actor: str, name: str, model_id: str,
                  fallback: str = "error", reason: str = "", store: bool | None = None) -> Avatar:
    """A new avatar answering with ``model_id``; ``store``: keep its chat completions when a request
    does not say (None: the tenant's default)."""
    if not AVATAR_NAME.match(name):
        raise InvalidArgument("Avatar names are 1-64 lower-case letters, digits, '.', '_' or '-'.", param="name")
    if fallback not in FALLBACKS:
        raise InvalidArgument(f"fallback must be one of {', '.join(FALLBACKS)}.", param="fallback")
    with deps.db.session() as s:
        if _find_model(s, deps, tenant_id, name) is not None:
            raise InvalidArgument(f"{name!r} is already a model id.", param="name")
        if repository.avatar_exists(s, tenant_id, name):
            raise Conflict(f"An avatar named {name!r} already exists.", param="name", code="avatar_exists")
        _require_servable(s, deps, tenant_id, model_id)
        avatar = Avatar(id=new_id("avatar"), tenant_id=tenant_id, name=name, active_model=model_id,
                        fallback=fallback, candidate_model=None, candidate_share=0, pinned=False, store=store)
        repository.add_avatar(s, avatar)
        _record(s, avatar, "created", None, actor, reason, **({"store": store} if store is not None else {}))
        _sync_status(s, tenant_id, [model_id])
        _publish(s, deps, "model.activated", tenant_id, avatar, None)
    return avatar


def get_avatar(deps: RegistryDeps, tenant_id: str, name: str) -> Avatar:
    with deps.db.session() as s:
        return repository.avatar(s, tenant_id, name)


def list_avatars(deps: RegistryDeps, tenant_id: str) -> list[Avatar]:
    with deps.db.session() as s:
        return repository.avatars(s, tenant_id)


def activate(deps: RegistryDeps, tenant_id: str, actor: str, name: str, model_id: str, reason: str = "",
             detail: dict[str, Any] | None = None) -> Avatar:
    """Point the avatar at ``model_id`` in one transaction, with a history row (``detail``: more facts
    for it, e.g. a retrain's numbers) and ``model.activated``. Activating the avatar's candidate
    promotes it (the candidate is cleared)."""
    with deps.db.session() as s:
        return activate_in(s, deps, repository.avatar(s, tenant_id, name, lock=True), actor, model_id, reason, detail)


def activate_in(s: Session, deps: RegistryDeps, avatar: Avatar, actor: str, model_id: str, reason: str = "",
                detail: dict[str, Any] | None = None) -> Avatar:
    """:func:`activate` in the caller's transaction, on the avatar it locked."""
    _not_pinned(avatar)
    _require_servable(s, deps, avatar.tenant_id, model_id)
    previous = avatar.active_model
    avatar.active_model = model_id
    if avatar.candidate_model == model_id:
        _clear_candidate(avatar)
    _record(s, avatar, "activated", previous, actor, reason, **(detail or {}))
    _sync_status(s, avatar.tenant_id, [previous, model_id])
    _publish(s, deps, "model.activated", avatar.tenant_id, avatar, previous)
    return avatar


def rollback(deps: RegistryDeps, tenant_id: str, actor: str, name: str, reason: str = "") -> Avatar:
    """Point the avatar back at the model it had before its latest change of active model."""
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        _not_pinned(avatar)
        last = repository.last_change(s, avatar.id, ACTIVE_CHANGES)
        if last is None or last.from_model is None or last.from_model == avatar.active_model:
            raise FailedPrecondition(f"Avatar {name!r} has no earlier model to roll back to.", param="avatar")
        _require_servable(s, deps, tenant_id, last.from_model)
        previous = avatar.active_model
        avatar.active_model = last.from_model
        if avatar.candidate_model == avatar.active_model:
            _clear_candidate(avatar)
        _record(s, avatar, "rolled_back", previous, actor, reason)
        _sync_status(s, tenant_id, [previous, avatar.active_model])
        _publish(s, deps, "model.rolled_back", tenant_id, avatar, previous)
    return avatar


def pin(deps: RegistryDeps, tenant_id: str, actor: str, name: str, model_id: str, reason: str = "") -> Avatar:
    """Point the avatar at ``model_id`` and keep it there: activate and rollback are refused until unpinned."""
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        _require_servable(s, deps, tenant_id, model_id)
        previous = avatar.active_model
        avatar.active_model, avatar.pinned = model_id, True
        if avatar.candidate_model == model_id:
            _clear_candidate(avatar)
        _record(s, avatar, "pinned", previous, actor, reason)
        _sync_status(s, tenant_id, [previous, model_id])
        _publish(s, deps, "model.activated", tenant_id, avatar, previous)
    return avatar


def unpin(deps: RegistryDeps, tenant_id: str, actor: str, name: str, reason: str = "") -> Avatar:
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        if not avatar.pinned:
            raise FailedPrecondition(f"Avatar {name!r} is not pinned.", param="avatar", code="avatar_not_pinned")
        avatar.pinned = False
        _record(s, avatar, "unpinned", avatar.active_model, actor, reason)
        _publish(s, deps, "model.avatar_updated", tenant_id, avatar, avatar.active_model)
    return avatar


def _clear_candidate(avatar: Avatar) -> None:
    avatar.candidate_model, avatar.candidate_share, avatar.candidate_persona_version = None, 0, None


def set_candidate(deps: RegistryDeps, tenant_id: str, actor: str, name: str, model_id: str | None,
                  traffic_share: int = 0, reason: str = "", detail: dict[str, Any] | None = None,
                  candidate_persona_version: int | None = None) -> Avatar:
    """Set (or clear, with no model and no persona version) the avatar's candidate and the share of
    traffic (0-100) meant for it; inference sends that share of the avatar's requests to the
    candidate (sticky per the request's ``user``). ``candidate_persona_version``: the persona
    version the candidate answers with (None: the active persona); given without a model, the
    candidate is the active model with that persona version."""
    if isinstance(traffic_share, bool) or not 0 <= traffic_share <= 100:
        raise InvalidArgument("traffic_share must be between 0 and 100.", param="traffic_share")
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        return set_candidate_in(s, deps, avatar, actor, model_id, traffic_share, reason, detail,
                                candidate_persona_version)


def set_candidate_in(s: Session, deps: RegistryDeps, avatar: Avatar, actor: str, model_id: str | None,
                     traffic_share: int = 0, reason: str = "", detail: dict[str, Any] | None = None,
                     candidate_persona_version: int | None = None) -> Avatar:
    """:func:`set_candidate` in the caller's transaction, on the avatar it locked."""
    previous = avatar.candidate_model
    previous_persona = avatar.candidate_persona_version
    if candidate_persona_version is not None:
        if isinstance(candidate_persona_version, bool) or not isinstance(candidate_persona_version, int) \
                or repository.persona(s, avatar.id, candidate_persona_version) is None:
            raise InvalidArgument(f"Avatar {avatar.name!r} has no persona version {candidate_persona_version!r}.",
                                  param="candidate_persona_version", code="persona_version_not_found")
        if not model_id and candidate_persona_version == avatar.persona_version:
            raise InvalidArgument(f"Persona version {candidate_persona_version} is already the avatar's active "
                                  "persona; give a model or another version.", param="candidate_persona_version")
    if model_id:
        if model_id == avatar.active_model:
            raise InvalidArgument(f"{model_id!r} is already the avatar's active model.", param="model")
        _require_servable(s, deps, avatar.tenant_id, model_id)
        avatar.candidate_model, avatar.candidate_share = model_id, traffic_share
        avatar.candidate_persona_version = candidate_persona_version
        action = "candidate_set"
    elif candidate_persona_version is not None:
        avatar.candidate_model, avatar.candidate_share = None, traffic_share
        avatar.candidate_persona_version = candidate_persona_version
        action = "candidate_set"
    else:
        if traffic_share:
            raise InvalidArgument("traffic_share needs a candidate model or candidate_persona_version.",
                                  param="traffic_share")
        _clear_candidate(avatar)
        action = "candidate_cleared"
    persona_detail: dict[str, Any] = {}
    if avatar.candidate_persona_version is not None or previous_persona is not None:
        persona_detail = {"candidate_persona_version": avatar.candidate_persona_version,
                          "previous_candidate_persona_version": previous_persona}
    _record(s, avatar, action, avatar.active_model, actor, reason, candidate_model=avatar.candidate_model,
            traffic_share=avatar.candidate_share, previous_candidate=previous, **persona_detail, **(detail or {}))
    _publish(s, deps, "model.avatar_updated", avatar.tenant_id, avatar, avatar.active_model)
    return avatar


AVATAR_SETTINGS = ("store",)
"""What ``PATCH /v1/avatars/{name}`` changes."""


def update_avatar(deps: RegistryDeps, tenant_id: str, actor: str, name: str, changes: dict[str, Any],
                  reason: str = "") -> Avatar:
    """Change the avatar's settings named in ``changes`` (``store``: True, False, or None to follow
    the tenant's default); a real change is kept in its history (action "settings", each new value
    and its ``previous_<name>``) and published as ``model.avatar_updated``, so that inference drops
    its cached resolution."""
    unknown = sorted(set(changes) - set(AVATAR_SETTINGS))
    if unknown:
        raise InvalidArgument(f"Unknown avatar setting {unknown[0]!r}.", param=unknown[0])
    if "store" in changes and changes["store"] is not None and not isinstance(changes["store"], bool):
        raise InvalidArgument("store must be true, false or null.", param="store")
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        before = {k: getattr(avatar, k) for k in changes}
        changed = {k: v for k, v in changes.items() if before[k] != v}
        if changed:
            for key, value in changed.items():
                setattr(avatar, key, value)
            _record(s, avatar, "settings", avatar.active_model, actor, reason, **changed,
                    **{f"previous_{k}": before[k] for k in changed})
            _publish(s, deps, "model.avatar_updated", tenant_id, avatar, avatar.active_model)
    return avatar


def history(deps: RegistryDeps, tenant_id: str, name: str) -> list[AvatarChange]:
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name)
        return repository.changes(s, avatar.id)


# -- personas -----------------------------------------------------------------------------------

PERSONA_APPLIED = ("system_prompt", "system_mode", "sampling", "few_shot", "response_format", "knowledge")
"""The persona settings inference applies to a chat request (``store`` is the avatar's own setting)."""
_UNION_TAG = re.compile(r"^(literal\[.*\]|constrained-\w+|function-\w+|int|float|str|bool|list\[.*\]|dict\[.*\])$")


def parse_persona(settings_json: str) -> PersonaSettings:
    """A persona given as a JSON object (gRPC ``settings_json``), validated as the REST body is;
    refused naming the first bad field (e.g. ``sampling.temperature``)."""
    try:
        data = json.loads(settings_json or "{}")
    except (ValueError, RecursionError) as err:
        raise InvalidArgument(f"settings_json is not JSON: {err}", param="settings_json") from None
    if not isinstance(data, dict):
        raise InvalidArgument("settings_json must be a JSON object.", param="settings_json")
    try:
        return PersonaSettings.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"] if not _UNION_TAG.match(str(p))) or "settings_json"
        raise InvalidArgument(f"Invalid persona: {param}: {first['msg']}", param=param,
                              code="invalid_value") from None


def persona_settings(avatar: Avatar, row: AvatarPersona) -> dict[str, Any]:
    """A version's settings; for the active version, ``store`` is the avatar's current setting
    (one source of truth: ``PATCH /v1/avatars/{name}`` changes it too)."""
    settings: dict[str, Any] = json.loads(row.settings_json)
    if row.version == avatar.persona_version:
        settings["store"] = avatar.store
    return settings


def applied_persona_json(row: AvatarPersona | None) -> str:
    """What inference applies of a version (its settings without ``store``), JSON; "" for none."""
    if row is None:
        return ""
    settings = json.loads(row.settings_json)
    return json.dumps({k: settings[k] for k in PERSONA_APPLIED if k in settings}, separators=(",", ":"))


def _add_persona(s: Session, deps: RegistryDeps, avatar: Avatar, settings: dict[str, Any], actor: str,
                 reason: str, action: str, **detail: object) -> AvatarPersona:
    """A new persona version (the next number), made the active one; ``store`` in ``settings``
    sets the avatar's store setting. Kept in the history (``action``, the version, what it
    replaced) and published as ``model.avatar_updated`` (inference drops its cached resolution)."""
    previous = avatar.persona_version
    row = AvatarPersona(avatar_id=avatar.id, version=repository.latest_persona_version(s, avatar.id) + 1,
                        settings_json=json.dumps(settings), actor=actor, reason=reason, created_at=utcnow())
    repository.add_persona(s, row)
    avatar.persona_version = row.version
    store: dict[str, object] = {}
    if "store" in settings and settings["store"] != avatar.store:
        store = {"store": settings["store"], "previous_store": avatar.store}
        avatar.store = settings["store"]
    _record(s, avatar, action, avatar.active_model, actor, reason, version=row.version, previous_version=previous,
            **detail, **store)
    _publish(s, deps, "model.avatar_updated", avatar.tenant_id, avatar, avatar.active_model)
    return row


def set_persona(deps: RegistryDeps, tenant_id: str, actor: str, name: str, settings: PersonaSettings,
                reason: str = "") -> tuple[Avatar, AvatarPersona]:
    """Replace the avatar's persona with ``settings`` (already validated): a new version. A
    knowledge base it names must be the tenant's (asked of the dataset service before anything is
    written, when the registry has a channel to it)."""
    if settings.knowledge is not None and deps.knowledge_bases is not None:
        with deps.db.session() as s:
            repository.avatar(s, tenant_id, name)  # an unknown avatar is NOT_FOUND first
        deps.knowledge_bases.check(tenant_id, settings.knowledge.knowledge_base)  # no transaction held meanwhile
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        return avatar, _add_persona(s, deps, avatar, settings.stored(), actor, reason, "persona_set")


def _active_persona(s: Session, avatar: Avatar) -> AvatarPersona:
    row = repository.persona(s, avatar.id, avatar.persona_version) if avatar.persona_version else None
    if row is None:
        raise NotFound(f"Avatar {avatar.name!r} has no persona.", param="avatar", code="persona_not_found")
    return row


def get_persona(deps: RegistryDeps, tenant_id: str, name: str) -> tuple[Avatar, AvatarPersona]:
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name)
        return avatar, _active_persona(s, avatar)


def persona_versions(deps: RegistryDeps, tenant_id: str, name: str) -> tuple[Avatar, list[AvatarPersona]]:
    """The avatar's persona versions, newest first."""
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name)
        return avatar, repository.personas(s, avatar.id)


def rollback_persona(deps: RegistryDeps, tenant_id: str, actor: str, name: str, version: int | None = None,
                     reason: str = "") -> tuple[Avatar, AvatarPersona]:
    """A new persona version with version ``version``'s settings (default: the version before the
    active one), ``store`` included when that version set it."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidArgument("version must be a positive integer.", param="version")
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name, lock=True)
        active = _active_persona(s, avatar)
        if version is None:
            version = active.version - 1
            if version < 1:
                raise FailedPrecondition(f"Avatar {name!r} has no earlier persona version to roll back to.",
                                         param="version", code="no_earlier_persona")
        if version == active.version:
            raise InvalidArgument(f"Persona version {version} is already the active one.", param="version")
        target = repository.persona(s, avatar.id, version)
        if target is None:
            raise InvalidArgument(f"Avatar {name!r} has no persona version {version}.", param="version",
                                  code="persona_version_not_found")
        settings = json.loads(target.settings_json)
        return avatar, _add_persona(s, deps, avatar, settings, actor, reason, "persona_rollback",
                                    restored_version=version)


def avatar_with_personas(deps: RegistryDeps, tenant_id: str,
                         name: str) -> tuple[Avatar, AvatarPersona | None, AvatarPersona | None]:
    """The avatar with its active persona version and the candidate's (None where it has none): all
    inference needs to answer as it, in one call."""
    with deps.db.session() as s:
        avatar = repository.avatar(s, tenant_id, name)
        active = repository.persona(s, avatar.id, avatar.persona_version) if avatar.persona_version else None
        candidate = (repository.persona(s, avatar.id, avatar.candidate_persona_version)
                     if avatar.candidate_persona_version else None)
        return avatar, active, candidate
