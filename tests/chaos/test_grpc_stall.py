"""Stalled gRPC upload streams on the stack's gRPC port: clients that open ``UploadFileStream``, send
one message and go silent, as many as the method may hold at once (the next one is refused with
RESOURCE_EXHAUSTED). While they hang, the health check answers SERVING, other calls and the REST
readiness check are served, and every stalled stream is ended by the server after the idle timeout
the stack runs with (``COACHFORGE_GRPC_STREAM_IDLE_TIMEOUT_S``), its thread free again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge_shared.grpc_server import DEFAULT_MAX_WORKERS

pytestmark = pytest.mark.stack


def test_stalled_streams_starve_nothing_and_are_ended(stack: Any, chaos: Any) -> None:
    idle_timeout_s = float(stack.env["COACHFORGE_GRPC_STREAM_IDLE_TIMEOUT_S"])
    limit = DEFAULT_MAX_WORKERS // 2  # the default per-method limit: half the pool
    auth = (("authorization", f"Bearer {stack.api_key}"),)
    release = threading.Event()

    def stalled() -> Iterator[dataset_pb2.UploadFileChunk]:
        yield dataset_pb2.UploadFileChunk(filename="stalled.jsonl", purpose="fine-tune", data=b'{"messages": [')
        release.wait()  # the client goes silent (it never finishes its file)

    with grpc.insecure_channel(stack.grpc_target) as channel, ThreadPoolExecutor(limit + 1) as pool:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        opened = time.monotonic()
        uploads = [pool.submit(_outcome, stub, stalled, auth) for _ in range(limit + 1)]
        try:
            # One call more than the method may hold is refused at once; the others hang.
            deadline = time.monotonic() + 30
            while not any(u.done() for u in uploads):
                assert time.monotonic() < deadline, "no stalled upload was refused"
                time.sleep(0.05)
            refused = [u.result() for u in uploads if u.done()]
            assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED], refused
            # While they hang: health SERVING, other calls served, the REST readiness check green.
            checks = served = 0
            while time.monotonic() - opened < idle_timeout_s / 2:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING
                checks += 1
                stub.ListFiles(dataset_pb2.ListFilesRequest(purpose="evals"), metadata=auth, timeout=5)
                served += 1
                assert chaos.ready()
                time.sleep(0.2)
            assert sum(not u.done() for u in uploads) == limit
            # The server ends every stalled stream once it was silent for the idle timeout.
            outcomes = [u.result(timeout=idle_timeout_s * 3) for u in uploads]
            ended_after = time.monotonic() - opened
        finally:
            release.set()
        assert sorted(o.name for o in outcomes).count("DEADLINE_EXCEEDED") == limit, outcomes
        # Their threads are free again: a complete upload goes through.
        done = stub.UploadFileStream(iter([dataset_pb2.UploadFileChunk(
            filename="after.jsonl", purpose="fine-tune",
            data=b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n')]),
            metadata=auth, timeout=30)
        assert done.id
    chaos.record("gRPC upload streams stalled", stalled=limit, refused=1, health_checks_served=checks,
                 other_calls_served=served, failed_checks=0, idle_timeout_s=idle_timeout_s,
                 all_ended_after_s=round(ended_after, 1))


def _outcome(stub: Any, messages: Any, auth: Any) -> grpc.StatusCode:
    """How one streamed upload ended (its gRPC status code)."""
    try:
        stub.UploadFileStream(messages(), metadata=auth, timeout=120)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
