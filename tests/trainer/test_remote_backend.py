"""The openai_compatible backend without the stack: the per-tenant remotes file (read again on use,
wrong entries left out, the key never shown), the per-tenant check at job creation, which jobs a
worker's training and remote slots claim, and the worker's side of a remote job (upload, create,
follow: events, metrics, status, failure, cancel, lease, restart; download and unpack the adapter,
or, when the remote offers none, succeed with the remote model to be served remotely as an external
model) against a stand-in for a remote fine-tuning API that speaks OpenAI's fine-tuning routes over
real HTTP (OpenAI itself cannot be reached here; the stack test test_remote_backend_stack.py uses a
real CoachForge as the remote)."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from sqlalchemy import create_engine, inspect, select

from coachforge_registry.exports import write_tar_gz
from coachforge_shared import migrate
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.events import decode, publish_in
from coachforge_shared.ids import new_id, utcnow
from coachforge_shared.models import OutboxEvent
from coachforge_trainer import lifecycle
from coachforge_trainer.backends import REMOTE_BACKENDS, TrainRun, get_backend
from coachforge_trainer.models import Job
from coachforge_trainer.remote import (
    Remote,
    RemoteTrainingFailed,
    load_remotes,
    parse_remotes,
    remote_for,
    train_remote,
    unpack_adapter,
)
from coachforge_trainer.settings import TrainerSettings
from coachforge_trainer.sft import Progress, TrainingCancelled, TrainingPaused, TrainParams

KEY = "sk-remote-" + "x" * 24


def refused(call: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        call()
    return err.value


def _remotes_file(tmp_path: Path, content: Any) -> TrainerSettings:
    path = tmp_path / "remotes.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return TrainerSettings(remotes_file=str(path))


# -- configuration ----------------------------------------------------------------------------------

def test_remotes_are_read_per_tenant_and_wrong_entries_are_left_out() -> None:
    remotes, problems = parse_remotes(json.dumps({
        "acme": {"base_url": "https://api.openai.com/v1/", "api_key": KEY},
        "globex": {"base_url": "ftp://example.com", "api_key": KEY},
        "initech": {"base_url": "https://api.example.com/v1", "api_key": " "},
        "umbrella": "https://api.example.com/v1"}))
    assert remotes == {"acme": Remote(base_url="https://api.openai.com/v1", api_key=KEY)}
    assert problems == ["globex: base_url must be an http(s) URL", "initech: api_key must be a non-empty string",
                        "umbrella: not an object with base_url and api_key"]
    assert KEY not in repr(remotes) and KEY not in " ".join(problems)
    assert Remote(base_url="https://user:secret@api.example.com:8443/v1", api_key=KEY).shown_url == \
        "https://api.example.com:8443/v1"


def test_the_file_is_read_again_on_every_use(tmp_path: Path) -> None:
    settings = _remotes_file(tmp_path, {})
    assert remote_for(settings, "acme") is None
    (tmp_path / "remotes.json").write_text(json.dumps({"acme": {"base_url": "http://remote:8000/v1",
                                                                "api_key": KEY}}))
    assert remote_for(settings, "acme") == Remote("http://remote:8000/v1", KEY)
    assert remote_for(settings, "globex") is None
    (tmp_path / "remotes.json").unlink()
    assert remote_for(settings, "acme") is None and load_remotes(tmp_path / "remotes.json") == {}
    assert remote_for(TrainerSettings(), "acme") is None  # no file configured


def test_a_malformed_file_configures_nobody_and_the_log_shows_no_key(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "coachforge.trainer.remote")
    settings = _remotes_file(tmp_path, '{"acme": {"base_url": "https://api.openai.com/v1", "api_key": "' + KEY + '"')
    assert remote_for(settings, "acme") is None
    settings = _remotes_file(tmp_path, {"acme": {"base_url": "nope", "api_key": KEY}})
    assert remote_for(settings, "acme") is None
    assert caplog.records and all(KEY not in r.getMessage() for r in caplog.records)
    assert "acme: base_url must be an http(s) URL" in caplog.text


# -- the check at job creation -----------------------------------------------------------------------

def test_the_backend_is_refused_for_a_tenant_without_a_remote(tmp_path: Path) -> None:
    settings = _remotes_file(tmp_path, {"acme": {"base_url": "https://api.openai.com/v1", "api_key": KEY}})
    backend = get_backend("openai_compatible")
    backend.check(settings, "supervised", tenant_id="acme")
    for tenant in ("globex", None):
        err = refused(lambda t=tenant: backend.check(settings, "supervised", tenant_id=t))
        assert (err.param, err.code) == ("backend", "backend_not_configured")
        assert "not configured for this tenant" in err.message and KEY not in err.message


@pytest.mark.parametrize("method", ["dpo", "reinforcement"])
def test_only_supervised_jobs_go_to_a_remote(tmp_path: Path, method: str) -> None:
    settings = _remotes_file(tmp_path, {"acme": {"base_url": "https://api.openai.com/v1", "api_key": KEY}})
    err = refused(lambda: get_backend("openai_compatible").check(settings, method, tenant_id="acme"))
    assert (err.param, err.code) == ("method.type", "unsupported_method")


def test_training_slots_and_remote_slots_claim_different_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    migrate.upgrade(url)
    db = Database(url)
    create_tenant(db, "acme")
    t0 = utcnow() - timedelta(hours=1)
    ids = {}
    for i, backend in enumerate(("openai_compatible", "trl")):
        ids[backend] = new_id("ftjob")
        with db.session() as s:
            s.add(Job(id=ids[backend], tenant_id="acme", model="base", status="queued", training_file="file-x",
                      n_epochs=1, batch_size=1, learning_rate_multiplier=1.0, seed=1, backend=backend,
                      queued_at=t0 + timedelta(seconds=i)))
    lease = utcnow() + timedelta(seconds=60)
    try:
        with db.session() as s:
            assert (job := lifecycle.claim_next(s, "w", lease, remote=False)) is not None and job.id == ids["trl"]
        with db.session() as s:
            assert lifecycle.claim_next(s, "w", lease, remote=False) is None  # the older remote job is not its
            assert (job := lifecycle.claim_next(s, "w", lease, remote=True)) is not None
            assert job.id == ids["openai_compatible"]
        with db.session() as s:
            assert lifecycle.record_remote_job(s, ids["openai_compatible"], "w", "ftjob-remote1")
            assert not lifecycle.record_remote_job(s, ids["openai_compatible"], "another", "ftjob-remote2")
        with db.session() as s:
            assert s.get(Job, ids["openai_compatible"]).remote_job_id == "ftjob-remote1"  # type: ignore[union-attr]
    finally:
        db.dispose()
    assert "openai_compatible" in REMOTE_BACKENDS


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_adds_and_drops_the_nullable_remote_job_id(backend: str, tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("scratch_postgres")

    def columns() -> dict[str, bool]:
        engine = create_engine(url)
        try:
            return {c["name"]: c["nullable"] for c in inspect(engine).get_columns("fine_tuning_jobs")}
        finally:
            engine.dispose()

    migrate.upgrade(url, "b8c9d0e1f2a3")
    assert "remote_job_id" not in columns()
    migrate.upgrade(url, "c9d0e1f2a3b4")
    assert columns()["remote_job_id"] is True
    migrate.downgrade(url, "b8c9d0e1f2a3")
    assert "remote_job_id" not in columns()


# -- a stand-in remote: OpenAI's fine-tuning routes, and optionally CoachForge's model exports ---------

@dataclass
class StandIn:
    """What the stand-in remote does and what it was asked."""

    outcome: str = "succeeded"
    exports: bool = True
    export_error: tuple[int, str] | None = None
    """An error (status, code) the exports route answers, as a CoachForge remote refusing an export."""
    steps: int = 3
    files: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)
    archive: bytes = b""

    def event(self, job_id: str, message: str, type: str = "message", data: dict[str, Any] | None = None,
              level: str = "info") -> None:
        events = self.events.setdefault(job_id, [])
        events.append({"id": f"ftevent-{job_id[-4:]}-{len(events)}", "object": "fine_tuning.job.event",
                       "created_at": int(time.time()), "level": level, "message": message, "type": type,
                       "data": data})

    def advance(self, job: dict[str, Any]) -> None:
        """One poll further: queued, then running with one metrics event per step, then the outcome."""
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        if job["status"] == "queued":
            job["status"] = "running"
            self.event(job["id"], "Fine-tuning job started.")
            return
        step = job["step"] = job.get("step", 0) + 1
        if step <= self.steps:
            self.event(job["id"], f"Step {step}/{self.steps}: training loss={1.0 / step:.4f}", "metrics",
                       {"step": step, "total_steps": self.steps, "train_loss": 1.0 / step})
        else:
            if self.outcome == "failed":
                job["status"] = "failed"
                job["error"] = {"code": "invalid_training_file", "message": "The training data was rejected.",
                                "param": "training_file"}
                self.event(job["id"], "Training failed.", level="error")
            else:
                job["status"] = "succeeded"
                job["fine_tuned_model"] = f"ft:{job['model']}:remote-tenant:{job.get('suffix') or ''}:abcd1234"
                job["trained_tokens"] = 1234
                self.event(job["id"], "The job has successfully completed.")


def _adapter_archive(tmp_path: Path) -> bytes:
    config = {"r": 8, "lora_alpha": 16, "peft_type": "LORA", "target_modules": ["v_proj", "q_proj"],
              "base_model_name_or_path": "base"}
    out = tmp_path / "export.tar.gz"
    write_tar_gz(out, "ft-base-adapter", [("adapter_config.json", json.dumps(config).encode()),
                                          ("adapter_model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")])
    return out.read_bytes()


def _app(state: StandIn) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        state.requests.append(f"{request.method} {request.url.path}")
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, status_code=401)
        return await call_next(request)

    def not_found(message: str, code: str | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": code}}, status_code=404)

    @app.post("/v1/files")
    async def upload(file: UploadFile = File(...), purpose: str = Form(...)) -> dict[str, Any]:
        file_id = f"file-{len(state.files)}"
        state.files[file_id] = await file.read()
        return {"id": file_id, "object": "file", "bytes": len(state.files[file_id]), "created_at": 0,
                "filename": file.filename, "purpose": purpose, "status": "processed"}

    @app.post("/v1/fine_tuning/jobs")
    async def create(request: Request) -> dict[str, Any]:
        body = await request.json()
        state.created.append(body)
        job_id = f"ftjob-remote{len(state.jobs)}"
        job = {"id": job_id, "object": "fine_tuning.job", "created_at": 0, "error": None, "fine_tuned_model": None,
               "finished_at": None, "hyperparameters": body["method"]["supervised"]["hyperparameters"],
               "model": body["model"], "organization_id": "remote-tenant", "result_files": [], "seed": body["seed"],
               "status": "queued", "trained_tokens": None, "training_file": body["training_file"],
               "validation_file": body.get("validation_file"), "suffix": body.get("suffix"),
               "metadata": body.get("metadata")}
        state.jobs[job_id] = job
        state.event(job_id, f"Created fine-tuning job: {job_id}")
        return job

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(request: Request) -> dict[str, Any]:  # newest first, filtered by metadata[key]=value
        wanted = {k[len("metadata["):-1]: v for k, v in request.query_params.items() if k.startswith("metadata[")}
        jobs = [j for j in reversed(state.jobs.values())
                if all((j.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
        return {"object": "list", "data": jobs, "has_more": False}

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve(job_id: str) -> Any:
        if job_id not in state.jobs:
            return not_found(f"No such job {job_id}")
        state.advance(state.jobs[job_id])
        return state.jobs[job_id]

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def events(job_id: str, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        newest_first = list(reversed(state.events.get(job_id, [])))
        if after is not None:
            newest_first = newest_first[[e["id"] for e in newest_first].index(after) + 1:]
        return {"object": "list", "data": newest_first[:limit], "has_more": len(newest_first) > limit}

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        state.jobs[job_id]["status"] = "cancelled"
        return state.jobs[job_id]

    @app.post("/v1/models/{model:path}/exports")
    async def export(model: str, request: Request) -> Any:
        if not state.exports:  # OpenAI: no such route
            return not_found(f"Invalid URL (POST /v1/models/{model}/exports)")
        if state.export_error is not None:
            status, code = state.export_error
            return JSONResponse({"error": {"message": f"{model} cannot be exported.", "type": "invalid_request_error",
                                           "param": "model", "code": code}}, status_code=status)
        assert (await request.json()) == {"format": "adapter"}
        return {"id": "export_1", "object": "model.export", "model": model, "format": "adapter", "status": "queued"}

    @app.get("/v1/models/{model:path}/exports/export_1")
    def export_status(model: str) -> dict[str, Any]:
        return {"id": "export_1", "object": "model.export", "model": model, "format": "adapter",
                "status": "succeeded", "sha256": hashlib.sha256(state.archive).hexdigest(),
                "bytes": len(state.archive)}

    @app.get("/v1/models/{model:path}/exports/export_1/content")
    def export_content(model: str) -> Response:
        return Response(state.archive, media_type="application/gzip")

    return app


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[tuple[StandIn, Remote]]:
    state = StandIn(archive=_adapter_archive(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(state), host="127.0.0.1", port=port, log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield state, Remote(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    server.should_exit = True
    thread.join(timeout=10)


@dataclass
class Recorder:
    """The worker's side of a run: the events and progress it was given and the stored remote job."""

    events: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    cancel: bool = False
    lost: bool = False
    pause: bool = False

    def run(self, out: Path, **fields: Any) -> TrainRun:
        examples = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
                    for i in range(4)]
        return TrainRun(Path("base"), examples, out, TrainParams(n_epochs=2, batch_size=2, seed=7),
                        eval_examples=examples[:1], on_progress=self.progress.append,
                        should_cancel=lambda: self.cancel or self.lost, should_pause=lambda: self.pause,
                        tenant_id="acme", job_id="ftjob-local1", base_model="base", suffix="coach",
                        learning_rate_multiplier=0.5, on_remote_job=lambda rid: self.stored.append(rid) is None,
                        on_event=lambda m, level, data: self.events.append((m, level, data)),
                        lease_lost=lambda: self.lost, **fields)

    def messages(self) -> list[str]:
        return [m for m, _, _ in self.events]


def test_a_remote_job_is_created_followed_and_its_adapter_downloaded(stand_in: tuple[StandIn, Remote],
                                                                     tmp_path: Path) -> None:
    state, remote = stand_in
    rec = Recorder()
    result = train_remote(rec.run(tmp_path / "out"), remote, poll_seconds=0.01)

    # Uploaded as JSONL, created with the job's settings, its id stored before it was first polled.
    assert [json.loads(line)["messages"][0]["content"] for line in state.files["file-0"].splitlines()] == [
        "q0", "q1", "q2", "q3"]
    assert len(state.files["file-1"].splitlines()) == 1
    assert state.created == [{"model": "base", "training_file": "file-0", "validation_file": "file-1",
                              "suffix": "coach", "seed": 7, "metadata": {"coachforge_job_id": "ftjob-local1"},
                              "method": {"type": "supervised", "supervised": {"hyperparameters": {
                                  "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 0.5}}}}]
    assert rec.stored == ["ftjob-remote0"]
    assert state.requests.index("GET /v1/fine_tuning/jobs/ftjob-remote0") > \
        state.requests.index("POST /v1/fine_tuning/jobs")

    # Mirrored: the remote's events (once each, in order), its status changes, its metrics as progress.
    messages = rec.messages()
    assert messages[0].startswith("Created the remote fine-tuning job ftjob-remote0 on http://127.0.0.1:")
    mirrored = [m for m in messages if m.startswith("Remote: ")]
    assert mirrored == ["Remote: Created fine-tuning job: ftjob-remote0", "Remote: Fine-tuning job started.",
                        "Remote: The job has successfully completed."]
    assert [m for m in messages if m.startswith("Remote job ")] == [
        "Remote job ftjob-remote0 status: running.", "Remote job ftjob-remote0 status: succeeded."]
    assert [(p.step, p.total_steps, p.train_loss) for p in rec.progress] == [(1, 3, 1.0), (2, 3, 0.5),
                                                                              (3, 3, pytest.approx(1 / 3))]
    assert rec.progress[-1].epoch == pytest.approx(2.0)
    assert all(KEY not in json.dumps(e) for e in rec.events)

    # The adapter: exported, checked, unpacked into the run's adapter folder, described.
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["adapter_config.json",
                                                                     "adapter_model.safetensors"]
    assert result.adapter_dir == tmp_path / "out" / "adapter"
    assert (result.lora_r, result.target_modules, result.steps, result.trained_tokens) == (
        8, ["q_proj", "v_proj"], 3, 1234)
    assert result.final_loss == pytest.approx(1 / 3) and result.device == "remote"
    assert (result.remote_job_id, result.remote_model, result.remote_base_url) == (
        "ftjob-remote0", "ft:base:remote-tenant:coach:abcd1234", remote.base_url)
    assert not list((tmp_path / "out").glob(".remote*"))


def test_a_restarted_worker_follows_the_same_remote_job_and_mirrors_only_new_events(
        stand_in: tuple[StandIn, Remote], tmp_path: Path) -> None:
    state, remote = stand_in
    state.steps = 6
    first = Recorder()
    run = first.run(tmp_path / "out")
    real = run.on_progress

    def stop_at_step_two(p: Progress) -> None:
        assert real is not None
        real(p)
        first.pause = p.step >= 2  # the worker shuts down

    run.on_progress = stop_at_step_two
    with pytest.raises(TrainingPaused):
        train_remote(run, remote, poll_seconds=0.01)
    assert len(state.jobs) == 1 and first.stored == ["ftjob-remote0"]
    done = {data["remote_event_id"] for _, _, data in first.events if data and "remote_event_id" in data}

    again = Recorder()
    result = train_remote(again.run(tmp_path / "out", remote_job_id="ftjob-remote0", mirrored_events=frozenset(done),
                                    reported_step=2), remote, poll_seconds=0.01)
    assert len(state.jobs) == 1 and not again.stored and len(state.created) == 1  # no second remote job
    assert again.messages()[0] == f"Following the remote job ftjob-remote0 again on {remote.base_url}."
    assert [p.step for p in again.progress] == [3, 4, 5, 6]
    assert "Remote: Fine-tuning job started." not in again.messages()  # mirrored by the first attempt
    assert result.remote_job_id == "ftjob-remote0" and result.steps == 6


def test_a_remote_job_created_before_its_id_was_stored_is_followed_not_created_again(
        stand_in: tuple[StandIn, Remote], tmp_path: Path) -> None:
    state, remote = stand_in
    died = Recorder()
    run = died.run(tmp_path / "out")

    def die(rid: str) -> bool:
        raise RuntimeError("the worker died before storing the remote job's id")

    run.on_remote_job = die
    with pytest.raises(RuntimeError):
        train_remote(run, remote, poll_seconds=0.01)
    state.jobs["ftjob-other"] = {**state.jobs["ftjob-remote0"], "id": "ftjob-other",
                                 "metadata": {"coachforge_job_id": "ftjob-someone-else"}}  # newer, not ours

    again = Recorder()
    result = train_remote(again.run(tmp_path / "out"), remote, poll_seconds=0.01)
    assert len(state.created) == 1 and again.stored == ["ftjob-remote0"]  # no second remote job
    assert again.messages()[0].startswith("Following the remote job ftjob-remote0 on http://127.0.0.1:")
    assert result.remote_job_id == "ftjob-remote0"

    state.jobs["ftjob-remote0"]["status"] = "cancelled"  # a dead remote job is not taken up again
    third = Recorder()
    train_remote(third.run(tmp_path / "out3"), remote, poll_seconds=0.01)
    assert len(state.created) == 2 and third.stored == ["ftjob-remote2"]


def test_a_remote_failure_fails_the_job_with_the_remote_s_message(stand_in: tuple[StandIn, Remote],
                                                                  tmp_path: Path) -> None:
    state, remote = stand_in
    state.outcome = "failed"
    rec = Recorder()
    with pytest.raises(RemoteTrainingFailed) as err:
        train_remote(rec.run(tmp_path / "out"), remote, poll_seconds=0.01)
    assert err.value.code == "remote_job_failed"
    assert str(err.value) == ("The remote job ftjob-remote0 failed: The training data was rejected. "
                              "(invalid_training_file)")
    assert ("Remote: Training failed.", "error") in [(m, level) for m, level, _ in rec.events]


def test_a_remote_that_offers_no_download_succeeds_with_its_model_served_remotely(
        stand_in: tuple[StandIn, Remote], tmp_path: Path) -> None:
    state, remote = stand_in
    state.exports = False
    rec = Recorder()
    result = train_remote(rec.run(tmp_path / "out"), remote, poll_seconds=0.01)
    assert result.adapter_dir is None and not (tmp_path / "out" / "adapter").exists()
    assert (result.remote_job_id, result.remote_model, result.remote_base_url) == (
        "ftjob-remote0", "ft:base:remote-tenant:coach:abcd1234", remote.base_url)
    assert (result.steps, result.trained_tokens, result.lora_r, result.target_modules, result.device) == (
        3, 1234, 0, [], "remote")
    assert result.final_loss == pytest.approx(1 / 3)
    message, level, data = rec.events[-1]
    assert message.startswith(f"The adapter of ft:base:remote-tenant:coach:abcd1234 cannot be downloaded from "
                              f"{remote.base_url} (it answered 404: Invalid URL")
    assert message.endswith("the model is served remotely through inference, as an external model.")
    assert level == "info" and data == {"remote_job_id": "ftjob-remote0",
                                        "remote_model": "ft:base:remote-tenant:coach:abcd1234",
                                        "remote_base_url": remote.base_url}
    assert all(KEY not in json.dumps(e) for e in rec.events)


def test_a_coachforge_remote_refusing_to_export_an_external_model_is_no_download(
        stand_in: tuple[StandIn, Remote], tmp_path: Path) -> None:
    state, remote = stand_in
    state.export_error = (400, "model_not_exportable")
    result = train_remote(Recorder().run(tmp_path / "out"), remote, poll_seconds=0.01)
    assert result.adapter_dir is None and result.remote_model == "ft:base:remote-tenant:coach:abcd1234"
    state.export_error = (400, "invalid_value")  # any other refusal still fails the job
    with pytest.raises(RemoteTrainingFailed) as err:
        train_remote(Recorder().run(tmp_path / "again"), remote, poll_seconds=0.01)
    assert err.value.code == "remote_adapter_unavailable" and "could not export the adapter" in str(err.value)


def test_an_external_result_succeeds_the_job_with_an_empty_adapter_uri(stand_in: tuple[StandIn, Remote],
                                                                       tmp_path: Path) -> None:
    state, remote = stand_in
    state.exports = False
    result = train_remote(Recorder().run(tmp_path / "out"), remote, poll_seconds=0.01)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrate.upgrade(url)
    db = Database(url)
    create_tenant(db, "acme")
    job_id = new_id("ftjob")
    with db.session() as s:
        s.add(Job(id=job_id, tenant_id="acme", model="base", status="queued", training_file="file-x", n_epochs=1,
                  batch_size=1, learning_rate_multiplier=1.0, seed=1, backend="openai_compatible",
                  queued_at=utcnow()))
    try:
        with db.session() as s:
            job = lifecycle.claim_next(s, "w", utcnow() + timedelta(seconds=60), remote=True)
            assert job is not None
            s.expunge(job)
        with db.session() as s:
            lifecycle.succeed(s, _OutboxOnly(), job, "w", result,  # type: ignore[arg-type]
                              fine_tuned_model="ft:base:acme:coach:local1", result_file=None, learning_rate=1e-4)
        with db.session() as s:
            stored = s.get(Job, job_id)
            assert stored is not None
            assert (stored.status, stored.adapter_uri, stored.fine_tuned_model, stored.device) == (
                "succeeded", None, "ft:base:acme:coach:local1", "remote")
            [succeeded] = [payload for env, payload in (decode(row.envelope) for row in s.scalars(
                select(OutboxEvent))) if env.type == "job.succeeded"]
        assert (succeeded.adapter_uri, succeeded.fine_tuned_model, succeeded.remote_job_id, succeeded.remote_model,
                succeeded.remote_base_url, succeeded.lora_rank) == (
            "", "ft:base:acme:coach:local1", "ftjob-remote0", "ft:base:remote-tenant:coach:abcd1234",
            remote.base_url, 0)
    finally:
        db.dispose()


class _OutboxOnly:
    """The publisher without a broker: events go to the outbox in the caller's transaction."""

    def publish_in(self, s: Any, event_type: str, payload: Any, tenant_id: str, key: str | None = None) -> str:
        return publish_in(s, event_type, payload, tenant_id, key)


def test_a_cancel_cancels_the_remote_job_and_a_lost_lease_does_not(stand_in: tuple[StandIn, Remote],
                                                                   tmp_path: Path) -> None:
    state, remote = stand_in
    state.steps = 50
    rec = Recorder()
    run = rec.run(tmp_path / "a")
    run.on_progress = lambda p: setattr(rec, "cancel", True)
    with pytest.raises(TrainingCancelled):
        train_remote(run, remote, poll_seconds=0.01)
    assert state.jobs["ftjob-remote0"]["status"] == "cancelled"
    assert "Cancelled the remote job ftjob-remote0." in rec.messages()

    lost = Recorder()
    run = lost.run(tmp_path / "b")
    run.on_progress = lambda p: setattr(lost, "lost", True)
    with pytest.raises(TrainingCancelled):
        train_remote(run, remote, poll_seconds=0.01)
    assert state.jobs["ftjob-remote1"]["status"] == "running"  # the next holder of the job follows it


def test_a_job_cancelled_on_the_remote_is_cancelled_here(stand_in: tuple[StandIn, Remote], tmp_path: Path) -> None:
    state, remote = stand_in
    state.steps = 50
    rec = Recorder()
    run = rec.run(tmp_path / "out")
    run.on_progress = lambda p: state.jobs["ftjob-remote0"].update(status="cancelled")
    with pytest.raises(TrainingCancelled):
        train_remote(run, remote, poll_seconds=0.01)
    assert "The remote job ftjob-remote0 was cancelled on the remote." in rec.messages()


def test_a_wrong_key_is_a_clear_failure_without_the_key(stand_in: tuple[StandIn, Remote], tmp_path: Path) -> None:
    _, remote = stand_in
    with pytest.raises(RemoteTrainingFailed) as err:
        train_remote(Recorder().run(tmp_path / "out"), Remote(remote.base_url, "sk-wrong"), poll_seconds=0.01)
    assert err.value.code == "remote_job_refused"
    assert "refused the job (401): bad key" in str(err.value) and "sk-wrong" not in str(err.value)


def test_an_archive_without_the_adapter_files_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar.gz"
    write_tar_gz(archive, "x", [("../adapter_config.json", b"{}"), ("notes.txt", b"hi")])
    with pytest.raises(RemoteTrainingFailed) as err:
        unpack_adapter(archive, tmp_path / "adapter")
    assert "lacks adapter_model.safetensors" in str(err.value)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "notes.txt").exists()
