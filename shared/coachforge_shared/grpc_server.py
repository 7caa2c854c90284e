"""gRPC server bootstrap (health + reflection) and the ONE interceptor that authenticates
every call, bounds what one method may hold, and maps typed errors to status codes. Also the
client side: channels that present the internal token and give every call a deadline, and typed
errors back from ``grpc.RpcError``.

Bounds, because a server's thread pool is shared by all its plain (non-``async``) methods:

* at most ``method_concurrency`` calls of one plain method are in progress at once; one more is
  refused at once with RESOURCE_EXHAUSTED (``x-error-code: too_many_concurrent_calls``), so a
  method that stalls cannot take every thread. ``async def`` methods run on the event loop, hold
  no thread and are not limited; health checks never are.
* a client-streaming call whose client sends nothing for ``stream_idle_timeout_s`` ends with
  DEADLINE_EXCEEDED, and the thread (or task) waiting for its next message is free again.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
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
    Principal,
    grpc_scope,
    reset_principal,
    set_principal,
)
from coachforge_shared.db import is_outage, unavailable
from coachforge_shared.errors import (
    ERROR_CODE_KEY,
    ERROR_PARAM_KEY,
    ERROR_RETRY_AFTER_KEY,
    TOO_MANY_CALLS,
    CoachForgeError,
    from_rpc_error,
)
from coachforge_shared.logging import get_logger
from coachforge_shared.metrics import GRPC_REQUESTS

log = get_logger("coachforge.grpc")

#: Methods callable without credentials (health checks, reflection); never limited either.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

DEFAULT_MAX_WORKERS = 32
DEFAULT_STREAM_IDLE_TIMEOUT_S = 60.0
DEFAULT_CLIENT_TIMEOUT_S = 30.0


class StreamIdle(CoachForgeError):
    """A client stream sent no message for the idle timeout: the call ends with DEADLINE_EXCEEDED."""

    http_status = 408
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    type = "invalid_request_error"


class _IdleLimitedRequests:
    """The request stream of a plain (thread-pool) client-streaming method, with a time limit on
    each message. grpc's own iterator blocks its worker thread until the next message comes, for
    ever if the client stalls; so a helper thread reads it, one message per ``next()`` (nothing is
    read ahead), and the worker waits for it at most ``timeout_s``. Past that the worker raises
    :class:`StreamIdle` and is free; the helper ends when grpc ends the call's pending read."""

    _ITEM, _END, _ERROR = range(3)

    def __init__(self, requests: Iterable[Any], timeout_s: float) -> None:
        self._requests = iter(requests)
        self.timeout_s = timeout_s
        self.idle: StreamIdle | None = None
        """Set once the stream was found idle (the call must end with it, whatever the method did)."""
        self._asks = threading.Semaphore(0)
        self._answers: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._finished = False

    def __iter__(self) -> _IdleLimitedRequests:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        if self._reader is None:
            self._reader = threading.Thread(target=self._read, name="grpc-stream-reader", daemon=True)
            self._reader.start()
        self._asks.release()
        try:
            kind, value = self._answers.get(timeout=self.timeout_s)
        except queue.Empty:
            self._finish()
            self.idle = StreamIdle(f"No message for {self.timeout_s:g} s on the request stream; the call was ended.",
                                   code="stream_idle")
            raise self.idle from None
        if kind == self._ITEM:
            return value
        self._finish()
        if kind == self._ERROR:
            raise value
        raise StopIteration

    def _finish(self) -> None:
        self._finished = True
        self._asks.release()  # a reader waiting to be asked sees _finished and ends

    def _read(self) -> None:
        while True:
            self._asks.acquire()
            if self._finished:
                return
            try:
                item = next(self._requests)
            except StopIteration:
                self._answers.put((self._END, None))
                return
            except BaseException as err:  # handed to the worker, which raises it
                self._answers.put((self._ERROR, err))
                return
            self._answers.put((self._ITEM, item))


class _IdleLimitedAsyncRequests:
    """The request stream of an ``async`` client-streaming method, each message waited for at
    most ``timeout_s`` (then :class:`StreamIdle`)."""

    def __init__(self, requests: Any, timeout_s: float) -> None:
        self._requests = requests.__aiter__()
        self.timeout_s = timeout_s
        self.idle: StreamIdle | None = None

    def __aiter__(self) -> _IdleLimitedAsyncRequests:
        return self

    async def __anext__(self) -> Any:
        if self.idle is not None:
            raise StopAsyncIteration
        try:
            return await asyncio.wait_for(self._requests.__anext__(), self.timeout_s)
        except TimeoutError:
            self.idle = StreamIdle(f"No message for {self.timeout_s:g} s on the request stream; the call was ended.",
                                   code="stream_idle")
            raise self.idle from None


class ErrorAndAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates each call (API key, with the scope the method needs, or internal token) and
    turns :class:`CoachForgeError` into the matching status code; a database outage becomes
    UNAVAILABLE; anything else becomes INTERNAL without leaking details.

    The server is a ``grpc.aio`` one: a servicer written with ``async def`` methods runs on the
    event loop; one with plain methods runs in the server's thread pool. Both get the caller as
    :func:`~coachforge_shared.auth.current_principal` for the length of the call. Plain methods
    may have at most ``method_concurrency`` calls in progress each (``None``: no limit); request
    streams of any method end after ``stream_idle_timeout_s`` without a message (``None``: never)."""

    def __init__(self, authenticator: Authenticator, *, method_concurrency: int | None = None,
                 stream_idle_timeout_s: float | None = None) -> None:
        if method_concurrency is not None and method_concurrency < 1:
            raise ValueError("method_concurrency must be at least 1")
        self.authenticator = authenticator
        self.method_concurrency = method_concurrency
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        kind = ("unary_unary" if handler.unary_unary else "unary_stream" if handler.unary_stream
                else "stream_unary" if handler.stream_unary else "stream_stream")
        inner = getattr(handler, kind)
        streams = kind.endswith("_stream")
        client_streams = kind.startswith("stream_")
        if inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner):
            behaviour = (self._async_stream(method, inner, client_streams) if streams
                         else self._async_unary(method, inner, client_streams))
        else:
            behaviour = (self._sync_stream(method, inner, client_streams) if streams
                         else self._sync_unary(method, inner, client_streams))
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(behaviour, handler.request_deserializer, handler.response_serializer)

    @staticmethod
    def _headers(context: Any) -> tuple[str | None, str | None, str | None]:
        md = dict(context.invocation_metadata() or ())
        return md.get("authorization"), md.get(INTERNAL_HEADER), md.get(TENANT_HEADER)

    @staticmethod
    def _failure(method: str, err: Exception) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
        """The status, message and trailing metadata (``x-error-param``, ``x-error-code``,
        ``x-retry-after``) an error ends the call with (counted)."""
        if is_outage(err):
            err = unavailable(err)
        if isinstance(err, CoachForgeError):
            GRPC_REQUESTS.labels(method, err.grpc_code.name).inc()
            trailing: tuple[tuple[str, str], ...] = ((ERROR_PARAM_KEY, err.param),) if err.param else ()
            if err.code:
                trailing += ((ERROR_CODE_KEY, err.code),)
            if err.retry_after_s is not None:
                trailing += ((ERROR_RETRY_AFTER_KEY, str(err.retry_after_s)),)
            return err.grpc_code, err.message, trailing
        GRPC_REQUESTS.labels(method, "INTERNAL").inc()
        log.error("unhandled error in gRPC method", method=method, exc_info=err)
        return grpc.StatusCode.INTERNAL, "Internal error.", ()

    @staticmethod
    def _idle_error(requests: Any, err: Exception) -> Exception:
        """The error the call ends with: the stream's idleness when it was found idle (even if the
        method caught it and raised something else), else ``err``."""
        idle = getattr(requests, "idle", None)
        return idle if idle is not None else err

    # --- plain servicers (run in the server's thread pool) ---

    @contextmanager
    def _slot(self, method: str, context: Any) -> Iterator[None]:
        """One of ``method``'s slots for the length of the call; the call is refused at once with
        RESOURCE_EXHAUSTED when the method has none left (it would wait for, or take, a thread
        other methods need)."""
        if self.method_concurrency is None:
            yield
            return
        with self._slots_lock:
            slot = self._slots.setdefault(method, threading.BoundedSemaphore(self.method_concurrency))
        if not slot.acquire(blocking=False):
            GRPC_REQUESTS.labels(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
            context.set_trailing_metadata(((ERROR_CODE_KEY, TOO_MANY_CALLS),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"Too many calls of {method} in progress (at most {self.method_concurrency} at once); "
                          "retry shortly.")
        try:
            yield
        finally:
            slot.release()

    def _sync_requests(self, request: Any, client_streams: bool) -> Any:
        if client_streams and self.stream_idle_timeout_s is not None:
            return _IdleLimitedRequests(request, self.stream_idle_timeout_s)
        return request

    @staticmethod
    def _allowed(method: str, principal: Principal) -> Principal:
        """``principal`` if it may call ``method``: internal callers may call anything, an API key
        needs the method's scope (:func:`~coachforge_shared.auth.grpc_scope`)."""
        if not principal.internal:
            principal.require(grpc_scope(method))
        return principal

    def _sync_enter(self, method: str, context: Any) -> object:
        return set_principal(self._allowed(method, self.authenticator.authenticate(*self._headers(context))))

    def _sync_fail(self, method: str, context: Any, err: Exception) -> None:
        code, message, trailing = self._failure(method, err)
        if trailing:
            context.set_trailing_metadata(trailing)
        context.abort(code, message)

    def _sync_unary(self, method: str, inner: Callable[..., Any], client_streams: bool) -> Callable[..., Any]:
        def unary(request: Any, context: Any) -> Any:
            with self._slot(method, context):
                token = None
                request = self._sync_requests(request, client_streams)
                try:
                    token = self._sync_enter(method, context)
                    result = inner(request, context)
                    if getattr(request, "idle", None) is not None:
                        raise request.idle
                    GRPC_REQUESTS.labels(method, "OK").inc()
                    return result
                except grpc.aio.AbortError:
                    raise
                except Exception as err:
                    self._sync_fail(method, context, self._idle_error(request, err))
                finally:
                    if token is not None:
                        reset_principal(token)

        return unary

    def _sync_stream(self, method: str, inner: Callable[..., Any], client_streams: bool) -> Callable[..., Any]:
        def streaming(request: Any, context: Any) -> Iterator[Any]:
            with self._slot(method, context):
                token = None
                request = self._sync_requests(request, client_streams)
                try:
                    token = self._sync_enter(method, context)
                    yield from inner(request, context)
                    if getattr(request, "idle", None) is not None:
                        raise request.idle
                    GRPC_REQUESTS.labels(method, "OK").inc()
                except grpc.aio.AbortError:
                    raise
                except Exception as err:
                    self._sync_fail(method, context, self._idle_error(request, err))
                finally:
                    if token is not None:
                        reset_principal(token)

        return streaming

    # --- async servicers (run on the event loop) ---

    def _async_requests(self, request: Any, client_streams: bool) -> Any:
        if client_streams and self.stream_idle_timeout_s is not None:
            return _IdleLimitedAsyncRequests(request, self.stream_idle_timeout_s)
        return request

    async def _async_enter(self, method: str, context: Any) -> object:
        headers = self._headers(context)
        principal = self.authenticator.authenticate_cached(*headers)
        if principal is None:  # not cached: the database is asked from a worker thread
            principal = await asyncio.to_thread(self.authenticator.authenticate, *headers)
        return set_principal(self._allowed(method, principal))

    async def _async_fail(self, method: str, context: Any, err: Exception) -> None:
        code, message, trailing = self._failure(method, err)
        if trailing:
            context.set_trailing_metadata(trailing)
        await context.abort(code, message)

    def _async_unary(self, method: str, inner: Callable[..., Any], client_streams: bool) -> Callable[..., Any]:
        async def unary(request: Any, context: Any) -> Any:
            token = None
            request = self._async_requests(request, client_streams)
            try:
                token = await self._async_enter(method, context)
                result = await inner(request, context)
                if getattr(request, "idle", None) is not None:
                    raise request.idle
                GRPC_REQUESTS.labels(method, "OK").inc()
                return result
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await self._async_fail(method, context, self._idle_error(request, err))
            finally:
                if token is not None:
                    reset_principal(token)

        return unary

    def _async_stream(self, method: str, inner: Callable[..., Any], client_streams: bool) -> Callable[..., Any]:
        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            token = None
            request = self._async_requests(request, client_streams)
            try:
                token = await self._async_enter(method, context)
                async for reply in inner(request, context):
                    yield reply
                if getattr(request, "idle", None) is not None:
                    raise request.idle
                GRPC_REQUESTS.labels(method, "OK").inc()
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await self._async_fail(method, context, self._idle_error(request, err))
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
    max_workers: int = DEFAULT_MAX_WORKERS,
    *,
    method_concurrency: int | None = None,
    stream_idle_timeout_s: float | None = DEFAULT_STREAM_IDLE_TIMEOUT_S,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A ``grpc.aio`` server (not yet started; build it inside the event loop that will run it)
    with health, reflection and the interceptor. Servicers with plain methods run in a pool of
    ``max_workers`` threads, ``async def`` ones on the loop (health checks too: they answer while
    the pool is busy). One plain method may have ``method_concurrency`` calls in progress
    (default: half the pool, at least one); a request stream idle for ``stream_idle_timeout_s``
    ends the call (``None``: never)."""
    limit = method_concurrency if method_concurrency is not None else max(1, max_workers // 2)
    server = grpc.aio.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[ErrorAndAuthInterceptor(authenticator, method_concurrency=limit,
                                              stream_idle_timeout_s=stream_idle_timeout_s)],
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
                 address: str, max_workers: int = DEFAULT_MAX_WORKERS, *, method_concurrency: int | None = None,
                 stream_idle_timeout_s: float | None = DEFAULT_STREAM_IDLE_TIMEOUT_S) -> None:
        self._args = (list(registrations), authenticator, address, max_workers)
        self._method_concurrency, self._stream_idle_timeout_s = method_concurrency, stream_idle_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True)
        self.server: grpc.aio.Server | None = None

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> GrpcServerThread:
        self._thread.start()

        async def start() -> None:
            regs, authenticator, address, max_workers = self._args
            self.server, health_servicer = build_server(
                regs, authenticator, address, max_workers, method_concurrency=self._method_concurrency,
                stream_idle_timeout_s=self._stream_idle_timeout_s)
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


class _CallDetails(namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                                "compression")), grpc.ClientCallDetails):  # type: ignore[misc]
    pass


class DefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
                      grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Gives a call made without a timeout one: ``per_method[method]`` when listed (full method
    names, ``/package.Service/Method``), else ``timeout_s``. Without it, a call to a service that
    hangs would hold its caller (and the caller's own caller) for ever. A call's own timeout wins."""

    def __init__(self, timeout_s: float, per_method: Mapping[str, float] | None = None) -> None:
        self.timeout_s = timeout_s
        self.per_method = dict(per_method or {})

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if details.timeout is not None:
            return details
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        return _CallDetails(details.method, self.per_method.get(method, self.timeout_s), details.metadata,
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                               request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                               request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                                request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


class InternalChannel:
    """A channel to another service that calls on behalf of a tenant with the internal token.

    ``channel`` (what stubs are built on) gives every call a deadline: the caller's ``timeout``,
    else ``method_timeouts[method]``, else ``default_timeout_s`` (see :class:`DefaultDeadline`).
    Long streaming calls pass their own timeout where they are made."""

    def __init__(self, target: str, internal_token: str, *, default_timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S,
                 method_timeouts: Mapping[str, float] | None = None) -> None:
        self.target = target
        self.internal_token = internal_token
        self.default_timeout_s = default_timeout_s
        self._raw = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self.channel = grpc.intercept_channel(self._raw, DefaultDeadline(default_timeout_s, method_timeouts))

    def metadata(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        return ((INTERNAL_HEADER, self.internal_token), (TENANT_HEADER, tenant_id))

    def wait_ready(self, timeout: float = 60) -> None:
        grpc.channel_ready_future(self._raw).result(timeout=timeout)

    def close(self) -> None:
        self._raw.close()


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
