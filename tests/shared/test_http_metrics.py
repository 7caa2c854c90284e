"""REST latency metric: every request observed once, labelled by route template and status,
streamed answers included, nothing per request in the labels. The metrics are served on a port of
their own, never by the API app."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from coachforge_shared.errors import NotFound
from coachforge_shared.http import add_request_metrics, install_error_handlers, start_metrics_server

METRIC = "coachforge_http_request_duration_seconds"


def _count(route: str, method: str, status: str) -> float:
    value = REGISTRY.get_sample_value(f"{METRIC}_count", {"route": route, "method": method, "status": status})
    return value or 0.0


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    add_request_metrics(app)

    @app.get("/v1/things/{thing_id}")
    def thing(thing_id: str) -> dict[str, str]:
        if thing_id == "missing":
            raise NotFound("no such thing", param="thing_id")
        return {"id": thing_id}

    @app.post("/v1/stream")
    def stream() -> StreamingResponse:
        def chunks() -> Iterator[bytes]:
            yield from (b"data: 1\n\n", b"data: [DONE]\n\n")
        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_requests_are_observed_by_route_template_and_status() -> None:
    before = {key: _count(*key) for key in [("/v1/things/{thing_id}", "GET", "200"),
                                            ("/v1/things/{thing_id}", "GET", "404"),
                                            ("/v1/stream", "POST", "200"), ("unmatched", "GET", "404")]}
    with TestClient(_app()) as client:
        assert client.get("/v1/things/a").status_code == 200
        assert client.get("/v1/things/b").status_code == 200
        assert client.get("/v1/things/missing").status_code == 404
        assert client.post("/v1/stream").text.endswith("[DONE]\n\n")
        assert client.get("/nowhere").status_code == 404
        assert client.get("/metrics").status_code == 404  # not on the API port
    after = {key: _count(*key) - count for key, count in before.items()}
    assert after == {("/v1/things/{thing_id}", "GET", "200"): 2, ("/v1/things/{thing_id}", "GET", "404"): 1,
                     ("/v1/stream", "POST", "200"): 1, ("unmatched", "GET", "404"): 2}
    # Raw paths never become labels.
    routes = {s.labels["route"] for m in REGISTRY.collect() if m.name == METRIC for s in m.samples}
    assert "/v1/things/a" not in routes and "/metrics" not in routes


def test_metrics_are_served_on_their_own_port() -> None:
    server = start_metrics_server("127.0.0.1", 0)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
        assert METRIC in text and "coachforge_grpc_requests_total" in text
    finally:
        server.stop()
