"""GET /v1/avatars/{name}/experiment: the registry asks a real inference gRPC server for the
feedback per variant and compares the avatar's candidate with its active model; the period's
default start from the avatar's history; the comparison against values computed independently."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coachforge.common.v1.envelope_pb2 import Envelope
from coachforge.inference.v1 import inference_pb2
from coachforge.trainer.v1 import trainer_pb2
from coachforge_inference import grpc as inference_grpc
from coachforge_inference import stored
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_registry import api, experiment, service
from coachforge_registry.feedback import GrpcFeedbackSource
from coachforge_registry.models import Avatar, AvatarChange
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument, NotFound, Unavailable
from coachforge_shared.events import EventConsumer, encode
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel
from coachforge_shared.http import install_error_handlers

BASE = "SmolLM2-135M-Instruct"
V1, V2 = f"ft:{BASE}:acme:coach:1", f"ft:{BASE}:acme:coach:2"
TOKEN = "internal"
ACME = {"Authorization": "Bearer cf-acme-key"}


# --- the period's start, from the history ---


def _at(minutes: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)


def _change(minutes: int, action: str, to_model: str, from_model: str | None = None, **detail: Any) -> AvatarChange:
    return AvatarChange(action=action, to_model=to_model, from_model=from_model, actor="k", reason="",
                        detail_json=json.dumps(detail), created_at=_at(minutes))


def test_the_experiment_starts_when_its_candidate_was_set() -> None:
    avatar = Avatar(name="coach", active_model=V1, candidate_model=V2, candidate_share=30, created_at=_at(0))
    history = [  # newest first, as the registry keeps it
        _change(40, "candidate_set", V1, V1, candidate_model=V2, traffic_share=30, previous_candidate=V2),
        _change(30, "candidate_set", V1, V1, candidate_model=V2, traffic_share=10, previous_candidate="ft:old"),
        _change(20, "candidate_set", V1, V1, candidate_model="ft:old", traffic_share=10, previous_candidate=None),
        _change(10, "activated", V1, "ft:base"),
        _change(0, "created", "ft:base"),
    ]
    assert experiment.default_since(avatar, history) == _at(30)  # a new share does not restart it
    again = [_change(50, "candidate_set", V1, V1, candidate_model=V2, traffic_share=5, previous_candidate=None),
             _change(45, "candidate_cleared", V1, V1, candidate_model=None, traffic_share=0, previous_candidate=V2),
             *history]
    assert experiment.default_since(avatar, again) == _at(50)  # cleared and set again: a new experiment
    no_candidate = Avatar(name="coach", active_model=V1, candidate_model=None, created_at=_at(0))
    assert experiment.default_since(no_candidate, history) == _at(10)  # when the active model became active
    assert experiment.default_since(no_candidate, []) == _at(0)


def test_the_difference_against_independent_values() -> None:
    # Per-completion ratings: active 4, 3, 4, 2, 3 (mean 3.2, variance 0.7); candidate 5, 4, 5, 4 (mean 4.5,
    # variance 1/3). scipy.stats.ttest_ind(candidate, active, equal_var=False).confidence_interval() =
    # (0.1796731, 2.4203269), df 6.913244 (R: t.test(candidate, active)).
    active = {"mean_rating": 3.2, "rating_stddev": 0.7 ** 0.5, "rated": 5, "gold": 1, "reviewed": 5}
    candidate = {"mean_rating": 4.5, "rating_stddev": (1 / 3) ** 0.5, "rated": 4, "gold": 3, "reviewed": 4}
    diff = experiment.difference(active, candidate)
    assert diff is not None
    mean = diff["mean_rating"]
    assert mean["method"] == "welch" and mean["estimate"] == pytest.approx(1.3)
    assert (mean["low"], mean["high"]) == pytest.approx((0.1796731, 2.4203269), abs=5e-7)
    assert mean["df"] == pytest.approx(6.913244, abs=1e-6)
    # Gold 3/4 - 1/5 = 0.55 with Newcombe's hybrid score interval from the Wilson intervals
    # (0.0362241, 0.6244654) and (0.3006418, 0.9544127):
    #   low  = 0.55 - sqrt((0.75 - 0.3006418)^2 + (0.6244654 - 0.2)^2) = 0.55 - 0.6181372 = -0.0681372
    #   high = 0.55 + sqrt((0.9544127 - 0.75)^2 + (0.2 - 0.0362241)^2)  = 0.55 + 0.2619296 =  0.8119296
    gold = diff["gold_rate"]
    assert gold["method"] == "newcombe" and gold["estimate"] == pytest.approx(0.55)
    assert (gold["low"], gold["high"]) == pytest.approx((-0.0681372, 0.8119296), abs=5e-7)
    one = {**candidate, "rated": 1, "rating_stddev": None}
    partial = experiment.difference(active, one)
    assert partial is not None and partial["mean_rating"] is None and partial["gold_rate"] is not None
    assert experiment.difference(active, None) is None


# --- against a real inference gRPC server ---


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> Iterator[RegistryDeps]:
    for tenant in ("acme", "globex"):
        create_tenant(db, tenant)
    add_api_key(db, "acme", "cf-acme-key")
    deps = RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE]), artifacts_dir=tmp_path / "store",
                        platform_models_dir=tmp_path / "models")
    for job, model in (("ftjob-1", V1), ("ftjob-2", V2)):
        event = trainer_pb2.JobSucceeded(job_id=job, base_model=BASE, fine_tuned_model=model,
                                         adapter_uri=f"/adapters/{job}", lora_rank=16,
                                         target_modules=["q_proj", "v_proj"])
        with db.session() as s:
            service.on_job_succeeded(deps, s, Envelope(event_id=f"evt-{job}", tenant_id="acme"), event)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inference = InferenceDeps(settings=InferenceSettings(engine_url="http://127.0.0.1:9"),
                              registry=InternalChannel("127.0.0.1:9", TOKEN), db=db)
    server = GrpcServerThread([inference_grpc.registration(inference)], Authenticator(db, internal_token=TOKEN),
                              f"127.0.0.1:{port}", max_workers=4).start()
    channel = InternalChannel(f"127.0.0.1:{port}", TOKEN)
    deps.feedback = GrpcFeedbackSource(channel)
    try:
        yield deps
    finally:
        channel.close()
        server.stop()


def _store(db: Database, cid: str, created: int, model: str, variant: str, ratings: list[int], *,
           gold: bool = False, avatar: str = "coach-anna", tenant: str = "acme") -> None:
    msg = inference_pb2.CompletionStored(
        id=cid, created=created, model=model, requested_model=avatar, avatar=avatar, variant=variant,
        metadata_json="{}", messages_json="[]", params_json="{}", choices_json="[]")
    consumer = EventConsumer.__new__(EventConsumer)  # handle() needs no broker connection
    consumer.group, consumer.handler, consumer.db = "experiment-test", stored.on_completion_stored, db
    assert consumer.handle(encode("completion.stored", msg, tenant).SerializeToString())[0] == "handled"
    feedback = InferenceDeps(settings=InferenceSettings(), registry=None, db=db)
    for i, rating in enumerate(ratings):
        stored.post_feedback(feedback, tenant, cid, {"rating": rating, "gold": gold and i == 0, "rater": f"r{i}"},
                             "k")


def test_experiment_compares_the_candidate_with_the_active_model(deps: RegistryDeps, db: Database) -> None:
    service.create_avatar(deps, "acme", "k", "coach-anna", V1)
    service.set_candidate(deps, "acme", "k", "coach-anna", V2, 50, "retrained on gold")
    now = int(time.time())
    # Before the candidate was set: not part of the experiment unless asked.
    _store(db, "old-1", now - 3600, V1, "", [1])
    # Active arm: per-completion ratings 4, 3, 4, 2 (raters 1 and 3), 3; gold on one of five.
    for i, ratings in enumerate(([4], [3], [4], [1, 3], [3])):
        _store(db, f"act-{i}", now + i, V1, "active", ratings, gold=i == 0)
    # Candidate arm: 5, 4, 5, 4; gold on three of four; one answered by the base model on fallback.
    for i, ratings in enumerate(([5], [4], [5], [4])):
        _store(db, f"cand-{i}", now + i, V2, "candidate", ratings, gold=i < 3)
    _store(db, "cand-fallback", now, BASE, "candidate", [1])
    _store(db, "other-avatar", now, V1, "active", [5], avatar="coach-bob")

    result = experiment.experiment(deps, "acme", "coach-anna")
    set_at = next(c for c in service.history(deps, "acme", "coach-anna") if c.action == "candidate_set").created_at
    assert result["since"] == int(set_at.timestamp()) and result["since"] <= now
    assert (result["object"], result["avatar"], result["active_model"], result["candidate_model"],
            result["candidate_share"], result["confidence"]) == (
        "avatar.experiment", "coach-anna", V1, V2, 50, 0.95)
    rows = {(v["model"], v["variant"]): v for v in result["variants"]}
    assert list(rows) == [(BASE, "candidate"), (V1, "active"), (V2, "candidate")]
    active, candidate = rows[(V1, "active")], rows[(V2, "candidate")]
    assert (active["completions"], active["reviewed"], active["rated"], active["gold"]) == (5, 5, 5, 1)
    assert active["mean_rating"] == pytest.approx(3.2) and active["rating_stddev"] == pytest.approx(0.7 ** 0.5)
    assert (active["thumbs_up"], active["thumbs_down"]) == (2, 1)
    assert set(active["mean_rating_interval"]) == {"low", "high"}
    assert active["gold_rate"] == pytest.approx(0.2)
    assert candidate["mean_rating"] == pytest.approx(4.5) and candidate["gold_rate"] == pytest.approx(0.75)
    assert (candidate["thumbs_up"], candidate["thumbs_up_rate"], candidate["thumbs_down_rate"]) == (4, 1.0, 0.0)
    assert rows[(BASE, "candidate")]["rated"] == 1  # listed, not compared
    diff = result["difference"]
    assert diff["mean_rating"]["estimate"] == pytest.approx(1.3)
    assert (diff["mean_rating"]["low"], diff["mean_rating"]["high"]) == pytest.approx((0.1796731, 2.4203269),
                                                                                       abs=5e-7)
    assert (diff["gold_rate"]["low"], diff["gold_rate"]["high"]) == pytest.approx((-0.0681372, 0.8119296),
                                                                                   abs=5e-7)

    everything = experiment.experiment(deps, "acme", "coach-anna", since=0)
    assert everything["since"] == 0
    assert {(v["model"], v["variant"]) for v in everything["variants"]} == {
        (BASE, "candidate"), (V1, "active"), (V1, None), (V2, "candidate")}

    # Promoted: no candidate, no comparison; the period starts with the activation.
    service.activate(deps, "acme", "k", "coach-anna", V2)
    promoted = experiment.experiment(deps, "acme", "coach-anna")
    assert promoted["candidate_model"] is None and promoted["difference"] is None

    with pytest.raises(NotFound):
        experiment.experiment(deps, "globex", "coach-anna")
    with pytest.raises(InvalidArgument):
        experiment.experiment(deps, "acme", "coach-anna", since=-1)
    deps.feedback = None
    with pytest.raises(Unavailable):
        experiment.experiment(deps, "acme", "coach-anna")


def test_rest_experiment(deps: RegistryDeps, db: Database) -> None:
    app = FastAPI()
    app.state.authenticator = Authenticator(db, internal_token=TOKEN)
    app.state.registry = deps
    install_error_handlers(app)
    app.include_router(api.router)
    client = TestClient(app, raise_server_exceptions=False)
    service.create_avatar(deps, "acme", "k", "coach-anna", V1)
    _store(db, "a-1", 100, V1, "", [4, 5])
    r = client.get("/v1/avatars/coach-anna/experiment", headers=ACME, params={"since": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["candidate_model"] is None and body["difference"] is None and body["since"] == 0
    assert body["variants"][0]["variant"] is None and body["variants"][0]["mean_rating"] == 4.5
    assert body["variants"][0]["mean_rating_interval"] is None  # one rated completion
    assert client.get("/v1/avatars/coach-anna/experiment", headers=ACME).json()["variants"] == []
    r = client.get("/v1/avatars/nobody/experiment", headers=ACME)
    assert r.status_code == 404
    r = client.get("/v1/avatars/coach-anna/experiment", headers=ACME, params={"since": -5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"
    deps.feedback = None
    assert client.get("/v1/avatars/coach-anna/experiment", headers=ACME).status_code == 503


def test_since_beyond_any_unix_time_is_refused_naming_it(deps: RegistryDeps) -> None:
    """A ``since`` too large for a unix time (found by the API fuzzer: a 500 before) is a 400."""
    service.create_avatar(deps, "acme", "k", "coach-anna", V1)
    with pytest.raises(InvalidArgument) as refused:
        experiment.experiment(deps, "acme", "coach-anna", since=10**20)
    assert refused.value.param == "since"
    assert experiment.experiment(deps, "acme", "coach-anna", since=experiment.LATEST_SINCE)["variants"] == []
