"""One service per process, for Kubernetes (``coachforge serve <service>``): that service composed
alone by the runtime (its REST routers, its gRPC servicer plus health and reflection, its event
consumers and tasks, ``/health`` and ``/ready``; Prometheus's ``/metrics`` on a port of its own,
``--metrics-port``). Other services are reached over gRPC at the targets their settings name
(``COACHFORGE_<SVC>_<OTHER>_GRPC_TARGET``, default ``COACHFORGE_GRPC_TARGET``). Only the chosen
service's package is imported, so an image needs nothing but that service (and
``coachforge_shared``) installed.

``coachforge migrate`` upgrades the database schema and makes sure the default tenant (and
``COACHFORGE_API_KEY``, when set) exist.
"""

from __future__ import annotations

from coachforge_shared import runtime
from coachforge_shared.db import Database
from coachforge_shared.logging import get_logger
from coachforge_shared.settings import PlatformSettings

log = get_logger("coachforge.serve")


def serve(service: str, host: str, http_port: int, grpc_port: int, metrics_port: int = 9400) -> None:
    app, _ = runtime.compose([service], PlatformSettings(), f"{host}:{grpc_port}", title=f"CoachForge {service}",
                             client_id=f"coachforge-{service}", metrics_address=f"{host}:{metrics_port}")
    runtime.serve(app, host, http_port)


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
