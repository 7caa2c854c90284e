"""The ``openai_compatible`` backend: a job trained by a remote OpenAI-compatible fine-tuning API.

Configuration
-------------
Each tenant may have one remote, kept in the JSON file ``COACHFORGE_TRAINER_REMOTES_FILE``
(:attr:`~coachforge_trainer.settings.TrainerSettings.remotes_file`)::

    {"acme": {"base_url": "https://api.openai.com/v1", "api_key": "sk-..."}}

The file is read again whenever it is used (:func:`remote_for`, through
:mod:`coachforge_shared.remotes`, which inference reads it with too), so a Kubernetes Secret mounted
as a file can change without a restart. A tenant without an entry (or a malformed one, or no
file) cannot use the backend: job creation answers 400 ``backend_not_configured`` on
``backend``. The API key is never logged, shown in an error or stored anywhere else.

Following a remote job
----------------------
In the worker (:func:`train_remote`, through the ``openai`` SDK): the job's training (and
validation) examples are uploaded as JSONL files with purpose ``fine-tune``, and a remote job
is created on the same base model name with the job's n_epochs, batch_size,
learning_rate_multiplier, suffix and seed. Its id is stored on the local job
(``remote_job_id``) before anything waits on it, so a worker that restarts (or another one
taking the job over after its lease expired) follows the same remote job instead of creating
a second one. The remote job carries ``metadata.coachforge_job_id``: a worker that stopped between
creating it and storing its id leaves it findable, and the next attempt follows it (:meth:`adopt`,
on remotes that list jobs by metadata as OpenAI does; on others a second remote job is created).
Then the remote job is polled every ``remote_poll_seconds``: its status changes
and its new events become the local job's events (``Remote: ...``), its ``metrics`` events
its progress (step, loss; ``job.progress``). A cancel of the local job cancels the remote one;
a remote job that fails or is cancelled fails (with the remote's error message) or cancels
the local one. Following a job trains nothing here, so it never holds a training slot (the
worker follows remote jobs in slots of their own, ``remote_concurrency``).

The result
----------
When the remote job succeeded, its adapter is asked for with the model exports API of a
CoachForge remote (``POST /models/{model}/exports`` with format ``adapter``, then
``GET .../exports/{id}`` until it succeeded, then ``GET .../exports/{id}/content``: a tar.gz
holding ``adapter_config.json`` and ``adapter_model.safetensors``), its sha256 checked, and
unpacked into the run's ``adapter`` folder: the worker then registers it like an adapter it
trained, with the remote job and model in its lineage. An export that fails, or does not match
its sha256, fails the local job with ``remote_adapter_unavailable``.

A remote without that API (OpenAI itself: 404, 405 or 501), or a CoachForge remote refusing to
export a model without an adapter (400 ``model_not_exportable``), offers no download
(:meth:`_Follower.no_download`): the local job still succeeds, with a result without an adapter
and an event saying that the model is served remotely through inference. Its ``job.succeeded``
has an empty ``adapter_uri`` and the remote's job, model and base URL (without credentials); the
registry registers the job's model (the local ``ft:...`` id, as for any job) as an *external
model*, and inference forwards its requests to that remote (its chat completions and
completions, streamed or not, with the tenant's key from the same remotes file) and records
their usage like any other.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from coachforge_shared.remotes import Remote, RemotesFileError, load_remotes, parse_remotes, remote_in

if TYPE_CHECKING:
    from openai import OpenAI

    from coachforge_trainer.backends import TrainRun
    from coachforge_trainer.settings import TrainerSettings
    from coachforge_trainer.sft import Progress, TrainResult

__all__ = ["Remote", "RemoteTrainingFailed", "RemotesFileError", "load_remotes", "parse_remotes", "remote_for",
           "train_remote", "unpack_adapter"]

logger = logging.getLogger("coachforge.trainer.remote")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""What an adapter export holds (under one top-level folder)."""
MAX_CONFIG_BYTES = 1 << 20
REGISTRATION_WAIT_SECONDS = 600.0
"""How long a CoachForge remote may take to register its new model before it can be exported."""
NO_DOWNLOAD_STATUSES = (404, 405, 501)
"""Answers of a remote without the model exports API."""
NOT_EXPORTABLE = "model_not_exportable"
"""The error code of a CoachForge remote asked to export a model without an adapter (an external model
of its own): no download either."""


# -- configuration --------------------------------------------------------------------------------

def remote_for(settings: TrainerSettings, tenant_id: str | None) -> Remote | None:
    """The tenant's remote, from the remotes file as it is now; ``None`` when it has none (no file
    configured or found, no entry, a wrong entry, an unreadable file: the last logged)."""
    return remote_in(settings.remotes_file, tenant_id, logger)


# -- following a remote job -----------------------------------------------------------------------

class RemoteTrainingFailed(Exception):
    """The remote job cannot give this job its model: the remote refused or failed the job, or its
    adapter's export failed (or does not match its checksum). ``code`` is the local job's error code."""

    def __init__(self, message: str, code: str = "remote_job_failed") -> None:
        super().__init__(message)
        self.code = code


def _jsonl(examples: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _error_body(err: Exception) -> dict[str, Any]:
    """A remote error's OpenAI-shaped ``error`` object (the SDK keeps either it or the whole body)."""
    body = getattr(err, "body", None)
    if not isinstance(body, dict):
        return {}
    inner = body.get("error")
    return inner if isinstance(inner, dict) else body


def _error_text(err: Exception) -> str:
    """What a remote's error says (its OpenAI-shaped message when it has one)."""
    message = _error_body(err).get("message")
    return (message if isinstance(message, str) and message else str(err))[:1000]


def _error_code(err: Exception) -> str | None:
    code = _error_body(err).get("code")
    return str(code) if code else None


def _object(answer: object) -> dict[str, Any]:
    """A JSON object the remote answered ({} for anything else)."""
    return answer if isinstance(answer, dict) else {}


class _Follower:
    """One run of the backend: creates (or finds again) the remote job and follows it to its end."""

    def __init__(self, run: TrainRun, remote: Remote, poll_seconds: float,
                 client_factory: Callable[[Remote], OpenAI] | None = None) -> None:
        self.run, self.remote, self.poll_seconds = run, remote, poll_seconds
        self.client = (client_factory or _client)(remote)
        self.seen: set[str] = set(run.mirrored_events)
        self.reported_step = run.reported_step
        self.status: str | None = None
        self.last: Progress | None = None
        self.outage = False

    # -- events ------------------------------------------------------------------------------------
    def event(self, message: str, level: str = "info", data: dict[str, Any] | None = None) -> None:
        if self.run.on_event is not None:
            self.run.on_event(message, level, data)

    def mirror_events(self, rid: str) -> None:
        """The remote job's events not mirrored yet, oldest first: metrics become progress, the others
        events of the local job."""
        from openai import omit

        fresh: list[Any] = []
        after: str | None = None
        while True:
            page = self.client.fine_tuning.jobs.list_events(rid, limit=100, after=after or omit)
            events = list(page.data)
            stop = False
            for ev in events:
                if ev.id in self.seen:
                    stop = True
                    break
                fresh.append(ev)
            if stop or not events or not page.has_more:
                break
            after = events[-1].id
        for ev in reversed(fresh):
            self.seen.add(ev.id)
            data = ev.data if isinstance(getattr(ev, "data", None), dict) else None
            if getattr(ev, "type", None) == "metrics" and data is not None and isinstance(data.get("step"), int):
                self.progress(data)
                continue
            level = ev.level if ev.level in ("info", "warn", "error") else "info"
            self.event(f"Remote: {ev.message}", level,
                       {"remote_job_id": rid, "remote_event_id": ev.id, **({"data": data} if data else {})})

    def progress(self, data: dict[str, Any]) -> None:
        from coachforge_trainer.sft import Progress

        step = int(data["step"])
        if step <= self.reported_step:
            return  # reported before (the job is followed again after a restart)
        total = int(data["total_steps"]) if isinstance(data.get("total_steps"), int) else step
        epoch = _number(data.get("epoch"))
        if epoch is None:
            epoch = step / total * self.run.params.n_epochs if total else 0.0
        p = Progress(step=step, total_steps=max(total, step), epoch=epoch,
                     train_loss=_number(data.get("train_loss")), learning_rate=_number(data.get("learning_rate")),
                     tokens_seen=0, tokens_per_second=_number(data.get("tokens_per_second")) or 0.0,
                     eta_seconds=_number(data.get("eta_seconds")),
                     valid_loss=_number(data.get("valid_loss", data.get("full_valid_loss"))))
        self.reported_step, self.last = step, p
        if self.run.on_progress is not None:
            self.run.on_progress(p)

    # -- the remote job ------------------------------------------------------------------------------
    def create(self) -> str:
        """Upload the examples and create the remote job; its id."""
        import openai

        run = self.run
        try:
            training = self.client.files.create(file=(f"{run.job_id or 'job'}-train.jsonl", _jsonl(run.examples)),
                                                purpose="fine-tune")
            validation = None
            if run.eval_examples:
                validation = self.client.files.create(
                    file=(f"{run.job_id or 'job'}-validation.jsonl", _jsonl(run.eval_examples)), purpose="fine-tune")
            hyperparameters = {"n_epochs": run.params.n_epochs, "batch_size": run.params.batch_size,
                               "learning_rate_multiplier": run.learning_rate_multiplier}
            extra: dict[str, Any] = {}
            if validation is not None:
                extra["validation_file"] = validation.id
            if run.suffix:
                extra["suffix"] = run.suffix
            if run.job_id:
                extra["metadata"] = {"coachforge_job_id": run.job_id}
            method: Any = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
            job = self.client.fine_tuning.jobs.create(model=run.base_model, training_file=training.id,
                                                      seed=run.params.seed, method=method, **extra)
        except openai.APIStatusError as err:
            raise RemoteTrainingFailed(f"The remote fine-tuning API at {self.remote.shown_url} refused the job "
                                       f"({err.status_code}): {_error_text(err)}", "remote_job_refused") from None
        return str(job.id)

    def adopt(self) -> str | None:
        """The id of a live remote job this job created before (its ``metadata.coachforge_job_id`` names
        it), e.g. by a worker that stopped between creating it and storing its id; None when there is none,
        or when the remote cannot list jobs by metadata (then a new one is created, as before)."""
        import openai

        run = self.run
        if not run.job_id:
            return None
        try:
            page = self.client.fine_tuning.jobs.list(limit=100, metadata={"coachforge_job_id": run.job_id})
        except openai.APIError:
            return None
        for job in page.data:
            if (job.metadata or {}).get("coachforge_job_id") == run.job_id \
                    and job.status not in ("failed", "cancelled"):
                return str(job.id)
        return None

    def wait(self, rid: str) -> Any:
        """Poll the remote job until it ends: its object when it succeeded."""
        import openai

        from coachforge_trainer.sft import TrainingCancelled

        while True:
            self.checkpoint(rid)
            try:
                job = self.client.fine_tuning.jobs.retrieve(rid)
                self.mirror_events(rid)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                # A remote away for a while does not fail a job that may run for hours; cancel still works.
                if not self.outage:
                    self.event(f"The remote fine-tuning API at {self.remote.shown_url} cannot be reached "
                               f"({type(err).__name__}); still following job {rid}.", "warn")
                    self.outage = True
                self.sleep(rid)
                continue
            except openai.APIStatusError as err:
                raise RemoteTrainingFailed(f"The remote job {rid} cannot be followed ({err.status_code}): "
                                           f"{_error_text(err)}") from None
            if self.outage:
                self.event(f"The remote fine-tuning API at {self.remote.shown_url} answers again.")
                self.outage = False
            if job.status != self.status:
                self.status = job.status
                self.event(f"Remote job {rid} status: {job.status}.",
                           data={"remote_job_id": rid, "remote_status": job.status})
            if job.status == "succeeded":
                return job
            if job.status == "failed":
                error = getattr(job, "error", None)
                message = getattr(error, "message", None) or "no reason given"
                code = getattr(error, "code", None)
                raise RemoteTrainingFailed(f"The remote job {rid} failed: {message}"
                                           + (f" ({code})" if code else ""))
            if job.status == "cancelled":
                self.event(f"The remote job {rid} was cancelled on the remote.", "warn")
                raise TrainingCancelled()
            self.sleep(rid)

    def checkpoint(self, rid: str) -> None:
        """Stop here if the worker lost the job (nothing is done to the remote job: the next holder follows
        it), is shutting down (the job is queued again and followed anew), or the job was cancelled (the
        remote job is cancelled too)."""
        import openai

        from coachforge_trainer.sft import TrainingCancelled, TrainingPaused

        run = self.run
        if run.lease_lost is not None and run.lease_lost():
            raise TrainingCancelled()
        if run.should_pause is not None and run.should_pause():
            raise TrainingPaused(self.reported_step)
        if run.should_cancel is not None and run.should_cancel():
            if run.lease_lost is not None and run.lease_lost():
                raise TrainingCancelled()
            try:
                self.client.fine_tuning.jobs.cancel(rid)
            except openai.APIError as err:  # e.g. it ended meanwhile: the local job is cancelled all the same
                self.event(f"Cancelling the remote job {rid} failed: {_error_text(err)}", "warn")
            else:
                self.event(f"Cancelled the remote job {rid}.", data={"remote_job_id": rid})
            raise TrainingCancelled()

    def sleep(self, rid: str, seconds: float | None = None) -> None:
        """Wait for the next poll, stopping early (at :meth:`checkpoint`) for a shutdown."""
        deadline = time.monotonic() + (self.poll_seconds if seconds is None else seconds)
        while (left := deadline - time.monotonic()) > 0:
            if self.run.should_pause is not None and self.run.should_pause():
                break
            time.sleep(min(left, 0.5))

    # -- the adapter ---------------------------------------------------------------------------------
    def no_download(self, rid: str, remote_job: Any, why: str) -> TrainResult:
        """The remote offers no download of the model's adapter (``why``): the job's model is the remote
        model, served remotely through inference (an external model), so the result has no adapter."""
        model = str(remote_job.fine_tuned_model)
        self.event(f"The adapter of {model} cannot be downloaded from {self.remote.shown_url} ({why}); the model "
                   "is served remotely through inference, as an external model.",
                   data={"remote_job_id": rid, "remote_model": model, "remote_base_url": self.remote.shown_url})
        return self.result(rid, remote_job)

    def result(self, rid: str, remote_job: Any, adapter_dir: Path | None = None,
               config: dict[str, Any] | None = None) -> TrainResult:
        """The run's outcome: the remote job's model and figures, with the downloaded adapter (its folder and
        ``adapter_config.json``) when there is one."""
        from coachforge_trainer.sft import TrainResult

        modules = (config or {}).get("target_modules")
        last = self.last
        return TrainResult(
            adapter_dir=adapter_dir, steps=self.reported_step, trained_tokens=int(remote_job.trained_tokens or 0),
            final_loss=last.train_loss if last else None, valid_loss=last.valid_loss if last else None,
            resumed_from_step=0, device="remote", precision="remote", lora_r=int((config or {}).get("r") or 0),
            target_modules=sorted(modules) if isinstance(modules, list) else [],
            remote_job_id=rid, remote_model=str(remote_job.fine_tuned_model), remote_base_url=self.remote.shown_url)

    def download(self, rid: str, remote_job: Any) -> TrainResult:
        """Export the remote model's adapter, download it into the run's adapter folder, and describe it; a
        remote that offers no download gives a result without an adapter (:meth:`no_download`)."""
        import openai

        from coachforge_trainer.sft import ADAPTER_DIRNAME

        model = remote_job.fine_tuned_model
        if not model:
            raise RemoteTrainingFailed(f"The remote job {rid} succeeded without naming its fine-tuned model.")
        path = f"/models/{quote(model, safe=':')}/exports"
        deadline = time.monotonic() + REGISTRATION_WAIT_SECONDS
        while True:
            self.checkpoint(rid)
            try:
                export = _object(self.client.post(path, body={"format": "adapter"}, cast_to=object))
                break
            except openai.APIStatusError as err:
                if err.status_code == 404 and _error_code(err) == "model_not_found" \
                        and time.monotonic() < deadline:
                    self.sleep(rid)  # a CoachForge remote registers its new model shortly after the job ends
                    continue
                if err.status_code in NO_DOWNLOAD_STATUSES or _error_code(err) == NOT_EXPORTABLE:
                    return self.no_download(rid, remote_job, f"it answered {err.status_code}: {_error_text(err)}")
                raise RemoteTrainingFailed(f"The remote could not export the adapter of {model} "
                                           f"({err.status_code}): {_error_text(err)}",
                                           "remote_adapter_unavailable") from None
        eid = str(export.get("id") or "")
        if not eid:
            return self.no_download(rid, remote_job, "it did not answer with an export")
        self.event(f"Exporting the adapter of {model} from the remote ({eid}).",
                   data={"remote_job_id": rid, "remote_model": model, "remote_export_id": eid})
        while export.get("status") != "succeeded":
            if export.get("status") == "failed":
                error = _object(export.get("error"))
                raise RemoteTrainingFailed(f"The remote could not export the adapter of {model}: "
                                           f"{error.get('message') or 'no reason given'}", "remote_adapter_unavailable")
            self.sleep(rid, min(self.poll_seconds, 2.0))
            self.checkpoint(rid)
            try:
                export = _object(self.client.get(f"{path}/{eid}", cast_to=object))
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError):
                continue  # asked again at the next poll
        out = self.run.output_dir
        out.mkdir(parents=True, exist_ok=True)
        archive = out / ".remote-adapter.tar.gz"
        digest = self.fetch(f"{path}/{eid}/content", archive)
        if export.get("sha256") and digest != export["sha256"]:
            archive.unlink(missing_ok=True)
            raise RemoteTrainingFailed(f"The adapter downloaded from the remote does not match its sha256 "
                                       f"({digest[:12]} instead of {str(export['sha256'])[:12]}).",
                                       "remote_adapter_unavailable")
        adapter_dir = out / ADAPTER_DIRNAME
        config = unpack_adapter(archive, adapter_dir)
        archive.unlink(missing_ok=True)
        self.event(f"Downloaded the adapter of {model} from the remote (sha256 {digest[:12]}).",
                   data={"remote_job_id": rid, "remote_model": model, "sha256": digest})
        return self.result(rid, remote_job, adapter_dir, config)

    def fetch(self, path: str, target: Path) -> str:
        """Stream ``path`` of the remote into ``target``; its sha256."""
        import httpx2

        sha = hashlib.sha256()
        response = self.client.get(path, cast_to=httpx2.Response, stream=True)
        try:
            with target.open("wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    sha.update(chunk)
                    f.write(chunk)
        finally:
            response.close()
        return sha.hexdigest()

    # -- the whole run -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        run = self.run
        rid = run.remote_job_id
        if rid:
            self.event(f"Following the remote job {rid} again on {self.remote.shown_url}.",
                       data={"remote_job_id": rid})
        else:
            adopted = self.adopt()
            rid = adopted or self.create()
            # Stored before anything waits on it: a worker that takes the job over follows this one.
            if run.on_remote_job is not None and not run.on_remote_job(rid):
                self.abandon(rid)
            if adopted:
                self.event(f"Following the remote job {rid} on {self.remote.shown_url}, created for this job "
                           "before its id could be stored.", data={"remote_job_id": rid})
            else:
                self.event(f"Created the remote fine-tuning job {rid} on {self.remote.shown_url} (base model "
                           f"{run.base_model}).", data={"remote_job_id": rid, "remote_base_url": self.remote.shown_url})
        remote_job = self.wait(rid)
        return self.download(rid, remote_job)

    def abandon(self, rid: str) -> None:
        """The job is no longer this worker's before the remote job's id was stored: cancel that remote job
        (nobody would follow it) and stop."""
        from coachforge_trainer.sft import TrainingCancelled

        try:
            self.client.fine_tuning.jobs.cancel(rid)
        except Exception as err:  # nothing else to do about it
            logger.warning("could not cancel the unrecorded remote job %s: %s", rid, type(err).__name__)
        raise TrainingCancelled()


def _client(remote: Remote) -> OpenAI:
    from openai import OpenAI

    return OpenAI(base_url=remote.base_url, api_key=remote.api_key, max_retries=3, timeout=120)


def train_remote(run: TrainRun, remote: Remote, poll_seconds: float = 5.0,
                 client_factory: Callable[[Remote], OpenAI] | None = None) -> TrainResult:
    """Train ``run`` on ``remote``: create (or follow again) the remote job, mirror it, and download its
    adapter (see the module's docstring)."""
    return _Follower(run, remote, poll_seconds, client_factory).train()


def unpack_adapter(archive: Path, adapter_dir: Path) -> dict[str, Any]:
    """Unpack an adapter export (a tar.gz of ``adapter_config.json`` and ``adapter_model.safetensors``
    under one folder) into ``adapter_dir``, replacing it; the adapter's config. Nothing else of the
    archive is written (no links, no other names, no paths outside the folder)."""
    staging = adapter_dir.with_name(adapter_dir.name + ".remote-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    found: set[str] = set()
    try:
        with gzip.open(archive, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tf:
            for member in tf:
                name = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or name not in ADAPTER_FILES or name in found:
                    continue
                source = tf.extractfile(member)
                if source is None:
                    continue
                with source, (staging / name).open("wb") as f:
                    shutil.copyfileobj(source, f, 1 << 20)
                found.add(name)
    except (OSError, tarfile.TarError, EOFError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise RemoteTrainingFailed(f"The adapter downloaded from the remote is not a readable archive: "
                                   f"{type(err).__name__}", "remote_adapter_unavailable") from None
    missing = [n for n in ADAPTER_FILES if n not in found]
    if missing or (staging / "adapter_config.json").stat().st_size > MAX_CONFIG_BYTES:
        shutil.rmtree(staging, ignore_errors=True)
        raise RemoteTrainingFailed(f"The adapter downloaded from the remote lacks {', '.join(missing) or 'a config'}.",
                                   "remote_adapter_unavailable")
    try:
        config = json.loads((staging / "adapter_config.json").read_text(encoding="utf-8"))
    except ValueError:
        config = None
    if not isinstance(config, dict):
        shutil.rmtree(staging, ignore_errors=True)
        raise RemoteTrainingFailed("The adapter downloaded from the remote has no valid adapter_config.json.",
                                   "remote_adapter_unavailable")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(staging, adapter_dir)
    return config
