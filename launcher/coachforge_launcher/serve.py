"""One service per process, for Kubernetes (``coachforge serve <service>``): that service's REST
routers, its gRPC servicer (plus health and reflection) and its event consumers, with
``/health``, ``/ready`` and ``/metrics``. Other services are reached over gRPC at the targets
their settings name (``COACHFORGE_<SVC>_<OTHER>_GRPC_TARGET``, default ``COACHFORGE_GRPC_TARGET``).

Only the chosen service's package is imported, so an image needs nothing but that service
(and ``coachforge_shared``) installed. ``coachforge migrate`` upgrades the database schema and
makes sure the default tenant (and ``COACHFORGE_API_KEY``, when set) exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from coachforge_shared.auth import Authenticator
from coachforge_shared.bootstrap import internal_token
from coachforge_shared.db import Database
from coachforge_shared.events import EventConsumer, EventPublisher, ensure_topics
from coachforge_shared.grpc_server import InternalChannel, ServiceRegistration, build_server
from coachforge_shared.http import add_metrics_route, install_error_handlers
from coachforge_shared.logging import get_logger
from coachforge_shared.settings import PlatformSettings

log = get_logger("coachforge.serve")

SERVICES = ("dataset", "trainer", "registry", "inference", "coach")


@dataclass
class Parts:
    """What one service contributes to its process."""

    routers: list[APIRouter]
    registration: ServiceRegistration
    state: dict[str, Any] = field(default_factory=dict)
    consumers: list[EventConsumer] = field(default_factory=list)
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    close: list[Callable[[], None]] = field(default_factory=list)
    aclose: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Closed from the server's event loop (async clients bound to it)."""


@dataclass
class Context:
    platform: PlatformSettings
    db: Database
    publisher: EventPublisher
    token: str
    channels: list[InternalChannel] = field(default_factory=list)

    def channel(self, target: str | None) -> InternalChannel:
        ch = InternalChannel(target or self.platform.grpc_target, self.token)
        self.channels.append(ch)
        return ch


def _dataset(ctx: Context) -> Parts:
    import coachforge_dataset.api
    import coachforge_dataset.grpc
    from coachforge_dataset.service import DatasetDeps
    from coachforge_dataset.settings import DatasetSettings

    deps = DatasetDeps(db=ctx.db, settings=DatasetSettings(), files_dir=ctx.platform.resolved_artifacts_dir / "files",
                       publisher=ctx.publisher, models_dir=ctx.platform.models_dir)
    return Parts([coachforge_dataset.api.router, coachforge_dataset.api.datasets],
                 coachforge_dataset.grpc.registration(deps), {"dataset": deps})


def _trainer(ctx: Context) -> Parts:
    import coachforge_trainer.api
    import coachforge_trainer.grpc
    from coachforge_trainer.metrics import register_job_status_collector
    from coachforge_trainer.service import TrainerDeps
    from coachforge_trainer.settings import TrainerSettings

    settings = TrainerSettings()
    deps = TrainerDeps(db=ctx.db, settings=settings, publisher=ctx.publisher,
                       dataset=ctx.channel(settings.dataset_grpc_target),
                       registry=ctx.channel(settings.registry_grpc_target))
    register_job_status_collector(ctx.db)
    return Parts([coachforge_trainer.api.router], coachforge_trainer.grpc.registration(deps), {"trainer": deps})


def _registry(ctx: Context) -> Parts:
    import coachforge_registry.api
    import coachforge_registry.grpc
    from coachforge_registry import service
    from coachforge_registry.service import RegistryDeps
    from coachforge_registry.settings import RegistrySettings

    deps = RegistryDeps(db=ctx.db, settings=RegistrySettings(), publisher=ctx.publisher)
    consumer = EventConsumer(ctx.platform.kafka_bootstrap, deps.settings.consumer_group, ["job.succeeded"],
                             lambda s, env, ev: service.on_job_succeeded(deps, s, env, ev), ctx.db)
    return Parts([coachforge_registry.api.router], coachforge_registry.grpc.registration(deps), {"registry": deps},
                 consumers=[consumer])


def _inference(ctx: Context) -> Parts:
    import coachforge_inference.api
    import coachforge_inference.grpc
    from coachforge_inference import usage
    from coachforge_inference.service import InferenceDeps
    from coachforge_inference.settings import InferenceSettings

    settings = InferenceSettings()
    deps = InferenceDeps(settings=settings, engine=None, registry=ctx.channel(settings.registry_grpc_target),
                         publisher=ctx.publisher, db=ctx.db, kafka_bootstrap=ctx.platform.kafka_bootstrap)
    consumer = EventConsumer(ctx.platform.kafka_bootstrap, settings.usage_consumer_group, ["usage.recorded"],
                             usage.on_usage_recorded, ctx.db)
    return Parts([coachforge_inference.api.router], coachforge_inference.grpc.registration(deps),
                 {"inference": deps}, checks={"engine": deps.pool.healthy}, close=[deps.close],
                 aclose=[deps.aclose], consumers=[consumer])


def _coach(ctx: Context) -> Parts:
    import coachforge_coach.api
    import coachforge_coach.grpc
    from coachforge_coach import service

    deps = service.build_deps(ctx.db, ctx.platform, ctx.channel)
    return Parts([coachforge_coach.api.router], coachforge_coach.grpc.registration(deps), {"coach": deps})


BUILDERS: dict[str, Callable[[Context], Parts]] = {
    "dataset": _dataset, "trainer": _trainer, "registry": _registry, "inference": _inference, "coach": _coach}


def build(service: str, platform: PlatformSettings, grpc_address: str) -> FastAPI:
    """The ASGI app of one service; its gRPC server and consumers start and stop with the app."""
    if service not in BUILDERS:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    token = internal_token(platform)
    db = Database(platform.resolved_database_url)
    ensure_topics(platform.kafka_bootstrap)
    ctx = Context(platform=platform, db=db, publisher=EventPublisher(platform.kafka_bootstrap,
                                                                     f"coachforge-{service}"), token=token)
    parts = BUILDERS[service](ctx)
    authenticator = Authenticator(db, token)
    server, _ = build_server([parts.registration], authenticator, grpc_address)
    grpc_port = grpc_address.rsplit(":", 1)[1]

    def readiness() -> dict[str, bool]:
        checks: dict[str, bool] = {}
        try:
            with db.session() as s:
                s.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:
            checks["database"] = False
        checks["broker"] = ctx.publisher.healthy()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
            checks["grpc"] = status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            checks["grpc"] = False
        checks["consumers"] = all(c.running for c in parts.consumers)
        for name, check in parts.checks.items():
            checks[name] = check()
        return checks

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.start()
        for consumer in parts.consumers:
            consumer.start()
        log.info("service up", service=service, grpc=grpc_address)
        yield
        for consumer in parts.consumers:
            consumer.stop()
        server.stop(grace=5).wait()
        for ch in ctx.channels:
            ch.close()
        for close in parts.close:
            close()
        for aclose in parts.aclose:
            await aclose()
        ctx.publisher.close()
        db.dispose()

    app = FastAPI(title=f"CoachForge {service}", version="0.1.0", lifespan=lifespan)
    app.state.authenticator = authenticator
    for name, value in parts.state.items():
        setattr(app.state, name, value)
    install_error_handlers(app)
    add_metrics_route(app)
    for router in parts.routers:
        app.include_router(router)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", include_in_schema=False)
    def ready() -> Any:
        checks = readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    return app


def serve(service: str, host: str, http_port: int, grpc_port: int) -> None:
    import uvicorn

    app = build(service, PlatformSettings(), f"{host}:{grpc_port}")
    uvicorn.run(app, host=host, port=http_port, log_config=None, access_log=False, timeout_graceful_shutdown=5)


def migrate() -> None:
    """Upgrade the schema to head; create the default tenant and register ``COACHFORGE_API_KEY``."""
    from coachforge_shared import migrate as migrations
    from coachforge_shared.auth import add_api_key, create_tenant

    platform = PlatformSettings()
    url = platform.resolved_database_url
    migrations.upgrade(url)
    db = Database(url)
    try:
        create_tenant(db, platform.default_tenant)
        if platform.api_key:
            add_api_key(db, platform.default_tenant, platform.api_key, name="bootstrap")
    finally:
        db.dispose()
    log.info("database at head", tenant=platform.default_tenant, api_key=bool(platform.api_key))
