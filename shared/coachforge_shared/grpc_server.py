"""gRPC server bootstrap (health + reflection) and the ONE interceptor that authenticates
every call and maps typed errors to status codes. Also the client side: channels that
present the internal token, and typed errors back from ``grpc.RpcError``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coachforge_shared.auth import (
    INTERNAL_HEADER,
    TENANT_HEADER,
    Authenticator,
    reset_principal,
    set_principal,
)
from coachforge_shared.errors import CoachForgeError, from_rpc_error
from coachforge_shared.logging import get_logger
from coachforge_shared.metrics import GRPC_REQUESTS

log = get_logger("coachforge.grpc")

#: Methods callable without credentials (health checks, reflection).
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ErrorAndAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Authenticates each call (API key or internal token) and turns :class:`CoachForgeError`
    into the matching status code; anything else becomes INTERNAL without leaking details."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method: str = details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler

        def enter(context: grpc.ServicerContext) -> object:
            md = dict(context.invocation_metadata())
            principal = self.authenticator.authenticate(
                md.get("authorization"), md.get(INTERNAL_HEADER), md.get(TENANT_HEADER)
            )
            return set_principal(principal)

        def fail(context: grpc.ServicerContext, err: Exception) -> None:
            if isinstance(err, CoachForgeError):
                GRPC_REQUESTS.labels(method, err.grpc_code.name).inc()
                if err.param:
                    context.set_trailing_metadata((("x-error-param", err.param),))
                context.abort(err.grpc_code, err.message)
            GRPC_REQUESTS.labels(method, "INTERNAL").inc()
            log.exception("unhandled error in gRPC method", method=method)
            context.abort(grpc.StatusCode.INTERNAL, "Internal error.")

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                token = None
                try:
                    token = enter(context)
                    result = inner(request, context)
                    GRPC_REQUESTS.labels(method, "OK").inc()
                    return result
                except Exception as err:
                    fail(context, err)
                finally:
                    if token is not None:
                        reset_principal(token)

            factory = (grpc.unary_unary_rpc_method_handler if handler.unary_unary
                       else grpc.stream_unary_rpc_method_handler)
            return factory(unary, handler.request_deserializer, handler.response_serializer)

        inner_stream = handler.unary_stream or handler.stream_stream

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token = None
            try:
                token = enter(context)
                yield from inner_stream(request, context)
                GRPC_REQUESTS.labels(method, "OK").inc()
            except Exception as err:
                fail(context, err)
            finally:
                if token is not None:
                    reset_principal(token)

        factory = (grpc.unary_stream_rpc_method_handler if handler.unary_stream
                   else grpc.stream_stream_rpc_method_handler)
        return factory(streaming, handler.request_deserializer, handler.response_serializer)


@dataclass
class ServiceRegistration:
    """One servicer to mount: ``add(servicer, server)`` is the generated ``add_…_to_server``."""

    name: str
    servicer: Any
    add: Callable[[Any, grpc.Server], None]


def build_server(
    registrations: Iterable[ServiceRegistration],
    authenticator: Authenticator,
    address: str,
    max_workers: int = 32,
) -> tuple[grpc.Server, health.HealthServicer]:
    """A started-ready (not yet started) server with health, reflection and the interceptor."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[ErrorAndAuthInterceptor(authenticator)],
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                 ("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    for reg in registrations:
        reg.add(reg.servicer, server)
        names.append(reg.name)
        health_servicer.set(reg.name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(names, server)
    server.add_insecure_port(address)
    return server, health_servicer


class InternalChannel:
    """A channel to another service that calls on behalf of a tenant with the internal token."""

    def __init__(self, target: str, internal_token: str) -> None:
        self.target = target
        self.internal_token = internal_token
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024)])

    def metadata(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        return ((INTERNAL_HEADER, self.internal_token), (TENANT_HEADER, tenant_id))

    def wait_ready(self, timeout: float = 60) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self) -> None:
        self.channel.close()


@contextmanager
def typed_rpc_errors() -> Iterator[None]:
    """Re-raise a ``grpc.RpcError`` from another service as the typed error it stands for."""
    try:
        yield
    except grpc.RpcError as err:
        raise from_rpc_error(err) from None


def wait_for_health(target: str, timeout: float = 60) -> None:
    """Block until the server at ``target`` answers SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
