"""The engine health gauge: a small real HTTP server stands in for the engine's /health (a real
vLLM engine cannot be stopped and restarted inside this test's budget); an engine that does not
answer reads 0 (and leaves the rotation) and a failed call raises a typed Unavailable error."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import REGISTRY

from coachforge_inference.engine import Engine
from coachforge_inference.pool import EnginePool
from coachforge_shared.errors import Unavailable


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _gauge(url: str) -> float | None:
    return REGISTRY.get_sample_value("coachforge_inference_engine_up", {"engine": url})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_engine_up_gauge_follows_health_and_failed_calls(health_server: str) -> None:
    dead_url = f"http://127.0.0.1:{_closed_port()}"

    async def run() -> None:
        assert await Engine(health_server, 5).health() and not await Engine(dead_url, 5).health()
        pool = EnginePool([health_server, dead_url], timeout_s=5, health_interval_s=0)
        try:
            assert await pool.healthy()  # one is up
            assert pool.engine(health_server).up and _gauge(health_server) == 1
            assert not pool.engine(dead_url).up and _gauge(dead_url) == 0

            dead = pool.engine(dead_url)
            dead.up = True
            with pytest.raises(Unavailable):
                await pool.post(dead, "/v1/chat/completions", b"{}")
            assert not dead.up and _gauge(dead_url) == 0
        finally:
            await pool.close()

    asyncio.run(run())
