"""REST latency metric: every request observed once, labelled by route template and status,
streamed answers included, nothing per request in the labels."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from coachforge_shared.errors import NotFound
from coachforge_shared.http import add_metrics_route, install_error_handlers

METRIC = "coachforge_http_request_duration_seconds"


def _count(route: str, method: str, status: str) -> float:
    value = REGISTRY.get_sample_value(f"{METRIC}_count", {"route": route, "method": method, "status": status})
    return value or 0.0


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    add_metrics_route(app)

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
        assert client.get("/metrics").status_code == 200
    after = {key: _count(*key) - count for key, count in before.items()}
    assert after == {("/v1/things/{thing_id}", "GET", "200"): 2, ("/v1/things/{thing_id}", "GET", "404"): 1,
                     ("/v1/stream", "POST", "200"): 1, ("unmatched", "GET", "404"): 1}
    # Raw paths never become labels; /metrics scrapes are not counted.
    routes = {s.labels["route"] for m in REGISTRY.collect() if m.name == METRIC for s in m.samples}
    assert "/v1/things/a" not in routes and "/metrics" not in routes
