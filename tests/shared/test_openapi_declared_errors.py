"""The OpenAPI schema declares the errors the platform really answers (coachforge_shared.openapi):
400 and OpenAI's error body instead of FastAPI's 422, 401/403 where a key is needed, 404 for path
ids, 409 for changes, 413 for bodies, 503 everywhere; and answers given over HTTP match it."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from coachforge_shared import admin
from coachforge_shared.auth import READ, Authenticator, create_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import Conflict, NotFound
from coachforge_shared.http import CurrentPrincipal, install_error_handlers, needs_scope
from coachforge_shared.openapi import ERROR_RESPONSES, ERROR_SCHEMA, install_openapi


class ThingIn(BaseModel):
    name: str = Field(min_length=1, max_length=10)


def _app(db: Database) -> FastAPI:
    app = FastAPI()
    app.state.authenticator = Authenticator(db, internal_token="internal-secret")
    install_error_handlers(app)
    install_openapi(app)

    @app.get("/things/{thing_id}")
    def get_thing(principal: CurrentPrincipal, thing_id: str) -> dict[str, str]:
        raise NotFound(f"No thing {thing_id}", param="thing_id")

    @app.post("/things")
    def create_thing(principal: CurrentPrincipal, body: ThingIn) -> dict[str, str]:
        raise Conflict(f"{body.name} exists", param="name")

    @app.post("/things/{thing_id}/preview", openapi_extra=needs_scope(READ))
    def preview(principal: CurrentPrincipal, thing_id: str, body: ThingIn) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/version")
    def version() -> dict[str, str]:
        return {"version": "1"}

    return app


def _statuses(schema: dict[str, Any], method: str, path: str) -> set[str]:
    return set(schema["paths"][path][method]["responses"])


@pytest.fixture
def client(db: Database) -> TestClient:
    return TestClient(_app(db))


def test_operations_declare_the_platform_errors_and_no_422(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    text = json.dumps(schema)
    assert '"422"' not in text and "HTTPValidationError" not in text and "ValidationError" not in text
    assert _statuses(schema, "get", "/things/{thing_id}") == {"200", "400", "401", "403", "404", "503"}
    assert _statuses(schema, "post", "/things") == {"200", "400", "401", "403", "409", "413", "503"}
    # Marked as needing only the read scope: it changes nothing, so it cannot conflict.
    assert _statuses(schema, "post", "/things/{thing_id}/preview") == {"200", "400", "401", "403", "404", "413",
                                                                       "503"}
    assert _statuses(schema, "get", "/version") == {"200", "503"}  # no input, no key

    assert schema["paths"]["/things"]["post"]["security"] == [{"ApiKey": []}]
    assert "security" not in schema["paths"]["/version"]["get"]
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert schema["paths"]["/things/{thing_id}"]["get"]["responses"]["404"] == {
        "$ref": "#/components/responses/NotFound"}
    for name, _, _ in ERROR_RESPONSES.values():
        content = schema["components"]["responses"][name]["content"]
        assert content == {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}
    assert set(schema["components"]["responses"]["RateLimited"]["headers"]) >= {
        "Retry-After", "x-ratelimit-remaining-requests", "x-ratelimit-reset-tokens"}
    assert client.get("/openapi.json").json() == schema  # built once, served the same


def test_error_answers_match_the_declared_error_body(client: TestClient, db: Database) -> None:
    schema = client.get("/openapi.json").json()
    error_body = {**schema["components"]["schemas"][ERROR_SCHEMA], "$defs": {}}
    create_tenant(db, "acme")
    reader = {"Authorization": f"Bearer {create_api_key(db, 'acme', scopes=['read'])[1]}"}
    writer = {"Authorization": f"Bearer {create_api_key(db, 'acme', scopes=['read', 'write'])[1]}"}
    answers = [
        ("get", "/things/{thing_id}", client.get("/things/x")),  # no key
        ("get", "/things/{thing_id}", client.get("/things/x", headers=reader)),
        ("post", "/things", client.post("/things", headers=reader, json={"name": "a"})),  # read scope only
        ("post", "/things", client.post("/things", headers=writer, json={"name": ""})),
        ("post", "/things", client.post("/things", headers=writer, content=b"{not json")),
        ("post", "/things", client.post("/things", headers=writer, json={"name": "a"})),
        ("post", "/things/{thing_id}/preview", client.post("/things/x/preview", headers=reader, json={})),
    ]
    seen = set()
    for method, path, response in answers:
        assert str(response.status_code) in _statuses(schema, method, path), (path, response.status_code)
        assert response.headers["content-type"] == "application/json"
        jsonschema.validate(response.json(), error_body)
        seen.add(response.status_code)
    assert seen == {400, 401, 403, 404, 409}
    bad = client.post("/things", headers=writer, json={"name": "far too long a name"}).json()["error"]
    assert bad["param"] == "name" and bad["type"] == "invalid_request_error"


def _platform_app() -> FastAPI:
    """Every service's REST routers, as the runtime mounts them (nothing behind them is started)."""
    from coachforge_coach import api as coach
    from coachforge_dataset import api as dataset
    from coachforge_evaluator import api as evaluator
    from coachforge_inference import api as inference
    from coachforge_registry import api as registry
    from coachforge_trainer import api as trainer
    from coachforge_webhooks import api as webhooks

    app = FastAPI()
    install_error_handlers(app)
    install_openapi(app)
    routers: list[APIRouter] = [admin.router, dataset.router, dataset.datasets, trainer.router, inference.router,
                                registry.router, coach.router, evaluator.router, evaluator.comparisons_router,
                                webhooks.router]
    for router in routers:
        app.include_router(router)
    return app


def test_every_platform_operation_tells_its_errors_and_content_types() -> None:
    schema = _platform_app().openapi()
    operations = [(method, path, op) for path, item in schema["paths"].items() for method, op in item.items()]
    assert len(operations) > 90
    for method, path, op in operations:
        statuses = set(op["responses"])
        assert "422" not in statuses and {"401", "403", "503"} <= statuses, (method, path, statuses)
        assert op["security"] == [{"ApiKey": []}]
        if "{" in path:
            assert "404" in statuses, (method, path)
        if "requestBody" in op:
            assert {"400", "413"} <= statuses, (method, path)

    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "404", "413", "429"} <= set(chat["responses"])
    assert chat["requestBody"]["content"]["application/json"]["schema"]["required"] == ["model", "messages"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert schema["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "required"] == ["model", "prompt"]
    assert "429" not in schema["paths"]["/v1/chat/completions"]["get"]["responses"]
    assert "404" in schema["paths"]["/v1/evals"]["get"]["responses"]  # its ``after`` cursor names an eval
    assert "404" not in schema["paths"]["/v1/models"]["get"]["responses"]
    assert "409" not in chat["responses"]  # answering changes nothing
    assert "409" in schema["paths"]["/v1/fine_tuning/jobs/{job_id}/cancel"]["post"]["responses"]

    assert "204" in schema["paths"]["/v1/comparisons/{comparison_id}/next"]["get"]["responses"]
    content = schema["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/octet-stream"}
    report = schema["paths"]["/v1/files/{file_id}/report"]["get"]["responses"]["200"]["content"]
    assert set(report) == {"application/json", "application/jsonl"}
    export = schema["paths"]["/v1/datasets/{version_id}/export"]["get"]["responses"]["200"]["content"]
    assert set(export) == {"application/jsonl"}
