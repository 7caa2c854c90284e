"""How the registry runs in a process: its dependencies, REST router, gRPC servicer and the
``job.succeeded`` consumer that registers each finished job's adapter, and the
``eval.run.succeeded`` consumer that keeps completed eval runs on their versions (found by the runtime
through the ``coachforge.services`` entry point)."""

from __future__ import annotations

from coachforge_registry import api, grpc, service
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.runtime import Consumer, Service, Wiring


def wire(w: Wiring) -> Service:
    settings = RegistrySettings()
    deps = RegistryDeps(db=w.db, settings=settings, publisher=w.publisher,
                        artifacts_dir=w.platform.resolved_artifacts_dir / "registry",
                        platform_models_dir=w.platform.models_dir)
    registers = Consumer(settings.consumer_group, ["job.succeeded"],
                         lambda s, env, ev: service.on_job_succeeded(deps, s, env, ev))
    evaluated = Consumer(f"{settings.consumer_group}-evals", ["eval.run.succeeded"],
                         lambda s, env, ev: service.on_eval_run_succeeded(deps, s, env, ev))
    return Service("registry", deps, routers=[api.router], servicers=[grpc.registration(deps)],
                   consumers=[registers, evaluated])
