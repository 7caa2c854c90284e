"""REST: a tenant's webhook endpoints (``/v1/webhooks/endpoints…``) and their delivery logs."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Query, Request

from coachforge_shared.http import CurrentPrincipal
from coachforge_webhooks import service
from coachforge_webhooks.schemas import CreateEndpoint
from coachforge_webhooks.service import WebhooksDeps

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

Order = Literal["asc", "desc"]


def _deps(request: Request) -> WebhooksDeps:
    deps: WebhooksDeps = request.app.state.webhooks
    return deps


@router.post("/endpoints")
def create_endpoint(request: Request, principal: CurrentPrincipal,
                    body: CreateEndpoint = Body(...)) -> dict[str, Any]:
    """Create an endpoint: an http(s) ``url`` and the ``events`` to send it. The answer carries the
    signing ``secret`` (``whsec_…``), shown only now and on rotation."""
    return service.create_endpoint(_deps(request), principal.tenant_id, body)


@router.get("/endpoints")
def list_endpoints(request: Request, principal: CurrentPrincipal, after: str | None = None,
                   limit: int = Query(20, ge=1, le=100), order: Order = "asc") -> dict[str, Any]:
    """The tenant's endpoints by creation time (without their secrets)."""
    return service.list_endpoints(_deps(request), principal.tenant_id, after=after, limit=limit, order=order)


@router.get("/endpoints/{endpoint_id}")
def get_endpoint(request: Request, principal: CurrentPrincipal, endpoint_id: str) -> dict[str, Any]:
    return service.get_endpoint(_deps(request), principal.tenant_id, endpoint_id)


@router.delete("/endpoints/{endpoint_id}")
def delete_endpoint(request: Request, principal: CurrentPrincipal, endpoint_id: str) -> dict[str, Any]:
    """Delete the endpoint with its delivery log; deliveries not sent yet are dropped."""
    return service.delete_endpoint(_deps(request), principal.tenant_id, endpoint_id)


@router.post("/endpoints/{endpoint_id}/rotate_secret")
def rotate_secret(request: Request, principal: CurrentPrincipal, endpoint_id: str) -> dict[str, Any]:
    """A new signing secret (in the answer); the previous one keeps signing as well for the grace period
    (``COACHFORGE_WEBHOOKS_SECRET_GRACE_S``, default 24 h): requests carry both signatures meanwhile."""
    return service.rotate_secret(_deps(request), principal.tenant_id, endpoint_id)


@router.get("/endpoints/{endpoint_id}/deliveries")
def list_deliveries(request: Request, principal: CurrentPrincipal, endpoint_id: str, after: str | None = None,
                    limit: int = Query(20, ge=1, le=100), order: Order = "desc",
                    status: Literal["pending", "succeeded", "failed"] | None = None) -> dict[str, Any]:
    """The endpoint's deliveries, newest first by default: status, attempts, last status code and
    error, when the next attempt is due."""
    return service.list_deliveries(_deps(request), principal.tenant_id, endpoint_id, after=after, limit=limit,
                                   order=order, status=status)
