"""How the registry runs in a process: its dependencies, REST router, gRPC servicer and the
``job.succeeded`` consumer that registers each finished job's adapter, and the
``eval.run.succeeded`` consumer that keeps completed eval runs on their versions, the retrain
driver that advances avatars' eval-gated retrains, and the export worker that makes model exports
(found by the runtime through the ``coachforge.services`` entry point)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from coachforge_registry import api, grpc, service
from coachforge_registry.export_jobs import ExportWorker
from coachforge_registry.feedback import GrpcFeedbackSource
from coachforge_registry.knowledge import KnowledgeBaseCheck
from coachforge_registry.retrain import RetrainDriver
from coachforge_registry.retrain_clients import RetrainClients
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.runtime import Consumer, Service, Wiring


def wire(w: Wiring) -> Service:
    settings = RegistrySettings()
    deps = RegistryDeps(db=w.db, settings=settings, publisher=w.publisher,
                        artifacts_dir=w.platform.resolved_artifacts_dir / "registry",
                        platform_models_dir=w.platform.models_dir,
                        job_artifacts_dir=w.platform.resolved_artifacts_dir)
    registers = Consumer(settings.consumer_group, ["job.succeeded"],
                         lambda s, env, ev: service.on_job_succeeded(deps, s, env, ev))
    evaluated = Consumer(f"{settings.consumer_group}-evals", ["eval.run.succeeded"],
                         lambda s, env, ev: service.on_eval_run_succeeded(deps, s, env, ev))
    if settings.inference_grpc_target != "":  # an empty address: no experiment statistics
        deps.feedback = GrpcFeedbackSource(w.channel(settings.inference_grpc_target))
    if settings.dataset_grpc_target != "":  # an empty address: a persona's knowledge base is not looked up
        deps.knowledge_bases = KnowledgeBaseCheck(w.channel(settings.dataset_grpc_target))
    targets = (settings.dataset_grpc_target, settings.trainer_grpc_target, settings.evaluator_grpc_target,
               settings.inference_grpc_target)
    hooks: dict[str, list[Callable[[], None]]] = {"on_start": [], "on_stop": []}
    owner = f"{socket.gethostname()}:{os.getpid()}"
    if "" not in targets:  # an empty address turns retraining off
        deps.retrain = RetrainClients(dataset=w.channel(settings.dataset_grpc_target),
                                      trainer=w.channel(settings.trainer_grpc_target),
                                      evaluator=w.channel(settings.evaluator_grpc_target),
                                      inference=w.channel(settings.inference_grpc_target))
        driver = RetrainDriver(deps, deps.retrain, owner=owner)
        deps.retrain_wake = driver.wake
        hooks["on_start"].append(driver.start)
        hooks["on_stop"].append(driver.stop)
    if settings.exports_enabled:
        exporter = ExportWorker(deps, owner=owner)
        deps.export_wake = exporter.wake
        hooks["on_start"].append(exporter.start)
        hooks["on_stop"].append(exporter.stop)
    upload_limit = deps.settings.max_upload_bytes + 64 * 1024  # the multipart envelope on top of the files
    return Service("registry", deps, routers=[api.router], servicers=[grpc.registration(deps)],
                   consumers=[registers, evaluated], body_limits=[("/v1/models/.+/versions", upload_limit)],
                   **hooks)
