"""Limits on the running stack, tried as an abusive client would: a tenant over its requests per
minute gets OpenAI's 429 (the official SDK's RateLimitError) with Retry-After and x-ratelimit-*
headers, over REST and gRPC; one over its daily token quota gets insufficient_quota; an oversized
chat body, a deeply nested one, too many choices, max_tokens beyond the context and a multi-gigabyte
upload announced in Content-Length are refused with clear 4xx errors, never a 500."""

from __future__ import annotations

import json
import re
import secrets
import socket
from urllib.parse import urlsplit

import grpc
import httpx
import openai
import pytest
from openai import OpenAI

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.auth import create_api_key, create_tenant
from coachforge_shared.db import Database

pytestmark = pytest.mark.stack

HELLO = [{"role": "user", "content": "Say hi."}]


def _tenant(stack, prefix: str, limits: dict[str, object] | None = None) -> str:  # type: ignore[no-untyped-def]
    """A new tenant with a read+write key (returned), its limits set by the operator over REST."""
    tenant = f"{prefix}-{secrets.token_hex(4)}"
    db = Database(stack.database_url)
    try:
        create_tenant(db, tenant)
        _, key = create_api_key(db, tenant, name="limits test")
    finally:
        db.dispose()
    if limits:
        r = httpx.post(f"{stack.base_url}/tenants/{tenant}/limits", json=limits, timeout=30,
                       headers={"Authorization": f"Bearer {stack.api_key}"})
        assert r.status_code == 200, r.text
        assert all(r.json()[k] == v for k, v in limits.items())
    return key


def test_requests_per_minute_over_rest_and_grpc(stack) -> None:  # type: ignore[no-untyped-def]
    key = _tenant(stack, "rpm", {"max_requests_per_1_minute": 2})
    client = OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(model=BASE_MODEL_ID, messages=HELLO, max_tokens=2)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert raw.parse().choices[0].message.content is not None
    auth = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.ChatCompletionRequest(
            model=BASE_MODEL_ID, messages=[inference_pb2.ChatMessage(role="user", content="Hi.")], max_tokens=2)
        _, call = stub.CreateChatCompletion.with_call(request, metadata=auth)
        assert dict(call.initial_metadata())["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(grpc.RpcError) as refused_grpc:
            stub.CreateChatCompletion(request, metadata=auth)
    assert refused_grpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(refused_grpc.value.trailing_metadata())
    assert trailers["x-error-code"] == "rate_limit_exceeded" and int(trailers["x-retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=BASE_MODEL_ID, messages=HELLO, max_tokens=2)
    response = refused.value.response
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "Limit 2" in error["message"]


def test_daily_token_quota(stack) -> None:  # type: ignore[no-untyped-def]
    key = _tenant(stack, "quota", {"max_tokens_per_1_day": 10})
    client = OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=120)
    first = client.chat.completions.create(model=BASE_MODEL_ID, messages=HELLO, max_tokens=4)
    assert first.usage is not None and first.usage.total_tokens >= 10
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=BASE_MODEL_ID, messages=HELLO, max_tokens=4)
    error = refused.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 86_400


def test_abusive_chat_requests_get_clear_errors(stack) -> None:  # type: ignore[no-untyped-def]
    key = _tenant(stack, "abuse")
    http = httpx.Client(base_url=stack.base_url, timeout=120, headers={"Authorization": f"Bearer {key}"})

    def refused(status: int, content: bytes) -> dict[str, object]:
        r = http.post("/chat/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        error: dict[str, object] = r.json()["error"]
        return error

    chat = {"model": BASE_MODEL_ID, "messages": HELLO}
    huge = json.dumps({**chat, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}).encode()
    assert refused(413, huge)["code"] == "request_too_large"
    nested = json.dumps({**chat, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": json.loads("[" * 100 + "]" * 100)}}]}).encode()
    assert refused(400, nested)["code"] == "nesting_too_deep"
    assert refused(400, b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")["param"] == "body"
    assert refused(400, json.dumps({**chat, "n": 1000}).encode())["param"] == "n"
    assert refused(400, json.dumps({**chat, "max_tokens": -5}).encode())["param"] == "max_tokens"
    too_long = refused(400, json.dumps({**chat, "max_tokens": 10**9}).encode())
    assert "max_model_len=1024" in str(too_long["message"])  # the engine names the model's context length


def test_an_announced_multi_gigabyte_upload_is_refused_before_its_body(stack) -> None:  # type: ignore[no-untyped-def]
    key = _tenant(stack, "upload")
    url = urlsplit(stack.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        conn.sendall(f"POST {url.path}/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000000\r\n\r\n".encode())
        answer = conn.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        while length is not None and len(body) < int(length[1]):  # the body may come in a later packet
            more = conn.recv(65536)
            if not more:
                break
            body += more
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(body)["error"]["code"] == "request_too_large"
