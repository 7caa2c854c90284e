"""The OpenAPI schema as the platform really answers: :func:`install_openapi` replaces a FastAPI
app's ``app.openapi`` with one that post-processes FastAPI's schema once, on first use.

FastAPI declares a 422 ``HTTPValidationError`` on every operation that takes input; this platform
answers invalid input with a 400 and every error with OpenAI's body
(:func:`coachforge_shared.http.install_error_handlers`). The schema therefore gets:

- an ``ErrorResponse`` component (``{"error": {"message", "type", "param", "code"}}``) and one
  reusable response per error status, each pointing at it;
- per operation, the error statuses it can answer, by a general rule: 400 where it takes input
  (parameters or a body), 401 and 403 where it needs an API key (then also declared as its
  security requirement, :data:`API_KEY`), 404 where its path or its ``after`` cursor names a
  resource, 409 where it changes state (not a GET, and not marked as needing only the ``read``
  scope), 413 where it takes a body, 503 everywhere (the database, another service or an engine
  can be away); plus :data:`OVERRIDES` for what the rule cannot see (404 for a resource named in
  the body, 429 on the rate-limited inference routes, request bodies the inference routes parse
  themselves, streamed content types);
- no 422 and no ``HTTPValidationError``/``ValidationError`` components.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from coachforge_shared.auth import READ, WRITE
from coachforge_shared.http import SCOPE_KEY, get_principal

ERROR_SCHEMA = "ErrorResponse"
"""Name of the error body's component under ``components.schemas``."""
API_KEY = "ApiKey"
"""Name of the security scheme (``Authorization: Bearer <API key>``) under ``components.securitySchemes``."""

_NULLABLE_STRING: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}]}

ERROR_BODY: dict[str, Any] = {
    "title": ERROR_SCHEMA,
    "description": "Every error answer of the API (OpenAI's error body).",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "description": "What went wrong, for a person."},
                "type": {"type": "string", "description": "The kind of error: invalid_request_error, "
                         "authentication_error, permission_error, server_error, requests, tokens, "
                         "insufficient_quota."},
                "param": {**_NULLABLE_STRING, "description": "The field, parameter or line at fault."},
                "code": {**_NULLABLE_STRING, "description": "A stable machine code."},
            },
        },
    },
}

_RETRY_AFTER = {"Retry-After": {"description": "Seconds after which trying again may succeed.",
                                "schema": {"type": "integer"}}}
_RATE_LIMIT_HEADERS = {
    f"x-ratelimit-{what}-{unit}": {"description": description, "schema": {"type": "string"}}
    for unit in ("requests", "tokens")
    for what, description in (("limit", f"The tenant's {unit} per minute."),
                              ("remaining", f"The {unit} left in the current minute."),
                              ("reset", f"Time until the {unit} limit is full again (e.g. 1s, 6m0s)."))
}

ERROR_RESPONSES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "400": ("BadRequest", "Invalid input; `param` names the field, parameter or line.", {}),
    "401": ("Unauthorized", "No API key, or an unknown, revoked or malformed one.", {}),
    "403": ("Forbidden", "The API key lacks the scope this operation needs, or the caller may not act "
                         "on that tenant.", {}),
    "404": ("NotFound", "No such resource for the caller's tenant.", {}),
    "409": ("Conflict", "It exists already, or its state does not allow this now.", {}),
    "413": ("PayloadTooLarge", "The request body is larger than the limit.", {}),
    "429": ("RateLimited", "Over the tenant's request or token limits, or its daily quota is spent.",
            {**_RETRY_AFTER, **_RATE_LIMIT_HEADERS}),
    "503": ("Unavailable", "Something the call needs (the database, another service, an engine) is "
                           "away for now.", _RETRY_AFTER),
}
"""Status → (component name under ``components.responses``, description, response headers)."""

# --- what the general rule cannot see -------------------------------------------------------------

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
        "name": {"type": "string"},
    },
}
_MAX_TOKENS = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}
_SAMPLING: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1,
              "description": "A base model, a fine-tuned model (ft:…) or an avatar of the tenant."},
    "max_tokens": _MAX_TOKENS,
    "n": {"type": "integer", "minimum": 1, "description": "Choices to generate (at most the deployment's max_n)."},
    "stream": {"type": "boolean", "description": "Answer with server-sent events."},
    "stream_options": {"type": "object"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "seed": {"type": "integer"},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
}
CHAT_COMPLETION_REQUEST: dict[str, Any] = {
    "title": "ChatCompletionRequest",
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        **_SAMPLING,
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "max_completion_tokens": _MAX_TOKENS,
        "store": {"type": "boolean", "description": "Keep the completion (GET /v1/chat/completions/{id})."},
        "metadata": {"type": "object", "maxProperties": 16,
                     "additionalProperties": {"type": "string", "maxLength": 512}},
        "response_format": {"type": "object"},
    },
    "additionalProperties": True,
}
COMPLETION_REQUEST: dict[str, Any] = {
    "title": "CompletionRequest",
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {**_SAMPLING,
                   "prompt": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}},
    "additionalProperties": True,
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


SERVER_SENT_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
                   "retry": {"type": "integer", "minimum": 0}},
}
"""One event of a ``text/event-stream`` answer (before OpenAPI 3.2, a stream's ``schema`` describes each event)."""
_STREAMED = {"200": {"content": {"text/event-stream": {"schema": SERVER_SENT_EVENT}}}}

OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    # The inference routes parse their JSON body themselves (one pass, no pydantic over arbitrary dicts):
    # their body is declared here, and answers are streamed as server-sent events with "stream": true.
    ("post", "/v1/chat/completions"): {"requestBody": _json_body(CHAT_COMPLETION_REQUEST),
                                       "responses": {**_STREAMED, "404": {}, "429": {}}},
    ("post", "/v1/completions"): {"requestBody": _json_body(COMPLETION_REQUEST),
                                  "responses": {**_STREAMED, "404": {}, "429": {}}},
}
"""Deep-merged into the operation ``(method, path)``; an empty response object (``"404": {}``) adds
that error status with its shared response."""


# --- the post-processing --------------------------------------------------------------------------

def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    stack = [dependant]
    while stack:
        current = stack.pop()
        if current.call is call:
            return True
        stack.extend(current.dependencies)
    return False


def _merge(target: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _error_statuses(method: str, operation: dict[str, Any], authenticated: bool) -> set[str]:
    """The general rule (see the module)."""
    statuses = {"503"}
    if operation.get("parameters") or "requestBody" in operation:
        statuses.add("400")
    if "requestBody" in operation:
        statuses.add("413")
    if authenticated:
        statuses |= {"401", "403"}
    if method not in ("get", "head") and (operation.get(SCOPE_KEY) or WRITE) != READ:
        statuses.add("409")
    if any(p.get("in") == "path" or (p.get("in"), p.get("name")) == ("query", "after")
           for p in operation.get("parameters", ())):
        statuses.add("404")  # a path id, or a list's cursor, naming a resource that is not there
    return statuses


def describe_errors(schema: dict[str, Any], routes: Iterable[Any],
                    overrides: Mapping[tuple[str, str], Mapping[str, Any]] = OVERRIDES) -> dict[str, Any]:
    """``schema`` (FastAPI's OpenAPI for ``routes``), changed in place and returned: the error
    statuses of every operation declared with the shared ``ErrorResponse``, 422 gone (see the module)."""
    authenticated = {(method.lower(), route.path_format)
                     for route in routes if isinstance(route, APIRoute) and _depends_on(route.dependant, get_principal)
                     for method in route.methods}
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})[ERROR_SCHEMA] = copy.deepcopy(ERROR_BODY)
    responses = components.setdefault("responses", {})
    for name, description, headers in ERROR_RESPONSES.values():
        error_body = {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}
        responses[name] = {"description": description, "content": {"application/json": error_body}}
        if headers:
            responses[name]["headers"] = copy.deepcopy(headers)
    if authenticated:
        components.setdefault("securitySchemes", {})[API_KEY] = {
            "type": "http", "scheme": "bearer",
            "description": "An API key (cf-sk-…) with the scope the operation needs: read for GET, write for "
                           "other methods unless the operation's x-coachforge-scope says otherwise, admin for "
                           "tenants and keys."}

    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            extra = overrides.get((method, path), {})
            _merge(operation, {k: v for k, v in extra.items() if k != "responses"})
            operation["responses"].pop("422", None)
            is_authenticated = (method, path) in authenticated
            statuses = _error_statuses(method, operation, is_authenticated)
            statuses |= {s for s, v in extra.get("responses", {}).items() if s in ERROR_RESPONSES and not v}
            for status in sorted(statuses):
                shared = ERROR_RESPONSES[status][0]
                operation["responses"].setdefault(status, {"$ref": f"#/components/responses/{shared}"})
            _merge(operation["responses"], {s: v for s, v in extra.get("responses", {}).items() if v})
            if is_authenticated:
                operation.setdefault("security", [{API_KEY: []}])

    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, and what it is made of
        if f'"#/components/schemas/{name}"' not in json.dumps([schema.get("paths"), components]):
            components["schemas"].pop(name, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Make ``app``'s ``/openapi.json`` (and its docs) declare the errors it really answers."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe_errors(copy.deepcopy(build()), app.routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
