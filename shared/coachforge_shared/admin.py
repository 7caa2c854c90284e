"""The admin API: tenants and API keys (``/v1/tenants``, ``/v1/keys``), for keys with the ``admin``
scope. Mounted by the runtime in every composed process (it needs only the database and the
process's :class:`~coachforge_shared.auth.Authenticator`); ``coachforge tenants`` and
``coachforge keys`` do the same from the command line.

An admin key manages the keys of its own tenant. An admin key of the operator's tenant (the
platform's ``default_tenant``) also creates and lists tenants and manages every tenant's keys.
A key revoked here stops working at once in this process (its cache entry is dropped), and in
other processes within their key cache time (``COACHFORGE_API_KEY_CACHE_S``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from coachforge_shared import auth
from coachforge_shared.auth import ADMIN, DEFAULT_KEY_SCOPES, Authenticator, Principal
from coachforge_shared.db import Database
from coachforge_shared.errors import PermissionDenied
from coachforge_shared.http import CurrentPrincipal, needs_scope

router = APIRouter(prefix="/v1", tags=["admin"])
ADMIN_ONLY = needs_scope(ADMIN)


@dataclass
class AdminDeps:
    db: Database
    authenticator: Authenticator
    operator_tenant: str
    """The tenant whose admin keys manage every tenant."""


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=63, description="Tenant id: lower-case letters, digits, '-', '_'.")
    name: str | None = Field(default=None, max_length=200, description="Display name (default: the id).")


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, max_length=63, description="Whose key (default: the caller's tenant).")
    name: str = Field(default="", max_length=200, description="What the key is for.")
    scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_KEY_SCOPES), max_length=3,
                              description="Any of read, write, admin (default: read, write).")


class LimitsIn(BaseModel):
    """Fields left out keep their value; ``null`` puts one back to the deployment's default; 0 is no limit."""

    model_config = ConfigDict(extra="forbid")

    max_requests_per_1_minute: int | None = Field(default=None, ge=0, description="Requests per minute.")
    max_tokens_per_1_minute: int | None = Field(
        default=None, ge=0, description="Tokens per minute (prompt + completion; a request is admitted on its "
                                        "prompt's estimate plus its max_tokens, then charged what it used).")
    max_tokens_per_1_day: int | None = Field(default=None, ge=0, description="Tokens per UTC day.")
    max_cost_usd_per_1_day: float | None = Field(default=None, ge=0, description="US dollars per UTC day.")


def _deps(request: Request) -> AdminDeps:
    deps: AdminDeps = request.app.state.admin
    return deps


def _operator(deps: AdminDeps, principal: Principal) -> None:
    if principal.tenant_id != deps.operator_tenant:
        raise PermissionDenied(f"Only admin keys of the operator's tenant ({deps.operator_tenant}) manage tenants "
                               "and other tenants' keys.", code="not_operator")


def _tenant(deps: AdminDeps, principal: Principal, tenant: str | None) -> str:
    """The tenant a key call is about: the caller's, or (for the operator) the one named."""
    if tenant is None or tenant == principal.tenant_id:
        return principal.tenant_id
    _operator(deps, principal)
    return tenant


@router.get("/tenants", openapi_extra=ADMIN_ONLY)
def list_tenants(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """Every tenant (operator only)."""
    deps = _deps(request)
    _operator(deps, principal)
    return {"object": "list", "data": auth.list_tenants(deps.db)}


@router.post("/tenants", openapi_extra=ADMIN_ONLY)
def create_tenant(request: Request, principal: CurrentPrincipal, body: TenantIn) -> dict[str, Any]:
    """Create a tenant (operator only); 409 if it exists."""
    deps = _deps(request)
    _operator(deps, principal)
    return auth.new_tenant(deps.db, body.id, body.name)


@router.get("/keys", openapi_extra=ADMIN_ONLY)
def list_keys(request: Request, principal: CurrentPrincipal, tenant: str | None = None) -> dict[str, Any]:
    """The API keys of the caller's tenant (or, for the operator, of ``tenant``); never the keys themselves."""
    deps = _deps(request)
    return {"object": "list", "data": auth.list_api_keys(deps.db, _tenant(deps, principal, tenant))}


@router.post("/keys", openapi_extra=ADMIN_ONLY)
def create_key(request: Request, principal: CurrentPrincipal, body: KeyIn) -> dict[str, Any]:
    """A new API key; the answer's ``key`` is shown this once (only its hash is kept)."""
    deps = _deps(request)
    created, key = auth.create_api_key(deps.db, _tenant(deps, principal, body.tenant), name=body.name,
                                       scopes=body.scopes)
    return {**created, "key": key}


@router.delete("/keys/{key_id}", openapi_extra=ADMIN_ONLY)
def revoke_key(request: Request, principal: CurrentPrincipal, key_id: str) -> dict[str, Any]:
    """Revoke a key of the caller's tenant (the operator: any key); it stops working at once here."""
    deps = _deps(request)
    owner = None if principal.tenant_id == deps.operator_tenant else principal.tenant_id
    revoked = auth.revoke_api_key(deps.db, key_id, owner)
    deps.authenticator.forget_key(key_id)
    return revoked


@router.get("/tenants/{tenant_id}/limits", openapi_extra=ADMIN_ONLY)
def get_limits(request: Request, principal: CurrentPrincipal, tenant_id: str) -> dict[str, Any]:
    """A tenant's own limits on inference (``null``: the deployment's default, 0: none); an admin key
    reads its own tenant's, the operator any tenant's."""
    deps = _deps(request)
    return auth.tenant_limits(deps.db, _tenant(deps, principal, tenant_id))


@router.post("/tenants/{tenant_id}/limits", openapi_extra=ADMIN_ONLY)
def set_limits(request: Request, principal: CurrentPrincipal, tenant_id: str, body: LimitsIn) -> dict[str, Any]:
    """Change a tenant's limits (operator only): requests and tokens per minute, tokens and cost per
    day. Inference replicas apply them within their limits cache time."""
    deps = _deps(request)
    _operator(deps, principal)
    return auth.set_tenant_limits(deps.db, tenant_id, body.model_dump(exclude_unset=True))
