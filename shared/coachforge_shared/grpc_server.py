"""gRPC server bootstrap (health + reflection) and the ONE interceptor that authenticates
every call and maps typed errors to status codes. Also the client side: channels that
present the internal token, and typed errors back from ``grpc.RpcError``."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
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


class ErrorAndAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates each call (API key or internal token) and turns :class:`CoachForgeError`
    into the matching status code; anything else becomes INTERNAL without leaking details.

    The server is a ``grpc.aio`` one: a servicer written with ``async def`` methods runs on the
    event loop; one with plain methods runs in the server's thread pool. Both get the caller as
    :func:`~coachforge_shared.auth.current_principal` for the length of the call."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        kind = ("unary_unary" if handler.unary_unary else "unary_stream" if handler.unary_stream
                else "stream_unary" if handler.stream_unary else "stream_stream")
        inner = getattr(handler, kind)
        streams = kind.endswith("_stream")
        if inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner):
            behaviour = self._async_stream(method, inner) if streams else self._async_unary(method, inner)
        else:
            behaviour = self._sync_stream(method, inner) if streams else self._sync_unary(method, inner)
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(behaviour, handler.request_deserializer, handler.response_serializer)

    @staticmethod
    def _headers(context: Any) -> tuple[str | None, str | None, str | None]:
        md = dict(context.invocation_metadata() or ())
        return md.get("authorization"), md.get(INTERNAL_HEADER), md.get(TENANT_HEADER)

    @staticmethod
    def _failure(method: str, err: Exception) -> tuple[grpc.StatusCode, str, str | None]:
        """The status, message and ``x-error-param`` an error ends the call with (counted)."""
        if isinstance(err, CoachForgeError):
            GRPC_REQUESTS.labels(method, err.grpc_code.name).inc()
            return err.grpc_code, err.message, err.param
        GRPC_REQUESTS.labels(method, "INTERNAL").inc()
        log.error("unhandled error in gRPC method", method=method, exc_info=err)
        return grpc.StatusCode.INTERNAL, "Internal error.", None

    # --- plain servicers (run in the server's thread pool) ---

    def _sync_enter(self, context: Any) -> object:
        return set_principal(self.authenticator.authenticate(*self._headers(context)))

    def _sync_fail(self, method: str, context: Any, err: Exception) -> None:
        code, message, param = self._failure(method, err)
        if param:
            context.set_trailing_metadata((("x-error-param", param),))
        context.abort(code, message)

    def _sync_unary(self, method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        def unary(request: Any, context: Any) -> Any:
            token = None
            try:
                token = self._sync_enter(context)
                result = inner(request, context)
                GRPC_REQUESTS.labels(method, "OK").inc()
                return result
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                self._sync_fail(method, context, err)
            finally:
                if token is not None:
                    reset_principal(token)

        return unary

    def _sync_stream(self, method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        def streaming(request: Any, context: Any) -> Iterator[Any]:
            token = None
            try:
                token = self._sync_enter(context)
                yield from inner(request, context)
                GRPC_REQUESTS.labels(method, "OK").inc()
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                self._sync_fail(method, context, err)
            finally:
                if token is not None:
                    reset_principal(token)

        return streaming

    # --- async servicers (run on the event loop) ---

    async def _async_enter(self, context: Any) -> object:
        headers = self._headers(context)
        principal = self.authenticator.authenticate_cached(*headers)
        if principal is None:  # not cached: the database is asked from a worker thread
            principal = await asyncio.to_thread(self.authenticator.authenticate, *headers)
        return set_principal(principal)

    async def _async_fail(self, method: str, context: Any, err: Exception) -> None:
        code, message, param = self._failure(method, err)
        if param:
            context.set_trailing_metadata((("x-error-param", param),))
        await context.abort(code, message)

    def _async_unary(self, method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def unary(request: Any, context: Any) -> Any:
            token = None
            try:
                token = await self._async_enter(context)
                result = await inner(request, context)
                GRPC_REQUESTS.labels(method, "OK").inc()
                return result
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await self._async_fail(method, context, err)
            finally:
                if token is not None:
                    reset_principal(token)

        return unary

    def _async_stream(self, method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            token = None
            try:
                token = await self._async_enter(context)
                async for reply in inner(request, context):
                    yield reply
                GRPC_REQUESTS.labels(method, "OK").inc()
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await self._async_fail(method, context, err)
            finally:
                if token is not None:
                    reset_principal(token)

        return streaming


@dataclass
class ServiceRegistration:
    """One servicer to mount: ``add(servicer, server)`` is the generated ``add_…_to_server``."""

    name: str
    servicer: Any
    add: Callable[[Any, Any], None]


def build_server(
    registrations: Iterable[ServiceRegistration],
    authenticator: Authenticator,
    address: str,
    max_workers: int = 32,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A ``grpc.aio`` server (not yet started; build it inside the event loop that will run it)
    with health, reflection and the interceptor. Servicers with plain methods run in a pool of
    ``max_workers`` threads, ``async def`` ones on the loop."""
    server = grpc.aio.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[ErrorAndAuthInterceptor(authenticator)],
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                 ("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    for reg in registrations:
        reg.add(reg.servicer, server)
        names.append(reg.name)
    reflection.enable_server_reflection(names, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"gRPC server cannot listen on {address}")
    return server, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer, names: Iterable[str]) -> None:
    """Report the server and each of ``names`` as SERVING to health checks."""
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


class GrpcServerThread:
    """A :func:`build_server` server on an event loop of its own thread, for processes (and tests)
    that have no event loop of their own: ``start()`` returns once it listens, ``stop()`` ends it."""

    def __init__(self, registrations: Iterable[ServiceRegistration], authenticator: Authenticator,
                 address: str, max_workers: int = 32) -> None:
        self._args = (list(registrations), authenticator, address, max_workers)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
        self.server: grpc.aio.Server | None = None

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> GrpcServerThread:
        self._thread.start()

        async def start() -> None:
            regs, authenticator, address, max_workers = self._args
            self.server, health_servicer = build_server(regs, authenticator, address, max_workers)
            await self.server.start()
            await mark_serving(health_servicer, [r.name for r in regs])

        self._run(start())
        return self

    def stop(self, grace: float = 1) -> None:
        if self.server is not None:
            self._run(self.server.stop(grace))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


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
