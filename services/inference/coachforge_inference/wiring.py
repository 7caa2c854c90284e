"""How the inference service runs in a process: its dependencies (the registry, and the dataset
service for avatar personas' knowledge, over gRPC), REST router, async gRPC
servicer, the ``usage.recorded`` consumer that keeps daily usage rows and the ``completion.stored``
consumer that keeps stored completions (each its own consumer group), the engine pool's
health checks, the model.* listener and the purge of stored completions past their retention
(started with the process), and the engines as a readiness check (found by the runtime through
the ``coachforge.services`` entry point)."""

from __future__ import annotations

from coachforge_inference import api, grpc, retention, stored, usage
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.runtime import Consumer, Service, Wiring


def wire(w: Wiring) -> Service:
    settings = InferenceSettings()
    # an empty address: no dataset service, avatar personas with knowledge answer without it
    dataset = w.channel(settings.dataset_grpc_target) if settings.dataset_grpc_target != "" else None
    deps = InferenceDeps(settings=settings, registry=w.channel(settings.registry_grpc_target),
                         publisher=w.publisher, db=w.db, kafka_bootstrap=w.platform.kafka_bootstrap,
                         adapter_cache_dir=settings.adapter_cache_dir or w.platform.data_dir / "adapter-cache",
                         dataset=dataset)
    purger = retention.Purger(deps)
    return Service("inference", deps, routers=[api.router], servicers=[grpc.registration(deps)],
                   consumers=[Consumer(settings.usage_consumer_group, ["usage.recorded"], usage.on_usage_recorded),
                              Consumer(settings.stored_consumer_group, [stored.TOPIC], stored.on_completion_stored)],
                   checks={"engine": deps.healthy}, on_start=[deps.start, purger.start],
                   on_stop=[purger.stop, deps.close])
