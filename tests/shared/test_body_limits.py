"""Request bodies over their route's limit are refused with 413 and an OpenAI error body before the
application reads past the limit: a declared Content-Length at once, a chunked body as soon as it
passes the limit (a multipart upload is never spooled beyond it), on a real uvicorn server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, UploadFile

from coachforge_shared.http import add_body_limits, install_error_handlers

LIMIT = 1000
UPLOAD_LIMIT = 50_000


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, dict[str, int]]]:
    app = FastAPI()
    install_error_handlers(app)
    add_body_limits(app, LIMIT, [("/upload", UPLOAD_LIMIT)])
    seen = {"json": 0, "upload": 0, "spooled": 0}

    @app.post("/json")
    async def json_route(request: Request) -> dict[str, int]:
        body = await request.json()
        seen["json"] += 1
        return {"keys": len(body)}

    @app.post("/upload")
    def upload(file: UploadFile) -> dict[str, int]:
        seen["upload"] += 1
        data = file.file.read()
        seen["spooled"] = max(seen["spooled"], len(data))
        return {"bytes": len(data)}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", seen
    srv.should_exit = True
    thread.join(5)


def _is_413(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and error["param"] == "body"
    assert str(limit) in error["message"]


def test_small_bodies_pass_and_large_declared_ones_are_refused_unread(server) -> None:  # type: ignore[no-untyped-def]
    url, seen = server
    ok = httpx.post(f"{url}/json", json={"a": 1})
    assert ok.status_code == 200 and ok.json() == {"keys": 1}
    before = seen["json"]
    _is_413(httpx.post(f"{url}/json", content=b"{" + b" " * 5000 + b"}",
                       headers={"content-type": "application/json"}), LIMIT)
    assert seen["json"] == before


def test_a_chunked_body_is_cut_off_at_the_limit(server) -> None:  # type: ignore[no-untyped-def]
    url, seen = server
    before = seen["json"]

    def chunks() -> Iterator[bytes]:
        yield b'{"a": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    _is_413(httpx.post(f"{url}/json", content=chunks(), headers={"content-type": "application/json"}), LIMIT)
    assert seen["json"] == before


def test_an_upload_route_has_its_own_limit_and_nothing_beyond_it_is_spooled(server) -> None:  # type: ignore[no-untyped-def]
    url, seen = server
    ok = httpx.post(f"{url}/upload", files={"file": ("a.jsonl", b"y" * 20_000)})
    assert ok.status_code == 200 and ok.json() == {"bytes": 20_000}
    uploads = seen["upload"]
    body = b"".join([b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n",
                     b"z" * 200_000, b"\r\n--b--\r\n"])

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    _is_413(httpx.post(f"{url}/upload", content=chunks(),
                       headers={"content-type": "multipart/form-data; boundary=b"}), UPLOAD_LIMIT)
    assert seen["upload"] == uploads and seen["spooled"] == 20_000


def test_a_lying_content_length_is_refused_before_the_body(server) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 10000000000\r\n\r\n")
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
