"""FastAPI plumbing: the ONE exception handler mapping typed errors to HTTP codes with
OpenAI-style bodies, authentication with scopes, request latency and the metrics listener.

Prometheus metrics are not served on the API port: :func:`start_metrics_server` serves them on a
port of their own, which the ingress does not route."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import start_http_server
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coachforge_shared.auth import READ, SCOPES, WRITE, Authenticator, Principal
from coachforge_shared.db import OUTAGE_ERRORS, is_outage, unavailable
from coachforge_shared.errors import CoachForgeError, InvalidArgument, PayloadTooLarge
from coachforge_shared.logging import get_logger
from coachforge_shared.metrics import HTTP_REQUESTS

log = get_logger("coachforge.http")


_UNION_TAG = re.compile(r"^(literal\[.*\]|constrained-\w+|function-\w+|int|float|str|bool|list\[.*\]|dict\[.*\])$")


def _validation_param(loc: tuple[Any, ...]) -> str:
    """``body.hyperparameters.n_epochs.constrained-int`` → ``hyperparameters.n_epochs`` (only the
    first part names where the value came from: a body field may be called ``query``)."""
    if loc and loc[0] in ("body", "query", "path", "header", "form", "cookie"):
        loc = loc[1:]
    parts = [str(p) for p in loc]
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
        headers = dict(err.headers or {})
        if err.retry_after_s is not None:
            headers["Retry-After"] = str(err.retry_after_s)
        return JSONResponse(err.to_body(), status_code=err.http_status, headers=headers or None)

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


class BodyTooLarge(PayloadTooLarge):
    """A request body over its route's limit (:class:`BodyLimitMiddleware`)."""


class BodyLimitMiddleware:
    """Refuses a request body larger than its route's limit with a 413, before the application has
    read more than the limit: a declared ``Content-Length`` over it is refused before a byte of the
    body is read; a body without one (chunked) is counted as it arrives and cut off as soon as it
    passes the limit. Multipart uploads included: nothing beyond the limit is ever spooled.

    ``limits`` are ``(path pattern, bytes)`` pairs, the first whose regular expression matches the
    whole path wins (a service's upload routes); every other request gets ``default_limit``. A
    plain ASGI middleware: responses and streams pass through untouched."""

    def __init__(self, app: ASGIApp, default_limit: int, limits: Sequence[tuple[str, int]] = ()) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = [(re.compile(pattern), limit) for pattern, limit in limits]

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.limits:
            if pattern.fullmatch(path):
                return limit
        return self.default_limit

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        err = BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.", param="body",
                           code="request_too_large")
        response = JSONResponse(err.to_body(), status_code=413, headers={"Connection": "close"})
        await response({"type": "http"}, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        received = 0
        exceeded = started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.",
                                       param="body", code="request_too_large")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the application's answer to a body cut short: the 413 goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(send, limit)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def add_body_limits(app: FastAPI, default_limit: int, limits: Sequence[tuple[str, int]] = ()) -> None:
    """Limit request bodies (:class:`BodyLimitMiddleware`)."""
    app.add_middleware(BodyLimitMiddleware, default_limit=default_limit, limits=list(limits))


def add_request_metrics(app: FastAPI) -> None:
    """Observe every request's latency (:class:`RequestLatencyMiddleware`)."""
    app.add_middleware(RequestLatencyMiddleware)


class MetricsServer:
    """Prometheus's text format on ``host:port`` (``/metrics``, any path in fact), in a thread of
    its own: the metrics of every service in the process, apart from the public API port."""

    def __init__(self, host: str, port: int) -> None:
        self.server, self.thread = start_http_server(port, addr=host)
        self.port = int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(host: str, port: int) -> MetricsServer:
    """Serve the process's metrics on ``host:port`` (``0``: a free port, see ``.port``)."""
    return MetricsServer(host, port)


SCOPE_KEY = "x-coachforge-scope"
"""OpenAPI extension naming the scope an operation needs, where it is not the default (``read``
for GET and HEAD, ``write`` for every other method)."""


def needs_scope(scope: str) -> dict[str, Any]:
    """``openapi_extra`` of a route that needs ``scope`` rather than its method's default, e.g.
    ``@router.post("/chat/completions", openapi_extra=needs_scope(READ))``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    return {SCOPE_KEY: scope}


def required_scope(request: Request) -> str:
    """The scope the matched route needs: its :func:`needs_scope`, else its method's default."""
    extra = getattr(request.scope.get("route"), "openapi_extra", None) or {}
    scope = extra.get(SCOPE_KEY)
    if isinstance(scope, str):
        return scope
    return READ if request.method in ("GET", "HEAD") else WRITE


async def get_principal(request: Request) -> Principal:
    """Authenticate the caller with the app's :class:`Authenticator` (``app.state.authenticator``)
    and check that its key has the scope the route needs (:func:`required_scope`; 403 naming it).

    Only the API key counts here: the internal token and tenant headers are the gRPC listener's
    and are ignored on the public REST port. The key is checked on the event loop when it is cached
    (most requests: no thread hop), else from a worker thread that asks the database."""
    authenticator: Authenticator = request.app.state.authenticator
    authorization = request.headers.get("authorization")
    principal = authenticator.authenticate_cached(authorization, None, None)
    if principal is None:
        principal = await run_in_threadpool(authenticator.authenticate, authorization, None, None)
    principal.require(required_scope(request))
    return principal


#: Declare ``principal: CurrentPrincipal`` on every endpoint: it authenticates the call.
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
