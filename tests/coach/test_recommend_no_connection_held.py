"""A recommendation holds no database connection while the registry and the model answer: real
gRPC stubs (the coach's :class:`GrpcModelClient`) against a real gRPC server whose handlers note
how many connections the coach's pool has checked out while they answer."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import BASE, TODAY, answer, athlete_batch, workout  # type: ignore[import-not-found]

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_coach import service
from coachforge_coach.clients import GrpcModelClient
from coachforge_coach.schemas import ImportBatch, RecommendIn
from coachforge_coach.service import CoachDeps
from coachforge_coach.settings import CoachSettings
from coachforge_shared.auth import Authenticator, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, ServiceRegistration

TOKEN = "internal-test-token"


@dataclass
class Observed:
    """What the handlers saw: the coach pool's checked-out connections during each call."""

    db: Database
    content: str = ""
    during: Any = None
    """Called while the model answers (e.g. to change the athlete's data meanwhile)."""
    checked_out: dict[str, list[int]] = field(default_factory=lambda: {"GetModel": [], "CreateChatCompletion": []})


class Registry(registry_pb2_grpc.RegistryServiceServicer):  # type: ignore[misc]
    def __init__(self, seen: Observed) -> None:
        self.seen = seen

    def GetModel(self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext) -> registry_pb2.Model:
        self.seen.checked_out["GetModel"].append(self.seen.db.engine.pool.checkedout())
        return registry_pb2.Model(id=request.model_id, base_model=BASE)


class Inference(inference_pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, seen: Observed) -> None:
        self.seen = seen

    def CreateChatCompletion(self, request: inference_pb2.ChatCompletionRequest,
                             context: grpc.ServicerContext) -> inference_pb2.ChatCompletionResponse:
        self.seen.checked_out["CreateChatCompletion"].append(self.seen.db.engine.pool.checkedout())
        if self.seen.during is not None:
            self.seen.during()
        return inference_pb2.ChatCompletionResponse(id="chatcmpl-1", model=request.model, content=self.seen.content,
                                                    finish_reason="stop")


@pytest.fixture
def seen(db: Database) -> Observed:
    create_tenant(db, "acme")
    return Observed(db)


@pytest.fixture
def deps(seen: Observed, db: Database, tmp_path: Path) -> Iterator[CoachDeps]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"
    server = GrpcServerThread([
        ServiceRegistration(registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name, Registry(seen),
                            registry_pb2_grpc.add_RegistryServiceServicer_to_server),
        ServiceRegistration(inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
                            Inference(seen), inference_pb2_grpc.add_InferenceServiceServicer_to_server),
    ], Authenticator(db, internal_token=TOKEN), target, max_workers=4).start()
    channel = InternalChannel(target, TOKEN)
    try:
        yield CoachDeps(db=db, settings=CoachSettings(), models_dir=tmp_path / "no-models",
                        models=GrpcModelClient(channel, channel))
    finally:
        channel.close()
        server.stop()


def _recommend(deps: CoachDeps) -> dict[str, Any]:
    return service.recommend(deps, "acme", "anna", RecommendIn.model_validate({"today": TODAY.isoformat()}))


def test_no_connection_is_checked_out_while_the_model_answers(deps: CoachDeps, seen: Observed) -> None:
    service.import_batch(deps, "acme", athlete_batch(recent_tss=140))  # overreached: easing off is accepted
    seen.content = answer({"op": "reduce_intensity", "workout_id": "p-wed", "new_zone": 2, "reason": "TSB low",
                           "confidence": 0.8})
    rec = _recommend(deps)
    assert rec["source"] == "model" and rec["fallback"] is None, rec["fallback"]
    assert [o["accepted"] for o in rec["operations"]] == [True]
    assert seen.checked_out == {"GetModel": [0], "CreateChatCompletion": [0]}
    assert rec["completion_id"] == "chatcmpl-1"
    assert deps.db.engine.pool.checkedout() == 0


def test_a_workout_completed_while_the_model_answers_is_not_proposed(deps: CoachDeps, seen: Observed) -> None:
    service.import_batch(deps, "acme", athlete_batch(recent_tss=140))
    seen.content = answer({"op": "reduce_intensity", "workout_id": "p-wed", "new_zone": 2, "reason": "TSB low",
                           "confidence": 0.8})

    def athlete_did_it_meanwhile() -> None:  # possible only because the coach holds no transaction
        service.import_batch(deps, "acme", ImportBatch.model_validate(
            {"workouts": [workout("p-wed", 2, "tempo", 3, 60, 70, status="completed")]}))

    seen.during = athlete_did_it_meanwhile
    rec = _recommend(deps)
    assert seen.checked_out["CreateChatCompletion"] == [0]
    # The answer is checked against the workouts as they are when it is stored.
    assert rec["source"] == "rules" and rec["fallback"]["reason"] == "rejected_by_rules"
    assert rec["model_answer"]["valid"] is True
