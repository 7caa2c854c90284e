"""FastAPI plumbing: the ONE exception handler mapping typed errors to HTTP codes with
OpenAI-style bodies, authentication, ``/metrics`` and request latency."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coachforge_shared.auth import INTERNAL_HEADER, TENANT_HEADER, Authenticator, Principal
from coachforge_shared.db import OUTAGE_ERRORS, is_outage, unavailable
from coachforge_shared.errors import CoachForgeError, InvalidArgument
from coachforge_shared.logging import get_logger
from coachforge_shared.metrics import HTTP_REQUESTS

log = get_logger("coachforge.http")


_UNION_TAG = re.compile(r"^(literal\[.*\]|constrained-\w+|function-\w+|int|float|str|bool|list\[.*\]|dict\[.*\])$")


def _validation_param(loc: tuple[Any, ...]) -> str:
    """``body.hyperparameters.n_epochs.constrained-int`` → ``hyperparameters.n_epochs``."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    parts = [p for p in parts if not _UNION_TAG.match(p)]
    return ".".join(parts) or "body"


def _relevant(errors: list[Any]) -> list[Any]:
    """Drop "should be 'auto'"-style errors of a union's literal branch when another branch explains more."""
    specific = [e for e in errors if e.get("type") != "literal_error"]
    return specific or errors


def install_error_handlers(app: FastAPI) -> None:
    """Map errors to status codes and ``{"error": {message, type, param, code}}`` bodies. A database
    outage (connection refused or dropped, too many connections, no pooled connection to spare)
    is :class:`~coachforge_shared.errors.Unavailable`: 503 with ``Retry-After``, not a 500."""

    def typed(err: CoachForgeError) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s is not None else None
        return JSONResponse(err.to_body(), status_code=err.http_status, headers=headers)

    @app.exception_handler(CoachForgeError)
    async def _typed(_: Request, err: CoachForgeError) -> JSONResponse:
        return typed(err)

    async def _database(request: Request, err: Exception) -> JSONResponse:
        if is_outage(err):
            return typed(unavailable(err))
        return await _unexpected(request, err)  # a bug (e.g. SQLite's "no such table"): a 500

    for error_class in OUTAGE_ERRORS:
        app.add_exception_handler(error_class, _database)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = _relevant(list(err.errors()))
        param = _validation_param(tuple(errors[0].get("loc", ())))
        msg = "; ".join(f"{_validation_param(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors[:10])
        body = InvalidArgument(f"Invalid request: {msg}", param=param, code="invalid_value").to_body()
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        body = {"error": {"message": str(err.detail), "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error", error=str(err))
        body = {"error": {"message": "Internal server error.", "type": "server_error", "param": None, "code": None}}
        return JSONResponse(body, status_code=500)


ARRIVED = "coachforge.arrived"
"""The ASGI scope key under which :class:`RequestLatencyMiddleware` notes when a request arrived
(``time.perf_counter()``), for handlers that report where the time went."""


class RequestLatencyMiddleware:
    """Observes ``coachforge_http_request_duration_seconds`` for every REST request, from its
    arrival to the last byte of the response (a streamed answer counts whole), labelled with the
    matched route template (``/v1/files/{file_id}``, never the raw path, so labels stay bounded).
    A plain ASGI middleware: nothing is buffered, streaming passes through untouched. The arrival
    time is left in the scope under :data:`ARRIVED`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = scope[ARRIVED] = time.perf_counter()
        status = 500  # what the client sees if the app fails before it answers

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if route not in ("/metrics", "/health", "/ready"):
                HTTP_REQUESTS.labels(route, scope["method"], str(status)).observe(time.perf_counter() - start)


def add_metrics_route(app: FastAPI) -> None:
    """Serve ``/metrics`` and observe every request's latency (:class:`RequestLatencyMiddleware`)."""
    app.add_middleware(RequestLatencyMiddleware)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def get_principal(request: Request) -> Principal:
    """Authenticate the caller with the app's :class:`Authenticator` (``app.state.authenticator``):
    on the event loop when its key is cached (most requests: no thread hop), else from a worker
    thread that asks the database."""
    authenticator: Authenticator = request.app.state.authenticator
    h = request.headers
    headers = (h.get("authorization"), h.get(INTERNAL_HEADER), h.get(TENANT_HEADER))
    principal = authenticator.authenticate_cached(*headers)
    if principal is not None:
        return principal
    return await run_in_threadpool(authenticator.authenticate, *headers)


#: Declare ``principal: CurrentPrincipal`` on every endpoint: it authenticates the call.
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
