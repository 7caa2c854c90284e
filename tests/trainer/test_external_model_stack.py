"""The openai_compatible backend on the running stack with a remote that offers no adapter download:
tenant A's remote is a proxy in front of this platform's OpenAI-compatible API (with tenant B's key)
that answers the model exports API 404, like OpenAI. A's job is trained on the stack as B, succeeds
without an adapter, and its model is registered as an external model; A's chat completions on it
(plain and streamed) go through the proxy to B's model, answer with A's model id, and are billed to A
(``GET /v1/usage``); A's model cannot be exported."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from job_waits import finished, registered
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from remote_tenants import client, tenants_with_remote, training_file
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

TENANT_A, TENANT_B = "external-a", "external-b"
EXPORTS = re.compile(r"/v1/models/.+/exports")
HOP_BY_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}


@dataclass
class Seen:
    """One request the proxy was sent."""

    method: str
    path: str
    authorization: str | None
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Proxy:
    """A remote without the model exports API: everything else is forwarded to the stack."""

    base_url: str = ""
    seen: list[Seen] = field(default_factory=list)


def _proxy_app(upstream: str, proxy: Proxy) -> Starlette:
    """Forwards every request (method, path, query, body, headers; the answer streamed back as it comes) to
    ``upstream`` (the stack's origin), except ``POST /v1/models/{model}/exports``: 404, as OpenAI answers."""

    async def forward(request: Request) -> Response:
        body = await request.body()
        proxy.seen.append(Seen(request.method, request.url.path, request.headers.get("authorization"), body))
        if request.method == "POST" and EXPORTS.fullmatch(request.url.path):
            return JSONResponse({"error": {"message": f"Invalid URL (POST {request.url.path})",
                                           "type": "invalid_request_error", "param": None, "code": None}},
                                status_code=404)
        client = httpx.AsyncClient(timeout=300, trust_env=False)
        url = upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        answer = await client.send(client.build_request(request.method, url, headers=headers, content=body),
                                   stream=True)

        async def close() -> None:
            await answer.aclose()
            await client.aclose()

        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code,
                                 headers={k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP},
                                 background=BackgroundTask(close))

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


@pytest.fixture(scope="module")
def proxy(stack: Any) -> Iterator[Proxy]:
    """The proxy, on a free port of this machine, in a thread of its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    state = Proxy(base_url=f"http://127.0.0.1:{port}/v1")
    server = uvicorn.Server(uvicorn.Config(_proxy_app(stack.base_url.removesuffix("/v1"), state), host="127.0.0.1",
                                           port=port, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the proxy did not start"
        time.sleep(0.05)
    yield state
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def keys(stack: Any, proxy: Proxy) -> Iterator[dict[str, str]]:
    """API keys of two new tenants; A's remote (in the stack's remotes file) is the proxy, with B's key."""
    with tenants_with_remote(stack, TENANT_A, TENANT_B, proxy.base_url) as keys:
        yield keys


def _training_file(sdk: OpenAI) -> str:
    return training_file(sdk, "My calves are tight after {n} hill repeats.",
                         "After {n} hill repeats: stretch, then an easy spin tomorrow.")


def _usage(http: httpx.Client, model: str, messages: int, timeout: float = 60) -> dict[str, Any]:
    """A's usage row of ``model`` once it counts ``messages`` answers (or as it stands after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = http.get("/v1/usage", params={"group_by": "model"}).json()["data"]
        row: dict[str, Any] = next((r for r in rows if r["model"] == model), {})
        if row.get("messages", 0) >= messages or time.monotonic() > deadline:
            return row
        time.sleep(0.5)


def test_a_model_the_remote_offers_no_download_of_is_served_through_the_remote(
        stack: Any, proxy: Proxy, keys: dict[str, str]) -> None:
    a, b = client(stack, keys[TENANT_A]), client(stack, keys[TENANT_B])
    job = a.fine_tuning.jobs.create(
        model=BASE_MODEL_ID, training_file=_training_file(a), suffix="external", seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}},
        extra_body={"backend": "openai_compatible"})
    job = finished(a, job.id)
    assert job.status == "succeeded", job.error
    remote_id = (job.model_extra or {})["remote_job_id"]
    remote = b.fine_tuning.jobs.retrieve(remote_id)
    remote_model = remote.fine_tuned_model
    assert remote.status == "succeeded" and remote_model
    assert remote_model.startswith(f"ft:{BASE_MODEL_ID}:{TENANT_B}:external:")

    # The remote was asked for the adapter, answered 404, and the job says its model is served remotely.
    exports = [s for s in proxy.seen if s.method == "POST" and EXPORTS.fullmatch(s.path)]
    assert [s.path for s in exports] == [f"/v1/models/{remote_model}/exports"]
    messages = [e.message for e in a.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert any(m.startswith(f"The adapter of {remote_model} cannot be downloaded from {proxy.base_url} "
                            "(it answered 404") and "served remotely through inference, as an external model" in m
               for m in messages), messages
    assert all(keys[TENANT_B] not in m for m in messages)

    # A's model: registered as an external model naming B's model and the proxy.
    model = job.fine_tuned_model
    assert model and model.startswith(f"ft:{BASE_MODEL_ID}:{TENANT_A}:external:") and model != remote_model
    with httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=300,
                      headers={"Authorization": f"Bearer {keys[TENANT_A]}"}) as http:
        version = registered(http, model)
        assert version["external"] == {"model": remote_model, "base_url": proxy.base_url}
        assert (version["lora_rank"], version["files"], version["size_bytes"]) == (0, [], 0)
        assert version["lineage"]["remote"] == {"job_id": remote_id, "model": remote_model,
                                                "base_url": proxy.base_url}

        # A's chat completion goes to B's model through the proxy, with A's configured key (B's).
        before = len(proxy.seen)
        question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "My calves are tight. What now?"}]
        answer = a.chat.completions.create(model=model, messages=question, max_tokens=8, temperature=0)
        assert answer.model == model and answer.choices[0].message.content
        assert answer.usage and answer.usage.completion_tokens > 0
        forwarded = [s for s in proxy.seen[before:] if s.path == "/v1/chat/completions"]
        assert len(forwarded) == 1
        assert forwarded[0].json()["model"] == remote_model
        assert forwarded[0].authorization == f"Bearer {keys[TENANT_B]}"

        # Streamed, with the usage chunk asked for.
        chunks = list(a.chat.completions.create(model=model, messages=question, max_tokens=8,
                                                temperature=0, stream=True, stream_options={"include_usage": True}))
        assert chunks and all(c.model == model for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        streamed = [c.usage for c in chunks if c.usage is not None]
        assert len(streamed) == 1 and streamed[0].completion_tokens > 0
        forwarded = [s for s in proxy.seen[before:] if s.path == "/v1/chat/completions"]
        assert len(forwarded) == 2 and forwarded[1].json()["model"] == remote_model
        assert forwarded[1].json()["stream"] is True and forwarded[1].json()["stream_options"]["include_usage"] is True

        # Both answers are billed to A's model.
        row = _usage(http, model, 2)
        assert row.get("messages") == 2, row
        assert row["input_tokens"] == answer.usage.prompt_tokens + streamed[0].prompt_tokens
        assert row["output_tokens"] == answer.usage.completion_tokens + streamed[0].completion_tokens
        with httpx.Client(base_url=http.base_url, timeout=300,
                          headers={"Authorization": f"Bearer {keys[TENANT_B]}"}) as as_b:
            remote_row = _usage(as_b, remote_model, 2)  # B's model on the engines answered both, as B
        assert remote_row.get("messages") == 2, remote_row
        assert remote_row["output_tokens"] == row["output_tokens"]

        # Nothing to export here either.
        refused = http.post(f"/v1/models/{model}/exports", json={"format": "adapter"})
        assert refused.status_code == 400, refused.text
        assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == ("model", "model_not_exportable")
