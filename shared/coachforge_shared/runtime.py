"""The runtime that composes services into one process.

Each service declares, in its own package (``coachforge_<name>/wiring.py``), everything needed to
run it: a function ``wire(wiring: Wiring) -> Service`` that builds its dependencies from its own
settings and returns its REST routers, gRPC servicers, event consumers (topics and handlers),
background tasks and readiness checks. The function is published as an entry point of the
``coachforge.services`` group (in the service's ``pyproject.toml``), so that this module finds it
without knowing any service.

:func:`compose` puts any set of services into one ASGI app: all of them for the all-in-one mode,
one for ``coachforge serve <service>``. The app's lifespan starts one ``grpc.aio`` server on the
same event loop (every servicer, plus health and reflection), the event consumers and the
services' own tasks, and stops them in reverse order. ``/health`` says the process is alive,
``/ready`` runs the one readiness check (database, broker, gRPC, consumers, each service's own
checks). Prometheus's metrics are served on a port of their own (``metrics_address``), never on the
API port. Every composed app also mounts the admin API (``/v1/tenants``, ``/v1/keys``,
:mod:`coachforge_shared.admin`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import grpc
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from coachforge_shared import admin
from coachforge_shared.auth import Authenticator
from coachforge_shared.bootstrap import internal_token
from coachforge_shared.db import Database
from coachforge_shared.errors import NotFound
from coachforge_shared.events import EventConsumer, EventPublisher, Handler, ensure_topics
from coachforge_shared.grpc_server import InternalChannel, ServiceRegistration, build_server, mark_serving
from coachforge_shared.http import (
    MetricsServer,
    add_body_limits,
    add_request_metrics,
    install_error_handlers,
    start_metrics_server,
)
from coachforge_shared.logging import get_logger
from coachforge_shared.openapi import install_openapi
from coachforge_shared.outbox import OutboxRelay
from coachforge_shared.settings import PlatformSettings

log = get_logger("coachforge.runtime")

ENTRY_POINT_GROUP = "coachforge.services"

Check = Callable[[], bool | Awaitable[bool]]
"""A readiness check: True when the part it looks at can serve (may be a coroutine function)."""
Hook = Callable[[], Awaitable[None] | None]
"""Something to do when the process starts or stops (may be a coroutine function)."""


@dataclass(frozen=True)
class Consumer:
    """Events a service consumes: its consumer group, the topics, and the handler of each event
    (called in a transaction; see :class:`~coachforge_shared.events.EventConsumer`)."""

    group: str
    topics: Sequence[str]
    handler: Handler


@dataclass
class Service:
    """Everything one service contributes to the process that runs it."""

    name: str
    deps: Any
    """The service's dependencies; its REST handlers find them as ``request.app.state.<name>``."""
    routers: Sequence[APIRouter] = ()
    servicers: Sequence[ServiceRegistration] = ()
    consumers: Sequence[Consumer] = ()
    body_limits: Sequence[tuple[str, int]] = ()
    """Request body limits of its routes that differ from the platform's ``max_request_bytes``, as
    ``(path regular expression, bytes)`` pairs (its upload routes)."""
    checks: Mapping[str, Check] = field(default_factory=dict)
    """Readiness checks of its own (e.g. the inference engines), by the name ``/ready`` shows."""
    on_start: Sequence[Hook] = ()
    """Background work started with the process (on its event loop), in order."""
    on_stop: Sequence[Hook] = ()
    """Undone when the process stops, in order (after the gRPC server and the consumers stopped)."""


@dataclass
class Wiring:
    """What the runtime hands each service's ``wire`` function: the platform settings and the
    process's shared resources. A service reads its own settings class itself."""

    platform: PlatformSettings
    db: Database
    publisher: EventPublisher
    token: str
    """The internal token services present to each other over gRPC."""
    channels: list[InternalChannel] = field(default_factory=list)

    def channel(self, target: str | None) -> InternalChannel:
        """A gRPC channel to another service at ``target`` (``None``: the platform's gRPC target),
        closed when the process stops."""
        ch = InternalChannel(target or self.platform.grpc_target, self.token,
                             default_timeout_s=self.platform.grpc_client_timeout_s)
        self.channels.append(ch)
        return ch


Wire = Callable[[Wiring], Service]


@cache
def available() -> dict[str, Any]:
    """The installed services by name (entry points of :data:`ENTRY_POINT_GROUP`, not yet loaded)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load(name: str) -> Wire:
    """The ``wire`` function of service ``name`` (only that service's package is imported)."""
    found = available()
    if name not in found:
        raise NotFound(f"unknown service {name!r}; installed: {', '.join(sorted(found)) or 'none'}",
                       param="service")
    wire: Wire = found[name].load()
    return wire


async def _call(hook: Callable[[], Any]) -> Any:
    """Run a hook or check: a coroutine function on the loop, a plain one in a worker thread."""
    if inspect.iscoroutinefunction(hook):
        return await hook()
    return await asyncio.to_thread(hook)


@dataclass
class Process:
    """The composed services and the resources they share; :meth:`readiness` is the one check."""

    platform: PlatformSettings
    wiring: Wiring
    services: list[Service]
    grpc_address: str
    extra_checks: Mapping[str, Check]
    consumers: list[EventConsumer] = field(default_factory=list)
    relay: OutboxRelay | None = None
    """Sends the outbox's committed events (events waiting there never make the process unready)."""

    def _database(self) -> bool:
        try:
            with self.wiring.db.session() as s:
                s.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def _grpc(self) -> bool:
        port = self.grpc_address.rsplit(":", 1)[1]
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
            return bool(status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def _consumers(self) -> bool:
        return all(c.running for c in self.consumers)

    async def readiness(self) -> dict[str, bool]:
        """Every check, run concurrently: database, broker, gRPC, consumers, then each service's own
        and the caller's extra ones (a check that raises counts as not ready)."""
        checks: dict[str, Check] = {"database": self._database, "broker": self.wiring.publisher.healthy,
                                    "grpc": self._grpc, "consumers": self._consumers}
        for service in self.services:
            checks.update(service.checks)
        checks.update(self.extra_checks)
        results = await asyncio.gather(*(_call(check) for check in checks.values()), return_exceptions=True)
        return {name: result is True for name, result in zip(checks, results, strict=True)}


def compose(names: Iterable[str], platform: PlatformSettings, grpc_address: str, *,
            title: str = "CoachForge", extra_checks: Mapping[str, Check] | None = None,
            client_id: str = "coachforge-services", metrics_address: str | None = None) -> tuple[FastAPI, Process]:
    """One process running the services ``names``: their REST routers in the returned app, their
    gRPC servicers on ``grpc_address``, their consumers and tasks, all started and stopped by the
    app's lifespan. ``extra_checks`` join ``/ready`` (e.g. the all-in-one's trainer workers).
    ``metrics_address`` (``host:port``): where Prometheus's metrics are served while the app runs
    (``None``: nowhere)."""
    wires = [(name, load(name)) for name in names]
    db = Database(platform.resolved_database_url)
    ensure_topics(platform.kafka_bootstrap, partitions=platform.event_partitions)
    publisher = EventPublisher(platform.kafka_bootstrap, client_id, db=db,
                               delivery_timeout_ms=platform.kafka_delivery_timeout_ms)
    wiring = Wiring(platform=platform, db=db, publisher=publisher, token=internal_token(platform))
    services = [wire(wiring) for _, wire in wires]
    process = Process(platform, wiring, services, grpc_address, dict(extra_checks or {}))
    relay = process.relay = OutboxRelay(db, publisher, poll_seconds=platform.outbox_poll_seconds,
                                        batch_size=platform.outbox_batch_size, name=f"outbox-{client_id}")
    process.consumers = [EventConsumer(platform.kafka_bootstrap, c.group, list(c.topics), c.handler, db)
                         for service in services for c in service.consumers]
    authenticator = Authenticator(db, wiring.token, key_cache_s=platform.api_key_cache_s)
    registrations = [reg for service in services for reg in service.servicers]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        metrics: MetricsServer | None = None
        if metrics_address is not None:
            host, port = metrics_address.rsplit(":", 1)
            metrics = start_metrics_server(host, int(port))
        server, health_servicer = build_server(registrations, authenticator, grpc_address,
                                               method_concurrency=platform.grpc_method_concurrency,
                                               stream_idle_timeout_s=platform.grpc_stream_idle_timeout_s)
        await server.start()
        await mark_serving(health_servicer, [r.name for r in registrations])
        relay.start()
        for consumer in process.consumers:
            consumer.start()
        for service in services:
            for hook in service.on_start:
                await _call(hook)
        log.info("services up", services=[s.name for s in services], grpc=grpc_address, metrics=metrics_address)
        try:
            yield
        finally:
            for consumer in process.consumers:
                await asyncio.to_thread(consumer.stop)
            await server.stop(grace=5)
            for service in reversed(services):
                for hook in service.on_stop:
                    await _call(hook)
            for ch in wiring.channels:
                ch.close()
            await asyncio.to_thread(relay.stop)
            await asyncio.to_thread(wiring.publisher.close)
            db.dispose()
            if metrics is not None:
                await asyncio.to_thread(metrics.stop)

    app = FastAPI(title=title, version="0.1.0", lifespan=lifespan,
                  description="Fine-tune and serve LoRA adapters; OpenAI-compatible under /v1.")
    app.state.authenticator = authenticator
    app.state.admin = admin.AdminDeps(db=db, authenticator=authenticator, operator_tenant=platform.default_tenant)
    for service in services:
        setattr(app.state, service.name, service.deps)
    install_error_handlers(app)
    install_openapi(app)
    add_body_limits(app, platform.max_request_bytes, [limit for service in services for limit in service.body_limits])
    add_request_metrics(app)
    app.include_router(admin.router)
    for service in services:
        for router in service.routers:
            app.include_router(router)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", include_in_schema=False)
    async def ready() -> Any:
        checks = await process.readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    return app, process


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run ``app`` with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5)
