"""How the trainer service runs in a process: its dependencies, REST router and gRPC servicer
(found by the runtime through the ``coachforge.services`` entry point). Training itself runs in
separate worker processes (``python -m coachforge_trainer.worker``)."""

from __future__ import annotations

from coachforge_shared.runtime import Service, Wiring
from coachforge_trainer import api, grpc
from coachforge_trainer.metrics import register_job_status_collector
from coachforge_trainer.service import TrainerDeps
from coachforge_trainer.settings import TrainerSettings


def wire(w: Wiring) -> Service:
    settings = TrainerSettings()
    deps = TrainerDeps(db=w.db, settings=settings, publisher=w.publisher,
                       dataset=w.channel(settings.dataset_grpc_target),
                       registry=w.channel(settings.registry_grpc_target))
    register_job_status_collector(w.db)
    return Service("trainer", deps, routers=[api.router], servicers=[grpc.registration(deps)])
