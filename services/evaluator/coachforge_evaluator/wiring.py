"""How the evaluator runs in a process: its dependencies (inference, the registry and the dataset
service reached over gRPC), REST router, gRPC servicer, the ``eval.run.requested`` consumer, and the run executor
(started with the process; its sweep resumes runs whose process died). Found by the runtime
through the ``coachforge.services`` entry point."""

from __future__ import annotations

import os
import socket

from coachforge_evaluator import api, grpc
from coachforge_evaluator.clients import DatasetClient, InferenceClient, RegistryClient
from coachforge_evaluator.runner import RunExecutor
from coachforge_evaluator.service import EvaluatorDeps
from coachforge_evaluator.settings import EvaluatorSettings
from coachforge_shared.runtime import Consumer, Service, Wiring


def wire(w: Wiring) -> Service:
    settings = EvaluatorSettings()
    deps = EvaluatorDeps(db=w.db, settings=settings, publisher=w.publisher,
                         inference=InferenceClient(w.channel(settings.inference_grpc_target),
                                                   settings.request_timeout_s),
                         registry=RegistryClient(w.channel(settings.registry_grpc_target)),
                         # "" turns file_id sources off (no dataset service to read eval files from).
                         dataset=(DatasetClient(w.channel(settings.dataset_grpc_target), settings.request_timeout_s)
                                  if settings.dataset_grpc_target != "" else None))
    executor = RunExecutor(deps, worker_id=f"{socket.gethostname()}:{os.getpid()}")
    deps.wake = executor.submit
    requested = Consumer(settings.consumer_group, ["eval.run.requested"],
                         lambda s, env, ev: lambda: executor.submit(ev.run_id))
    return Service("evaluator", deps, routers=[api.router, api.comparisons_router], servicers=[grpc.registration(deps)],
                   consumers=[requested], checks={"eval_runner": executor.running},
                   on_start=[executor.start], on_stop=[executor.stop])
