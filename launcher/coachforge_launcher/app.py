"""The services process of the all-in-one mode: every REST router on one port, every gRPC
service on one port, and the event consumers, in one process. Services still reach each other
through real gRPC calls (to this same server) and real events on the broker.

Run as ``python -m coachforge_launcher.app`` (the supervisor does).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

import coachforge_coach.api
import coachforge_coach.grpc
import coachforge_dataset.api
import coachforge_dataset.grpc
import coachforge_inference.api
import coachforge_inference.grpc
import coachforge_registry.api
import coachforge_registry.grpc
import coachforge_trainer.api
import coachforge_trainer.grpc
from coachforge_coach import service as coach_service
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_inference import usage as inference_usage
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_launcher.settings import StackSettings
from coachforge_registry import service as registry_service
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import Authenticator
from coachforge_shared.bootstrap import internal_token
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, EventPublisher, ensure_topics
from coachforge_shared.grpc_server import InternalChannel, build_server
from coachforge_shared.http import add_metrics_route, install_error_handlers
from coachforge_shared.logging import configure_logging, get_logger
from coachforge_shared.settings import PlatformSettings
from coachforge_trainer.metrics import register_job_status_collector
from coachforge_trainer.service import TrainerDeps
from coachforge_trainer.settings import TrainerSettings

log = get_logger("coachforge.app")


@dataclass
class Runtime:
    platform: PlatformSettings
    stack: StackSettings
    db: Database
    publisher: EventPublisher
    inference: InferenceDeps
    grpc_server: grpc.Server
    consumers: list[EventConsumer] = field(default_factory=list)
    channels: list[InternalChannel] = field(default_factory=list)

    def readiness(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        try:
            with self.db.session() as s:
                s.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:
            checks["database"] = False
        checks["broker"] = self.publisher.healthy()
        checks["engine"] = self.inference.pool.healthy()
        try:
            with grpc.insecure_channel(f"{self.stack.host}:{self.stack.grpc_port}") as ch:
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
            checks["grpc"] = status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            checks["grpc"] = False
        checks["consumers"] = all(c.running for c in self.consumers)
        checks["workers"] = all(self._worker_answers(i) for i in range(self.stack.trainer_workers))
        return checks

    def _worker_answers(self, index: int) -> bool:
        """Trainer worker ``index`` is up: its metrics port (worker_metrics_port + index) answers."""
        try:
            r = httpx.get(f"http://{self.stack.host}:{self.stack.worker_metrics_port + index}/metrics", timeout=2)
        except httpx.HTTPError:
            return False
        return r.status_code == 200


def build(platform: PlatformSettings, stack: StackSettings) -> tuple[FastAPI, Runtime]:
    token = internal_token(platform)
    db = Database(platform.resolved_database_url)
    ensure_topics(platform.kafka_bootstrap)
    publisher = EventPublisher(platform.kafka_bootstrap, "coachforge-services")

    def channel(target: str | None) -> InternalChannel:
        ch = InternalChannel(target or platform.grpc_target, token)
        runtime_channels.append(ch)
        return ch

    runtime_channels: list[InternalChannel] = []
    trainer_settings = TrainerSettings()
    inference_settings = InferenceSettings()
    dataset = DatasetDeps(db=db, settings=DatasetSettings(), files_dir=platform.resolved_artifacts_dir / "files",
                          publisher=publisher, models_dir=platform.models_dir)
    registry = RegistryDeps(db=db, settings=RegistrySettings(), publisher=publisher)
    trainer = TrainerDeps(db=db, settings=trainer_settings, publisher=publisher,
                          dataset=channel(trainer_settings.dataset_grpc_target),
                          registry=channel(trainer_settings.registry_grpc_target))
    register_job_status_collector(db)
    inference = InferenceDeps(settings=inference_settings, engine=None,
                              registry=channel(inference_settings.registry_grpc_target), publisher=publisher,
                              db=db, kafka_bootstrap=platform.kafka_bootstrap)
    coach = coach_service.build_deps(db, platform, channel)
    authenticator = Authenticator(db, token)
    server, _ = build_server([
        coachforge_dataset.grpc.registration(dataset),
        coachforge_trainer.grpc.registration(trainer),
        coachforge_registry.grpc.registration(registry),
        coachforge_inference.grpc.registration(inference),
        coachforge_coach.grpc.registration(coach),
    ], authenticator, f"{stack.host}:{stack.grpc_port}")
    runtime = Runtime(platform=platform, stack=stack, db=db, publisher=publisher, inference=inference,
                      grpc_server=server, channels=runtime_channels)
    runtime.consumers.append(EventConsumer(
        platform.kafka_bootstrap, registry.settings.consumer_group, ["job.succeeded"],
        lambda s, env, ev: registry_service.on_job_succeeded(registry, s, env, ev), db))
    runtime.consumers.append(EventConsumer(
        platform.kafka_bootstrap, inference_settings.usage_consumer_group, ["usage.recorded"],
        inference_usage.on_usage_recorded, db))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.start()
        for consumer in runtime.consumers:
            consumer.start()
        inference.start()
        log.info("services up", http=stack.http_port, grpc=stack.grpc_port)
        yield
        for consumer in runtime.consumers:
            consumer.stop()
        server.stop(grace=5).wait()
        for ch in runtime.channels:
            ch.close()
        inference.close()
        await inference.aclose()
        publisher.close()
        db.dispose()

    app = FastAPI(title="CoachForge", version="0.1.0", lifespan=lifespan,
                  description="Fine-tune and serve LoRA adapters; OpenAI-compatible under /v1.")
    app.state.authenticator = authenticator
    app.state.dataset, app.state.trainer, app.state.registry, app.state.inference = (
        dataset, trainer, registry, inference)
    app.state.coach = coach
    install_error_handlers(app)
    add_metrics_route(app)
    routers = (coachforge_dataset.api.router, coachforge_dataset.api.datasets, coachforge_trainer.api.router,
               coachforge_registry.api.router, coachforge_inference.api.router, coachforge_coach.api.router)
    for router in routers:
        app.include_router(router)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", include_in_schema=False)
    def ready() -> Any:
        checks = runtime.readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    return app, runtime


def main() -> None:
    platform = PlatformSettings()
    stack = StackSettings()
    configure_logging(platform.log_level, json=platform.log_json)
    app, _ = build(platform, stack)
    uvicorn.run(app, host=stack.host, port=stack.http_port, log_config=None, access_log=False,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    threading.current_thread().name = "services"
    main()
