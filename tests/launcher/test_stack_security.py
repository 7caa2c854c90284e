"""The running all-in-one stack, probed from outside as an attacker would: metrics, the engine and
the internal token are not reachable through the public port; keys and scopes hold end to end."""

from __future__ import annotations

import secrets
import shlex

import httpx
import pytest

from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.auth import INTERNAL_HEADER, TENANT_HEADER

pytestmark = pytest.mark.stack


def _engine(stack) -> str:  # type: ignore[no-untyped-def]
    conf = (stack.data_dir / "supervisord.conf").read_text()
    section = next(s for s in conf.split("[program:") if s.startswith("engine]"))
    args = shlex.split(next(line for line in section.splitlines() if line.startswith("command=")).split("=", 1)[1])
    return f"http://{args[args.index('--host') + 1]}:{args[args.index('--port') + 1]}"


def test_internals_are_closed(stack) -> None:  # type: ignore[no-untyped-def]
    root = stack.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/metrics").status_code == 404  # not on the API port
    assert "coachforge_http_request_duration_seconds" in httpx.get(stack.metrics_url).text

    engine = _engine(stack)
    assert httpx.get(f"{engine}/v1/models").status_code == 401  # the engine wants its key
    assert httpx.post(f"{engine}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/etc"}).status_code \
        == 401
    assert httpx.get(f"{engine}/v1/models", headers={"Authorization": f"Bearer {stack.api_key}"}).status_code == 401
    keyed = httpx.get(f"{engine}/v1/models", headers={"Authorization": f"Bearer {stack.engine_api_key}"})
    assert keyed.status_code == 200 and BASE_MODEL_ID in {m["id"] for m in keyed.json()["data"]}

    # The internal token is for the gRPC listener; the REST port ignores it.
    r = httpx.get(f"{root}/v1/models", headers={INTERNAL_HEADER: stack.internal_token, TENANT_HEADER: "default"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    for headers in ({"Authorization": b"Bearer \xff\xfe"}, {INTERNAL_HEADER: b"\xc3\xa9t\xc3\xa9"},
                    {"Authorization": b"Bearer " + b"x" * 8000}):
        r = httpx.get(f"{root}/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_keys_and_scopes_end_to_end(stack) -> None:  # type: ignore[no-untyped-def]
    root = stack.base_url.removesuffix("/v1")
    operator = {"Authorization": f"Bearer {stack.api_key}"}  # the all-in-one key has every scope
    tenant = f"sec-{secrets.token_hex(4)}"
    assert httpx.post(f"{root}/v1/tenants", headers=operator, json={"id": tenant}).status_code == 200
    made = httpx.post(f"{root}/v1/keys", headers=operator,
                      json={"tenant": tenant, "name": "reader", "scopes": ["read"]}).json()
    reader = {"Authorization": f"Bearer {made['key']}"}

    assert httpx.get(f"{root}/v1/models", headers=reader).status_code == 200
    answer = httpx.post(f"{root}/v1/chat/completions", headers=reader, timeout=300, json={
        "model": BASE_MODEL_ID, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code == 200, answer.text
    for method, path, kwargs in (
            ("POST", "/v1/files", {"files": {"file": ("a.jsonl", b'{"messages": []}\n')},
                                   "data": {"purpose": "fine-tune"}}),
            ("POST", "/v1/fine_tuning/jobs", {"json": {"model": BASE_MODEL_ID, "training_file": "file-x"}}),
            ("POST", "/v1/keys", {"json": {"scopes": ["admin"]}}),
            ("GET", "/v1/keys", {})):
        r = httpx.request(method, f"{root}{path}", headers=reader, **kwargs)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["type"] == "permission_error" and "scope" in r.json()["error"]["message"]

    assert httpx.delete(f"{root}/v1/keys/{made['id']}", headers=operator).status_code == 200
    r = httpx.get(f"{root}/v1/models", headers=reader)  # revoked: refused at once
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
