"""The REST gateway against the running stack (real vLLM engine on CPU, real broker, PostgreSQL):
streaming with the usage chunk, bad bodies as field errors, and an avatar's requests arriving as
daily usage rows at GET /v1/usage."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack


def test_streaming_renames_the_model_and_ends_with_usage(stack, base_avatar: str, avatar_usage) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    root = stack.base_url.removesuffix("/v1")
    avatar = base_avatar
    body = {"model": avatar, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    chunks = []
    with httpx.stream("POST", f"{root}/v1/chat/completions", headers=headers, json=body, timeout=300) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    assert chunks and all(c["model"] == BASE_MODEL_ID for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] > 0

    answer = httpx.post(f"{root}/v1/completions", headers=headers, timeout=300,
                        json={"model": avatar, "prompt": "One sport:", "max_tokens": 3, "temperature": 0}).json()
    assert answer["model"] == BASE_MODEL_ID and answer["usage"]["prompt_tokens"] > 0

    rows = avatar_usage(avatar, 2)
    assert len(rows) == 1 and rows[0]["model"] == BASE_MODEL_ID and rows[0]["messages"] == 2, rows
    assert rows[0]["input_tokens"] > 0 and rows[0]["cost_usd"] > 0


def test_bad_bodies_are_field_errors(stack) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    root = stack.base_url.removesuffix("/v1")
    cases = [
        ("/v1/chat/completions", b"{not json", "body"),
        ("/v1/chat/completions", b"[1, 2]", "body"),
        ("/v1/chat/completions", json.dumps({"model": BASE_MODEL_ID, "messages": []}).encode(), "messages"),
        ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        ("/v1/completions", json.dumps({"model": BASE_MODEL_ID}).encode(), "prompt"),
    ]
    for path, content, param in cases:
        r = httpx.post(f"{root}{path}", headers={**headers, "content-type": "application/json"}, content=content)
        assert r.status_code == 400, (path, content, r.text)
        assert r.json()["error"]["param"] == param
    typed = f"ft:nope-{secrets.token_hex(4)}"
    r = httpx.post(f"{root}/v1/chat/completions", headers=headers,
                   json={"model": typed, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    # What a client typed never becomes a metric label (labels stay bounded).
    metrics = httpx.get(stack.metrics_url).text
    assert typed not in metrics
    assert 'coachforge_inference_requests_total{model="unresolved",outcome="error",tenant="default"}' in metrics
