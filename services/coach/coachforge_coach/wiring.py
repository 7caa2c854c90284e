"""How the coach service runs in a process: its dependencies (the registry and inference reached
over gRPC), REST router and gRPC servicer (found by the runtime through the
``coachforge.services`` entry point)."""

from __future__ import annotations

from coachforge_coach import api, grpc
from coachforge_coach.clients import GrpcModelClient
from coachforge_coach.service import CoachDeps
from coachforge_coach.settings import CoachSettings
from coachforge_shared.runtime import Service, Wiring


def wire(w: Wiring) -> Service:
    settings = CoachSettings()
    models = GrpcModelClient(w.channel(settings.registry_grpc_target), w.channel(settings.inference_grpc_target))
    deps = CoachDeps(db=w.db, settings=settings, models_dir=settings.models_dir or w.platform.models_dir,
                     models=models)
    return Service("coach", deps, routers=[api.router], servicers=[grpc.registration(deps)])
