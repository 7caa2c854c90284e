"""How the coach service runs in a process: its dependencies (the registry, inference and the
dataset service's knowledge bases reached over gRPC), REST router and gRPC servicer, the
``completion.stored`` consumer (its own consumer group) and the retrier that send
recommendations' outcomes kept until their completion is stored (found by the runtime through the
``coachforge.services`` entry point)."""

from __future__ import annotations

from coachforge_coach import api, grpc, outcomes
from coachforge_coach.clients import GrpcKnowledgeClient, GrpcModelClient
from coachforge_coach.service import CoachDeps
from coachforge_coach.settings import CoachSettings
from coachforge_shared.runtime import Consumer, Service, Wiring


def wire(w: Wiring) -> Service:
    settings = CoachSettings()
    models = GrpcModelClient(w.channel(settings.registry_grpc_target), w.channel(settings.inference_grpc_target))
    # an empty address: no dataset service, no training principles in the context
    knowledge = (GrpcKnowledgeClient(w.channel(settings.dataset_grpc_target))
                 if settings.dataset_grpc_target != "" else None)
    deps = CoachDeps(db=w.db, settings=settings, models_dir=settings.models_dir or w.platform.models_dir,
                     models=models, knowledge=knowledge)
    retrier = outcomes.OutcomeRetrier(deps)
    stored = Consumer(settings.outcomes_consumer_group, [outcomes.TOPIC], outcomes.on_completion_stored(deps))
    return Service("coach", deps, routers=[api.router], servicers=[grpc.registration(deps)], consumers=[stored],
                   on_start=[retrier.start], on_stop=[retrier.stop])
