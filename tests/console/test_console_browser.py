"""The web console in a real browser (Debian's Chromium through Playwright) against the running
all-in-one stack: sign in, a fine-tuning job whose loss curve grows live, a cancelled job, an
avatar activated and rolled back, a blind arena voted through with the keyboard, feedback on a
stored completion, the usage CSV, markup shown as text, CSRF refusal and the CSP header; a
screenshot of every page at 1280 px and at phone width."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

MARKUP = "<img src=x onerror=alert(1)>"
PAGES = {"Overview": "/", "Datasets": "/datasets", "Jobs": "/jobs", "Models": "/models", "Avatars": "/avatars",
         "Evaluations": "/evals", "Arena": "/arena", "Feedback": "/feedback", "Usage": "/usage", "Coach": "/coach"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
PHONE = {"width": 390, "height": 844}
COACH_TODAY = "2025-06-02"  # the day the Polarize scenarios are written for
DESKTOP = {"width": 1280, "height": 900}
#: What earlier tests made for later ones (the module's tests run in order on one stack).
STATE: dict[str, Any] = {}


def _jsonl(count: int, offset: int = 0) -> bytes:
    lines = [json.dumps({"messages": [
        {"role": "user", "content": f"I ran {i + 3} km today at an easy pace. Was that enough?"},
        {"role": "assistant", "content": f"{i + 3} km easy is a solid aerobic session. Rest well tonight."}]})
        for i in range(offset, offset + count)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def api(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=300,
                      headers={"Authorization": f"Bearer {stack.api_key}"}) as client:
        yield client


@pytest.fixture(scope="module")
def console_url(stack: Any) -> str:
    return stack.base_url.removesuffix("/v1") + "/console"


def _sign_in(page: Any, console_url: str, key: str) -> None:
    page.goto(f"{console_url}/sign-in")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/console/$"))


@pytest.fixture(scope="module")
def context(chromium: Any, console_url: str, stack: Any) -> Iterator[Any]:
    ctx = chromium.new_context(viewport=DESKTOP, accept_downloads=True)
    problems: list[str] = []
    ctx.problems = problems
    page = ctx.new_page()
    _watch(page, problems)
    _sign_in(page, console_url, stack.api_key)
    try:
        yield ctx
    finally:
        ctx.close()


def _watch(page: Any, problems: list[str]) -> None:
    """Script errors, CSP violations and dialogs (an alert would mean markup ran) end up in ``problems``."""
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    def console(msg: Any) -> None:
        # A 4xx answer is a page the test expects (a refused form); anything else is a problem.
        if msg.type == "error" and not re.search(r"Failed to load resource: .* status of 4\d\d", msg.text):
            problems.append(f"console {msg.type}: {msg.text}")

    page.on("console", console)

    def dialog(d: Any) -> None:
        problems.append(f"dialog: {d.message}")
        d.dismiss()

    page.on("dialog", dialog)


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    tab = context.pages[0]
    context.problems.clear()
    yield tab
    assert not context.problems, context.problems


def _wait_text(locator: Any, pattern: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = locator.inner_text()
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} never appeared; last: {text!r}")


def _points(page: Any) -> int:
    return int(page.locator('[data-chart="loss"]').get_attribute("data-points") or 0)


def test_sign_in_refuses_a_wrong_key_and_sets_a_strict_cookie(chromium: Any, console_url: str, stack: Any,
                                                              screenshots: Path) -> None:
    ctx = chromium.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        response = page.goto(f"{console_url}/jobs")
        assert page.url.startswith(f"{console_url}/sign-in?next=")
        assert response is not None and response.headers["content-security-policy"] == CSP
        page.get_by_label("API key").fill("cf-not-a-key")
        page.get_by_role("button", name="Sign in").click()
        assert "The key was not accepted" in page.locator("[role=alert]").inner_text()
        page.screenshot(path=screenshots / "sign-in-refused-1280.png", full_page=True)
        page.get_by_label("API key").fill(stack.api_key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{console_url}/jobs")
        (cookie,) = [c for c in ctx.cookies() if c["name"] == "coachforge_console"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
        assert stack.api_key not in cookie["value"]
        assert page.evaluate("document.cookie") == "", "scripts cannot read the session"
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(r".*/console/sign-in"))
        page.goto(f"{console_url}/jobs")
        assert "/sign-in" in page.url
    finally:
        ctx.close()


def test_state_changing_requests_need_the_csrf_token_and_pages_carry_the_csp(page: Any, console_url: str,
                                                                             api: httpx.Client) -> None:
    response = page.goto(f"{console_url}/avatars")
    assert response is not None and response.status == 200
    headers = response.headers
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "same-origin"
    name = f"csrf-{secrets.token_hex(3)}"
    # The browser's own session, without the form's token: refused, nothing created.
    refused = page.request.post(f"{console_url}/avatars", form={"name": name, "model": BASE_MODEL_ID})
    assert refused.status == 403 and "security token" in refused.text()
    assert refused.headers["content-security-policy"] == CSP
    wrong = page.request.post(f"{console_url}/avatars", form={"name": name, "model": BASE_MODEL_ID,
                                                               "csrf_token": "0" * 64})
    assert wrong.status == 403
    assert api.get(f"/v1/avatars/{name}").status_code == 404
    static = page.request.get(f"{console_url}/static/console.js")
    assert static.headers["content-security-policy"] == CSP


def test_a_fine_tuning_job_s_loss_curve_grows_live(page: Any, console_url: str, api: httpx.Client,
                                                   screenshots: Path) -> None:
    train = api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("console-train.jsonl", _jsonl(16))})
    valid = api.post("/v1/files", data={"purpose": "fine-tune"},
                     files={"file": ("console-valid.jsonl", _jsonl(4, offset=100))})
    assert train.status_code == 200 and valid.status_code == 200, (train.text, valid.text)
    page.goto(f"{console_url}/jobs")
    page.get_by_label("Base model").select_option(BASE_MODEL_ID)
    page.get_by_label("Training file or dataset version").select_option(train.json()["id"])
    page.get_by_label("Validation file (optional)").select_option(valid.json()["id"])
    page.get_by_label("Suffix").fill("console")
    page.get_by_label("Epochs").fill("2")
    page.get_by_label("Batch size").fill("8")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(re.compile(r".*/console/jobs/ftjob-[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    STATE["job_id"] = job_id
    chart = page.locator('[data-chart="loss"]')
    assert chart.get_attribute("data-drawn") == "1"
    try:
        # No reload from here on: the chart polls its JSON, the rest is refreshed by htmx.
        deadline = time.monotonic() + 1800
        seen: list[int] = []
        while time.monotonic() < deadline:
            count = _points(page)
            if not seen or count != seen[-1]:
                seen.append(count)
            if page.locator("#job-status").inner_text() in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        status = page.locator("#job-status").inner_text()
        assert status == "succeeded", f"job {job_id} ended {status}; points seen: {seen}"
    finally:  # never leave the stack's trainer busy for the tests after this one
        if api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] not in ("succeeded", "failed", "cancelled"):
            api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    page.wait_for_timeout(2500)  # the last poll
    seen.append(_points(page))
    grown = [c for c in seen if c > 0]
    assert len(set(grown)) >= 2 and grown == sorted(grown), f"the curve did not grow live: {seen}"
    assert _points(page) == 4  # 16 examples / batch 8 = 2 steps per epoch, 2 epochs
    assert page.locator(".u-legend").count() == 1 and "validation loss" in page.locator(".u-legend").inner_text()
    page.screenshot(path=screenshots / "job-1280.png", full_page=True)
    job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["fine_tuned_model"]
    assert job["fine_tuned_model"] in page.locator("#job-model").inner_text()
    assert "Checkpoint saved" in page.locator("#job-live").inner_text()
    deadline = time.monotonic() + 120  # the registry registers the model from job.succeeded
    while api.get(f"/v1/models/{job['fine_tuned_model']}").status_code != 200:
        assert time.monotonic() < deadline, "the fine-tuned model was never registered"
        time.sleep(0.5)
    STATE["fine_tuned"] = job["fine_tuned_model"]


def test_a_job_is_cancelled_from_its_page(page: Any, console_url: str, api: httpx.Client) -> None:
    train = api.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("cancel.jsonl", _jsonl(24))}).json()
    job = api.post("/v1/fine_tuning/jobs", json={"training_file": train["id"], "model": BASE_MODEL_ID,
                                                 "hyperparameters": {"n_epochs": 5, "batch_size": 8}}).json()
    page.goto(f"{console_url}/jobs/{job['id']}")
    page.get_by_role("button", name="Cancel job").click()
    page.wait_for_url(f"{console_url}/jobs/{job['id']}")
    assert "Cancellation requested" in page.locator("#messages").inner_text()
    _wait_text(page.locator("#job-status"), r"^cancelled$", 600)
    assert page.get_by_role("button", name="Cancel job").count() == 0
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"


def test_an_avatar_is_activated_and_rolled_back(page: Any, console_url: str, api: httpx.Client,
                                                screenshots: Path) -> None:
    fine_tuned = STATE.get("fine_tuned")
    assert fine_tuned, "needs the fine-tuned model of the job test"
    name = f"coach-console-{secrets.token_hex(3)}"
    STATE["avatar"] = name
    page.goto(f"{console_url}/avatars")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Model").select_option(BASE_MODEL_ID)
    page.get_by_label("Reason").fill(f"first version {MARKUP}")
    page.get_by_role("button", name="Create avatar").click()
    page.wait_for_url(f"{console_url}/avatars/{name}")
    assert page.locator("#active-model").inner_text() == BASE_MODEL_ID

    page.locator("#activate-model").select_option(fine_tuned)
    page.locator("#activate-reason").fill("better on the coach eval")
    page.get_by_role("button", name="Activate").click()
    page.wait_for_url(f"{console_url}/avatars/{name}")
    assert page.locator("#active-model").inner_text() == fine_tuned
    assert f"{name} now answers with {fine_tuned}." in page.locator("#messages").inner_text()
    assert api.get(f"/v1/avatars/{name}").json()["active_model"] == fine_tuned

    page.locator("#rollback-reason").fill("complaints")
    page.get_by_role("button", name="Roll back").click()
    page.wait_for_url(f"{console_url}/avatars/{name}")
    assert page.locator("#active-model").inner_text() == BASE_MODEL_ID
    history = page.locator("#avatar-history tbody tr")
    rows = [history.nth(i).inner_text() for i in range(history.count())]
    assert any("better on the coach eval" in r and fine_tuned in r for r in rows), rows
    assert any("complaints" in r for r in rows), rows
    assert any(MARKUP in r for r in rows), "the reason's markup is shown as text"
    assert page.locator("main img").count() == 0
    page.screenshot(path=screenshots / "avatar-1280.png", full_page=True)

    # A refusal is shown as the API's message: pinning, then activating.
    page.locator("#pin-model").select_option(BASE_MODEL_ID)
    page.get_by_role("button", name="Pin").click()
    page.wait_for_url(f"{console_url}/avatars/{name}")
    page.locator("#activate-model").select_option(fine_tuned)
    page.get_by_role("button", name="Activate").click()
    page.wait_for_url(f"{console_url}/avatars/{name}")
    message = page.locator("#messages .error").inner_text()
    assert "pin" in message.lower() and "Traceback" not in message
    assert page.locator("#active-model").inner_text() == BASE_MODEL_ID
    page.get_by_role("button", name="Unpin").click()
    page.wait_for_url(f"{console_url}/avatars/{name}")


def test_an_arena_is_voted_through_with_the_keyboard(page: Any, console_url: str, api: httpx.Client,
                                                     screenshots: Path) -> None:
    # The base model against an avatar answering with it: two names, blind to the voter.
    contender = f"arena-{secrets.token_hex(3)}"
    assert api.post("/v1/avatars", json={"name": contender, "model": BASE_MODEL_ID}).status_code == 200
    page.goto(f"{console_url}/arena")
    page.get_by_label("Name").fill(f"base vs avatar {MARKUP}")
    page.get_by_label("Model A").select_option(BASE_MODEL_ID)
    page.get_by_label("Model B").select_option(contender)
    page.get_by_label("Prompts (one per paragraph; separate them with a blank line)").fill(
        f"How long should my easy run be today?\n\nIs {MARKUP} a good warm-up?")
    page.get_by_label("Max answer tokens").fill("24")
    page.get_by_label("Temperature").fill("0")
    page.get_by_role("button", name="Create comparison").click()
    page.wait_for_url(re.compile(r".*/console/arena/cmp-[0-9a-f]+$"))
    comparison_id = page.url.rsplit("/", 1)[1]
    assert MARKUP in page.locator("h1").inner_text(), "the name's markup is shown as text"
    # The voting panel polls while the answers are generated, then shows the first pair.
    _wait_text(page.locator("#vote"), r"pair\(s\) left", 900)
    prompts = []
    for key in ("1", "0"):
        prompts.append(page.locator("#vote .prompt").inner_text())
        remaining = page.locator("#vote .hint").inner_text()
        page.locator("body").press(key)
        if key == "1":
            _wait_text(page.locator("#vote"), r"1 pair\(s\) left", 60)
            assert remaining != page.locator("#vote .hint").inner_text()
    _wait_text(page.locator("#vote"), r"You have judged every pair", 60)
    assert any(MARKUP in p for p in prompts), prompts
    assert page.locator("#vote img, .prompt img").count() == 0
    _wait_text(page.locator("#results"), r"2 vote\(s\)", 30)
    standings = page.locator("#standings").inner_text()
    assert BASE_MODEL_ID in standings and contender in standings and "%" in standings
    page.screenshot(path=screenshots / "arena-1280.png", full_page=True)
    result = api.get(f"/v1/comparisons/{comparison_id}").json()["results"]
    assert result["vote_count"] == 2
    assert sum(m["wins"] for m in result["models"]) == 1 and all(m["ties"] == 1 for m in result["models"])


def test_feedback_on_a_stored_completion(page: Any, console_url: str, api: httpx.Client) -> None:
    answer = api.post("/v1/chat/completions", json={
        "model": BASE_MODEL_ID, "store": True, "max_tokens": 16, "temperature": 0,
        "metadata": {"screen": MARKUP},
        "messages": [{"role": "user", "content": f"Rate my week {MARKUP}"}]})
    assert answer.status_code == 200, answer.text
    completion_id = answer.json()["id"]
    deadline = time.monotonic() + 60  # stored by a consumer, after the answer
    while api.get(f"/v1/chat/completions/{completion_id}").status_code != 200:
        assert time.monotonic() < deadline, "the completion was never stored"
        time.sleep(0.5)
    page.goto(f"{console_url}/feedback")
    page.get_by_role("link", name=completion_id).click()
    page.wait_for_url(f"{console_url}/feedback/{completion_id}")
    assert f"Rate my week {MARKUP}" in page.locator(".prompt").inner_text()
    assert MARKUP in page.locator("dl.facts").inner_text()
    assert page.locator("main img").count() == 0
    page.get_by_label("4", exact=True).check()
    page.get_by_label("Gold (train on it)").check()
    page.get_by_label("Correction (the answer you wanted)").fill("Solid week: keep Sunday easy.")
    page.get_by_role("button", name="Save feedback").click()
    page.wait_for_url(f"{console_url}/feedback/{completion_id}")
    assert "Feedback saved." in page.locator("#messages").inner_text()
    table = page.locator("section").filter(has_text="Feedback so far").locator("tbody").inner_text()
    assert "Solid week: keep Sunday easy." in table and "yes" in table
    summary = api.get(f"/v1/chat/completions/{completion_id}").json()["feedback"]
    assert summary["gold_count"] == 1 and summary["has_correction"] and summary["mean_rating"] == 4


def test_a_refused_upload_shows_its_line_by_line_report(page: Any, console_url: str) -> None:
    good = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    bad = b"\n".join([good, b"{not json", b'{"messages": [{"role": "bot", "content": "x"}]}', good]) + b"\n"
    page.goto(f"{console_url}/datasets")
    page.get_by_label("JSONL file").set_input_files(files=[{"name": f"bad-{MARKUP}.jsonl",
                                                            "mimeType": "application/jsonl", "buffer": bad}])
    page.get_by_role("button", name="Upload").click()
    page.wait_for_load_state("load")
    refused = page.locator("section.refused")
    assert "was refused" in refused.locator("h2").inner_text() and MARKUP in refused.locator("h2").inner_text()
    assert "line 2: line: invalid JSON" in refused.locator("[role=alert]").inner_text()
    rows = refused.locator("table.report tbody tr")
    lines = [rows.nth(i).inner_text() for i in range(rows.count())]
    assert any(r.startswith("2") and "invalid JSON" in r for r in lines), lines
    assert any(r.startswith("3") and "unknown role 'bot'" in r for r in lines), lines
    assert page.locator("main img").count() == 0


def test_coach_load_preview_apply_and_undo(page: Any, console_url: str, api: httpx.Client) -> None:
    from polarize.scenarios import scenario_batch

    athlete = "console-" + secrets.token_hex(3)
    STATE["athlete"] = athlete
    _, batch = scenario_batch("overreached", 0)
    imported = api.post("/v1/coach/import", json=json.loads(json.dumps(batch).replace("eval-overreached-0", athlete)))
    assert imported.status_code == 200, imported.text
    page.goto(f"{console_url}/coach")
    page.get_by_label("Athlete id").fill(athlete)
    page.get_by_label("Today (optional)").fill(COACH_TODAY)
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(rf".*/console/coach\?athlete={athlete}&today={COACH_TODAY}$"))
    assert page.locator('[data-chart="lines"] canvas').count() == 1
    assert "TSB" in page.locator(".u-legend").inner_text()
    week = page.locator("section").filter(has_text="Coming week").locator("tbody tr")
    assert week.count() >= 1 and "Nothing planned" not in week.first.inner_text()
    page.get_by_label("Question").fill(f"I feel wrecked {MARKUP}. Changes?")
    with page.expect_navigation(timeout=600_000):  # the model answers on CPU
        page.get_by_role("button", name="Preview (changes nothing)").click(no_wait_after=True)
    preview = page.locator("section").filter(has_text="Recommendation")
    assert "Preview" in preview.locator("h3").inner_text()
    assert "fatigued" in preview.locator("dl.facts").inner_text()
    verdicts = preview.locator("table tbody tr")
    assert verdicts.count() >= 1
    page.get_by_role("button", name="Apply the accepted operations").click()
    page.wait_for_url(re.compile(rf".*/console/coach\?athlete={athlete}&today={COACH_TODAY}$"))
    assert "Recommendation applied." in page.locator("#messages").inner_text()
    (change,) = api.get(f"/v1/coach/athletes/{athlete}/changes").json()["data"]
    if change["status"] == "applied":
        page.get_by_role("button", name="Undo").click()
        page.wait_for_url(re.compile(rf".*/console/coach\?athlete={athlete}&today={COACH_TODAY}$"))
        assert "Change undone." in page.locator("#messages").inner_text()
        assert "undone" in page.locator("section").filter(has_text="Applied changes").inner_text()


def test_usage_csv_download(page: Any, console_url: str) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    page.goto(f"{console_url}/usage")
    assert page.locator('[data-chart="stacked"]').count() == 2
    assert page.locator('[data-chart="stacked"] canvas').count() == 2
    with page.expect_download() as info:
        page.locator("#usage-csv").click()
    download = info.value
    assert download.suggested_filename.startswith("coachforge-usage-") and download.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert rows and set(rows[0]) == {"date", "model", "avatar", "purpose", "messages", "input_tokens",
                                     "output_tokens", "cost_usd"}
    mine = [r for r in rows if r["date"] == today and r["model"] == BASE_MODEL_ID and r["purpose"] == "app"]
    assert mine and int(mine[0]["messages"]) >= 1 and int(mine[0]["output_tokens"]) > 0


def test_every_page_at_1280_px_and_at_phone_width(chromium: Any, context: Any, console_url: str,
                                                  screenshots: Path) -> None:
    tab = context.pages[0]
    context.problems.clear()
    unlabelled_js = """() => [...document.querySelectorAll('main input, main select, main textarea')]
        .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !e.getAttribute('aria-labelledby') && !e.closest('[role=radiogroup]'))
        .map(e => e.name || e.id)"""
    targets = dict(PAGES)
    if STATE.get("job_id"):
        targets["Job"] = f"/jobs/{STATE['job_id']}"
    if STATE.get("avatar"):
        targets["Avatar"] = f"/avatars/{STATE['avatar']}"
    if STATE.get("fine_tuned"):
        targets["Model"] = f"/models/{STATE['fine_tuned']}"
    if STATE.get("athlete"):
        targets["Athlete"] = f"/coach?athlete={STATE['athlete']}&today={COACH_TODAY}"
    for label, path in targets.items():
        if label in PAGES:  # through the navigation
            tab.goto(f"{console_url}/")
            tab.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True).click()
            tab.wait_for_url(f"{console_url}{path}")
            nav = tab.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True)
            assert nav.get_attribute("aria-current") == "page", label
        else:
            tab.goto(f"{console_url}{path}")
        tab.wait_for_timeout(300)
        assert tab.locator("h1").count() == 1, label
        tab.screenshot(path=screenshots / f"{label.lower()}-1280.png", full_page=True)
        tab.keyboard.press("Tab")
        assert tab.evaluate("document.activeElement.className") == "skip", f"{label}: the skip link comes first"
        assert tab.evaluate(unlabelled_js) == [], f"{label}: inputs without a label"
    phone = chromium.new_context(viewport=PHONE, storage_state=context.storage_state(), is_mobile=True,
                                 has_touch=True)
    try:
        small = phone.new_page()
        _watch(small, context.problems)
        for label, path in targets.items():
            small.goto(f"{console_url}{path}")
            small.wait_for_timeout(300)
            width = small.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"] + 1, f"{label} scrolls sideways at phone width ({width}px)"
            small.screenshot(path=screenshots / f"{label.lower()}-phone.png", full_page=True)
    finally:
        phone.close()
    assert not context.problems, context.problems
    print(f"screenshots in {screenshots}")
