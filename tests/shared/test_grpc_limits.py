"""What one gRPC method may hold of a server, over a real ``build_server`` server: a per-method
limit on calls in progress, request streams that end when their client goes silent, health checks
that answer while the pool is full, and a deadline on every internal client call."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from coachforge_shared.auth import INTERNAL_HEADER, TENANT_HEADER, Authenticator
from coachforge_shared.db import Database
from coachforge_shared.errors import ERROR_CODE_KEY, TOO_MANY_CALLS, Unavailable, from_rpc_error
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, ServiceRegistration

TOKEN = "internal-test-token"
SERVICE = "cf.test.Probe"
SLOW, QUICK, UPLOAD, UPLOAD_ASYNC = (f"/{SERVICE}/{name}" for name in ("Slow", "Quick", "Upload", "UploadAsync"))
META = ((INTERNAL_HEADER, TOKEN), (TENANT_HEADER, "acme"))


@dataclass
class Probe:
    """A servicer of raw-bytes methods: ``Slow`` waits for ``gate``; ``Upload``/``UploadAsync``
    count the messages of a client stream (plain, in the thread pool / ``async``, on the loop)."""

    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    remaining: list[float | None] = field(default_factory=list)
    uploads_ended: list[str] = field(default_factory=list)

    def slow(self, request: bytes, context: Any) -> bytes:
        self.remaining.append(context.time_remaining())
        self.entered.release()
        self.gate.wait(30)
        return b"slow"

    def quick(self, request: bytes, context: Any) -> bytes:
        return b"quick"

    def upload(self, requests: Iterator[bytes], context: Any) -> bytes:
        self.entered.release()
        try:
            count = sum(1 for _ in requests)
        except Exception as err:
            self.uploads_ended.append(type(err).__name__)
            raise
        return str(count).encode()

    async def upload_async(self, requests: Any, context: Any) -> bytes:
        count = 0
        async for _ in requests:
            count += 1
        return str(count).encode()

    def registration(self) -> ServiceRegistration:
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Quick": grpc.unary_unary_rpc_method_handler(self.quick),
            "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
            "UploadAsync": grpc.stream_unary_rpc_method_handler(self.upload_async),
        })
        return ServiceRegistration(SERVICE, self, lambda _servicer, server: server.add_generic_rpc_handlers((handler,)))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def probe() -> Iterator[Probe]:
    p = Probe()
    yield p
    p.gate.set()  # whatever the test did, no handler stays blocked


def _serve(probe: Probe, db: Database, **limits: Any) -> tuple[GrpcServerThread, str]:
    target = f"127.0.0.1:{_port()}"
    server = GrpcServerThread([probe.registration()], Authenticator(db, internal_token=TOKEN), target,
                              **limits).start()
    return server, target


def _count(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("coachforge_grpc_requests_total", {"method": method, "code": code}) or 0.0


def _stalled(release: threading.Event) -> Iterator[bytes]:
    """A client stream that sends one message, then nothing until ``release``."""
    yield b"first"
    release.wait(30)


def test_a_method_over_its_limit_is_refused_at_once_while_its_calls_in_progress_finish(
        probe: Probe, db: Database) -> None:
    server, target = _serve(probe, db, max_workers=4, method_concurrency=2)
    refused_before = _count(SLOW, "RESOURCE_EXHAUSTED")
    try:
        with grpc.insecure_channel(target) as channel:
            slow, quick = channel.unary_unary(SLOW), channel.unary_unary(QUICK)
            running = [slow.future(b"", metadata=META, timeout=30) for _ in range(2)]
            for _ in running:
                assert probe.entered.acquire(timeout=10)

            with pytest.raises(grpc.RpcError) as refused:
                slow(b"", metadata=META, timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 2 at once" in (refused.value.details() or "")
            assert (ERROR_CODE_KEY, TOO_MANY_CALLS) in tuple(refused.value.trailing_metadata() or ())
            typed = from_rpc_error(refused.value)  # a calling service answers 503, not 413
            assert isinstance(typed, Unavailable) and typed.retry_after_s is not None
            assert _count(SLOW, "RESOURCE_EXHAUSTED") == refused_before + 1

            assert quick(b"", metadata=META, timeout=10) == b"quick"  # other methods still have threads
            probe.gate.set()
            assert [call.result(timeout=10) for call in running] == [b"slow", b"slow"]
            assert slow(b"", metadata=META, timeout=10) == b"slow"  # the slots were given back
    finally:
        server.stop()


def test_health_answers_while_slow_calls_fill_the_pool(probe: Probe, db: Database) -> None:
    server, target = _serve(probe, db, max_workers=2, method_concurrency=2)
    try:
        with grpc.insecure_channel(target) as channel:
            slow = channel.unary_unary(SLOW)
            running = [slow.future(b"", metadata=META, timeout=30) for _ in range(2)]
            for _ in running:
                assert probe.entered.acquire(timeout=10)  # both threads of the pool are now held
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            probe.gate.set()
            assert [call.result(timeout=10) for call in running] == [b"slow", b"slow"]
    finally:
        server.stop()


def test_a_stalled_client_stream_is_ended_and_its_thread_freed(probe: Probe, db: Database) -> None:
    server, target = _serve(probe, db, max_workers=2, method_concurrency=2, stream_idle_timeout_s=0.5)
    release = threading.Event()
    try:
        with grpc.insecure_channel(target) as channel:
            upload = channel.stream_unary(UPLOAD)
            # Two stalled uploads hold both threads of the pool until they are ended.
            calls = [upload.future(_stalled(release), metadata=META, timeout=30) for _ in range(2)]
            for call in calls:
                with pytest.raises(grpc.RpcError) as ended:
                    call.result(timeout=20)
                assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "No message for 0.5 s" in (ended.value.details() or "")
            assert probe.uploads_ended == ["StreamIdle", "StreamIdle"]
            assert _count(UPLOAD, "DEADLINE_EXCEEDED") >= 2
            # The threads are free again: a plain method is served, and an upload that keeps
            # sending is not cut short.
            assert channel.unary_unary(QUICK)(b"", metadata=META, timeout=10) == b"quick"
            assert upload(iter([b"a", b"b", b"c"]), metadata=META, timeout=10) == b"3"
    finally:
        release.set()
        server.stop()


def test_a_stalled_client_stream_of_an_async_method_is_ended(probe: Probe, db: Database) -> None:
    server, target = _serve(probe, db, stream_idle_timeout_s=0.5)
    release = threading.Event()
    try:
        with grpc.insecure_channel(target) as channel:
            upload = channel.stream_unary(UPLOAD_ASYNC)
            with pytest.raises(grpc.RpcError) as ended:
                upload(_stalled(release), metadata=META, timeout=20)
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "No message for 0.5 s" in (ended.value.details() or "")
            assert upload(iter([b"a", b"b"]), metadata=META, timeout=10) == b"2"
    finally:
        release.set()
        server.stop()


def test_internal_calls_without_a_timeout_get_the_default_deadline(probe: Probe, db: Database) -> None:
    server, target = _serve(probe, db, max_workers=4)
    probe.gate.set()  # Slow answers at once: the handler notes the deadline it was given
    short = InternalChannel(target, TOKEN, default_timeout_s=0.3)
    overridden = InternalChannel(target, TOKEN, default_timeout_s=0.3, method_timeouts={SLOW: 150})
    try:
        short.channel.unary_unary(SLOW)(b"", metadata=short.metadata("acme"))
        short.channel.unary_unary(SLOW)(b"", metadata=short.metadata("acme"), timeout=50)
        overridden.channel.unary_unary(SLOW)(b"", metadata=overridden.metadata("acme"))
        with grpc.insecure_channel(target) as plain:  # no interceptor: no deadline at all
            plain.unary_unary(SLOW)(b"", metadata=META)
        default, explicit, per_method, none = probe.remaining
        # (the deadline a server sees is the caller's, give or take clock rounding)
        assert default is not None and 0 < default < 5
        assert explicit is not None and 5 < explicit < 100
        assert per_method is not None and 100 < per_method < 200
        assert none is None

        probe.gate.clear()  # now Slow waits: the default deadline ends the call
        with pytest.raises(grpc.RpcError) as late:
            short.channel.unary_unary(SLOW)(b"", metadata=short.metadata("acme"))
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        short.wait_ready(timeout=5)  # the intercepted channel keeps the plain channel's API
    finally:
        probe.gate.set()
        short.close()
        overridden.close()
        server.stop()
