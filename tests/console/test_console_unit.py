"""The console's own logic without the stack: sessions, CSRF, security headers, error display and
escaping, against a small stand-in of the REST API mounted in the same app (the console calls it
in-process, as in the all-in-one mode)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from coachforge_console.app import build
from coachforge_console.client import Router
from coachforge_console.pages.arena import parse_prompts
from coachforge_console.pages.jobs import metric_points
from coachforge_console.pages.usage import stacked, to_csv
from coachforge_console.security import COOKIE, CSP, Session, SessionCodec
from coachforge_console.settings import ConsoleSettings
from coachforge_console.web import data_block

KEY = "cf-good-key"
MARKUP = "<img src=x onerror=alert(1)>"


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": None}}, status_code=status)


def fake_api() -> FastAPI:
    app = FastAPI()
    calls: list[tuple[str, str, Any]] = []
    app.state.calls = calls

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v1/") and request.headers.get("authorization") != f"Bearer {KEY}":
            return _error(401, "Incorrect API key provided.")
        return await call_next(request)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "base-model", "object": "model", "created": 1, "owned_by": "x"}]}

    @app.get("/v1/avatars")
    def avatars() -> dict[str, Any]:
        return {"object": "list", "data": [{"name": MARKUP, "active_model": "base-model", "candidate_model": None,
                                            "candidate_share": 0, "pinned": False, "fallback": "error",
                                            "store": None, "created_at": 1, "updated_at": 1}]}

    @app.post("/v1/avatars/{name}/activate")
    async def activate(name: str, request: Request) -> Any:
        calls.append(("activate", name, await request.json()))
        return _error(409, f"Avatar {name} is pinned; unpin it first.", "name")

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def job(job_id: str) -> Any:
        return _error(404, f"No fine-tuning job {job_id}.", "job_id")

    return app


@pytest.fixture
def app() -> FastAPI:
    return build(ConsoleSettings(secret_key="x" * 32), app=fake_api())


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, base_url="http://testserver", follow_redirects=False)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([0-9a-f]+)"', html)
    assert match, html[:500]
    return match.group(1)


def sign_in(client: TestClient, key: str = KEY) -> Any:
    page = client.get("/console/sign-in")
    return client.post("/console/sign-in", data={"api_key": key, "csrf_token": csrf_of(page.text),
                                                 "next": "/console/avatars"})


def test_every_console_response_carries_the_security_headers(client: TestClient) -> None:
    for path in ("/console/sign-in", "/console/", "/console/static/console.js", "/console/no-such-page",
                 "/console/static/vendor/htmx.min.js"):
        response = client.get(path)
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "same-origin", path
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    assert client.get("/console/no-such-page").status_code == 404
    assert client.get("/console/static/../settings.py").status_code == 404


def test_pages_have_no_inline_script_or_style(client: TestClient) -> None:
    assert sign_in(client).status_code == 303
    for path in ("/console/sign-in", "/console/avatars"):
        html = client.get(path).text
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert 'src="/console/static/' in tag or 'type="application/json"' in tag, tag
        assert "<style" not in html and " style=" not in html and "javascript:" not in html
        for tag in re.findall(r"<[a-zA-Z][^>]*>", html):
            assert re.search(r"\son[a-z]+=", tag) is None, tag
    assert "\"includeIndicatorStyles\": false" in client.get("/console/avatars").text


def test_signed_out_users_are_sent_to_sign_in(client: TestClient) -> None:
    response = client.get("/console/jobs")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fjobs"


def test_sign_in_checks_the_key_with_the_api_and_sets_a_strict_http_only_cookie(client: TestClient) -> None:
    refused = sign_in(client, "cf-wrong")
    assert refused.status_code == 401
    assert "The key was not accepted: Incorrect API key provided." in refused.text
    response = sign_in(client)
    assert response.status_code == 303 and response.headers["location"] == "/console/avatars"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace(
        "samesite", "SameSite")
    assert "Secure" not in cookie and "Path=/console" in cookie and "Max-Age=" in cookie
    assert KEY not in cookie, "the key is encrypted in the cookie"
    assert client.get("/console/avatars").status_code == 200


def test_the_cookie_is_secure_behind_https(client: TestClient) -> None:
    response = client.get("/console/sign-in", headers={"x-forwarded-proto": "https"})
    assert "Secure" in response.headers["set-cookie"]


def test_sign_in_redirects_only_inside_the_console(client: TestClient) -> None:
    page = client.get("/console/sign-in")
    response = client.post("/console/sign-in", data={"api_key": KEY, "csrf_token": csrf_of(page.text),
                                                     "next": "//evil.example/console"})
    assert response.headers["location"] == "/console/"


def test_posts_without_a_valid_csrf_token_are_refused(client: TestClient, app: FastAPI) -> None:
    page = client.get("/console/sign-in")
    assert client.post("/console/sign-in", data={"api_key": KEY}).status_code == 403
    assert client.post("/console/sign-in", data={"api_key": KEY, "csrf_token": "0" * 64}).status_code == 403
    assert sign_in(client).status_code == 303
    token = csrf_of(client.get("/console/avatars").text)
    assert token != csrf_of(page.text), "signing in starts a new session with new tokens"
    refused = client.post("/console/avatars/a/activate", data={"model": "m"})
    assert refused.status_code == 403 and "security token" in refused.text
    assert refused.headers["content-security-policy"] == CSP
    assert client.post("/console/avatars/a/activate", data={"model": "m", "csrf_token": csrf_of(page.text)}
                       ).status_code == 403
    assert not app.state.calls
    # The htmx way: the token in a header.
    ok = client.post("/console/avatars/a/activate", data={"model": "m"}, headers={"X-CSRF-Token": token})
    assert ok.status_code == 303
    assert app.state.calls == [("activate", "a", {"model": "m", "reason": ""})]


def test_api_errors_are_shown_as_their_message(client: TestClient) -> None:
    sign_in(client)
    token = csrf_of(client.get("/console/avatars").text)
    client.post("/console/avatars/coach/activate", data={"model": "m", "csrf_token": token})
    page = client.get("/console/avatars/coach")  # the avatar does not exist in the stand-in: 404 page
    assert "Avatar coach is pinned; unpin it first." in page.text, "the failed action's message is shown once"
    job = client.get("/console/jobs/ftjob-missing")
    assert job.status_code == 404
    assert "No fine-tuning job ftjob-missing." in job.text
    assert "Traceback" not in job.text


def test_markup_from_the_api_is_shown_as_text(client: TestClient) -> None:
    sign_in(client)
    html = client.get("/console/avatars").text
    assert MARKUP not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_sign_out_forgets_the_key(client: TestClient) -> None:
    sign_in(client)
    token = csrf_of(client.get("/console/avatars").text)
    assert client.post("/console/sign-out", data={}).status_code == 403
    response = client.post("/console/sign-out", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["location"] == "/console/sign-in"
    assert client.get("/console/avatars").status_code == 303


def test_sessions_are_sealed_and_expire() -> None:
    codec = SessionCodec("k" * 32, max_age_s=60)
    session = Session(api_key=KEY)
    sealed = codec.seal(session)
    opened = codec.open(sealed)
    assert opened is not None and opened.api_key == KEY and opened.sid == session.sid and not opened.fresh
    assert codec.open(sealed[:-4] + "AAAA") is None
    assert SessionCodec("other" * 8, 60).open(sealed) is None
    old = Session(api_key=KEY, since=time.time() - 120)
    assert codec.open(codec.seal(old)) is None, "a session ends max_age_s after it began, even when rewritten"
    assert codec.csrf_ok(session, codec.csrf_token(session))
    assert not codec.csrf_ok(Session(), codec.csrf_token(session))


def test_json_data_blocks_cannot_close_their_script_element() -> None:
    text = str(data_block({"name": "</script><script>alert(1)</script>", "amp": "a&b", "q": "'"}))
    assert "<" not in text and ">" not in text and "&" not in text and "'" not in text
    import json

    assert json.loads(text)["name"] == "</script><script>alert(1)</script>"


def test_api_routes_pick_the_longest_prefix() -> None:
    router = Router(ConsoleSettings(api_url="http://gateway:8000/", api_routes={
        "/v1/fine_tuning": "http://trainer:8000", "/v1/chat": "http://inference:8000",
        "/v1/chat/completions/x": "http://special:8000"}))
    assert router.base_for("/v1/fine_tuning/jobs/ftjob-1/events") == "http://trainer:8000"
    assert router.base_for("/v1/chat/completions") == "http://inference:8000"
    assert router.base_for("/v1/chat/completions/x/feedback") == "http://special:8000"
    assert router.base_for("/v1/models") == "http://gateway:8000"
    assert router.base_for("/v1/fine_tuning_other") == "http://gateway:8000"
    assert Router(ConsoleSettings()).base_for("/v1/models") is None


def test_usage_csv_neutralises_formulas_and_stacks_by_day() -> None:
    rows = [{"date": "2026-11-01", "model": "=HYPERLINK(\"x\")", "avatar": "", "purpose": "app", "messages": 1,
             "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5},
            {"date": "2026-11-03", "model": "m", "avatar": "a", "purpose": "app", "messages": 2,
             "input_tokens": 1, "output_tokens": 1, "cost_usd": 1.0}]
    csv = to_csv(rows)
    assert csv.splitlines()[0] == "date,model,avatar,purpose,messages,input_tokens,output_tokens,cost_usd"
    assert "'=HYPERLINK" in csv
    import datetime as dt

    chart = stacked(rows, dt.date(2026, 11, 1), dt.date(2026, 11, 3), "model", "cost_usd")
    assert len(chart["x"]) == 3 and chart["x"][1] - chart["x"][0] == 86400
    assert {s["label"]: s["values"] for s in chart["series"]} == {"m": [0, 0, 1.0], "=HYPERLINK(\"x\")": [0.5, 0, 0]}
    tokens = stacked(rows, dt.date(2026, 11, 1), dt.date(2026, 11, 3), "model", "tokens")
    assert {s["label"]: s["values"] for s in tokens["series"]}["m"] == [0, 0, 2]


def test_prompts_are_paragraphs_and_loss_points_come_from_metrics_events() -> None:
    assert parse_prompts("first\nline two\n\n\nsecond\n") == [
        [{"role": "user", "content": "first\nline two"}], [{"role": "user", "content": "second"}]]
    events = [{"type": "message", "data": None, "created_at": 1},
              {"type": "metrics", "created_at": 2, "data": {"step": 1, "total_steps": 3, "train_loss": 2.0}},
              {"type": "metrics", "created_at": 3, "data": {"step": 2, "total_steps": 3, "train_loss": 1.5,
                                                            "valid_loss": 1.7}}]
    points = metric_points(events)
    assert [(p["step"], p["train_loss"], p["valid_loss"]) for p in points] == [(1, 2.0, None), (2, 1.5, 1.7)]
