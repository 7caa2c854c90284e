"""``/v1/files`` through the official ``openai`` SDK against the running stack: upload policies
and their messages, reports, list/retrieve/content/delete, deletion refused while in use,
synthetic data."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack

GOOD = json.dumps({"messages": [{"role": "user", "content": "Should I run today after a bad night?"},
                                {"role": "assistant", "content": "Keep it short and easy, in zone 1."}]}).encode()
BAD_JSON = b'{"messages": [{"role": "user"'
BAD_ROLE = json.dumps({"messages": [{"role": "bot", "content": "x"}]}).encode()


def test_strict_upload_is_refused_naming_lines_with_a_full_report(client: OpenAI, http: httpx.Client) -> None:
    content = b"\n".join([GOOD, BAD_JSON, BAD_ROLE, GOOD] + [BAD_JSON] * 30) + b"\n"
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("strict.jsonl", content), purpose="fine-tune")
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "file" and body["code"] == "invalid_file_format"
    message = body["message"]
    assert "32 invalid line(s) of 34" in message
    assert "line 2: line: invalid JSON" in message and "line 3: messages[0].role: unknown role 'bot'" in message
    assert "(and 12 more)" in message
    assert all(f.filename != "strict.jsonl" for f in client.files.list())
    report_path = message.rsplit("Full report: GET ", 1)[1]
    report = http.get(report_path).json()
    assert report["status"] == "rejected" and report["issues_total"] == 32 and len(report["issues"]) == 32
    assert report["issues"][0] == {"line": 2, "field": "line", "reason": report["issues"][0]["reason"]}


def test_lenient_upload_then_job_then_delete_rules(client: OpenAI, http: httpx.Client) -> None:
    # Ten distinct examples after the repeated GOOD ones: a job needs 10 usable (non-duplicate) examples.
    distinct = [json.dumps({"messages": [{"role": "user", "content": f"Run {i} km today?"},
                                         {"role": "assistant", "content": f"Yes, {i} km easy."}]}).encode()
                for i in range(3, 13)]
    content = b"\n".join([GOOD, BAD_JSON, GOOD, BAD_ROLE, GOOD, GOOD, *distinct]) + b"\n"
    f = client.files.create(file=("lenient.jsonl", content), purpose="fine-tune", extra_body={"policy": "lenient"})
    assert f.status == "processed" and f.status_details is not None
    assert f.status_details.startswith("2 invalid line(s) dropped under the lenient policy")
    assert "line 2: line: invalid JSON" in f.status_details and "line 4: messages[0].role" in f.status_details
    validation = (f.model_extra or {})["validation"]
    assert validation["policy"] == "lenient" and validation["examples"] == 14 and validation["invalid_lines"] == 2
    assert client.files.retrieve(f.id).status_details == f.status_details
    assert f.id in {x.id for x in client.files.list(purpose="fine-tune")}
    assert client.files.content(f.id).read().split(b"\n")[:4] == [GOOD, b"", GOOD, b""]
    lines = http.get(f"/v1/files/{f.id}/report", params={"format": "jsonl"}).text.splitlines()
    assert json.loads(lines[0])["issues_total"] == 2 and [json.loads(x)["line"] for x in lines[1:]] == [2, 4]

    job = client.fine_tuning.jobs.create(training_file=f.id, model=BASE_MODEL_ID, hyperparameters={"n_epochs": 1})
    try:
        with pytest.raises(openai.ConflictError) as err:
            client.files.delete(f.id)
        assert isinstance(err.value.body, dict) and job.id in err.value.body["message"]
        assert err.value.body["code"] == "file_in_use"
    finally:
        client.fine_tuning.jobs.cancel(job.id)
    deadline = 120.0
    import time

    end = time.monotonic() + deadline
    while client.fine_tuning.jobs.retrieve(job.id).status not in ("cancelled", "failed", "succeeded"):
        assert time.monotonic() < end, "job never stopped"
        time.sleep(0.5)
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_synthetic_data_version_and_delete_order(client: OpenAI, http: httpx.Client) -> None:
    made = http.post("/v1/datasets/synthetic", json={"count": 12, "seed": 4})
    assert made.status_code == 200, made.text
    file_id = made.json()["id"]
    assert client.files.retrieve(file_id).filename == "synthetic-coach-12-4.jsonl"
    refused = http.post("/v1/datasets/synthetic", json={"count": 0})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "count"
    version = http.post("/v1/datasets", json={"name": "synthetic", "files": [file_id], "validation_fraction": 0.2})
    assert version.status_code == 200, version.text
    with pytest.raises(openai.ConflictError) as err:
        client.files.delete(file_id)
    assert isinstance(err.value.body, dict) and version.json()["id"] in err.value.body["message"]
    assert http.delete(f"/v1/datasets/{version.json()['id']}").json()["deleted"] is True
    assert client.files.delete(file_id).deleted


def test_bad_policy_and_paging_are_field_errors(client: OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("p.jsonl", GOOD), purpose="fine-tune", extra_body={"policy": "sometimes"})
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "policy"
    first = client.files.create(file=("page1.jsonl", GOOD), purpose="fine-tune")
    second = client.files.create(file=("page2.jsonl", GOOD), purpose="fine-tune")
    page = client.files.list(limit=1)
    assert [x.id for x in page.data] == [second.id] and page.has_more
    assert http.get("/v1/files", params={"after": second.id, "limit": 1}).json()["data"][0]["id"] == first.id
    assert http.get("/v1/files", params={"limit": 0}).json()["error"]["param"] == "limit"
