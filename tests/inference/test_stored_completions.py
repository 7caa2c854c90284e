"""Stored chat completions and their feedback through the official ``openai`` SDK against the running
stack (real vLLM engine on CPU, real broker, PostgreSQL): ``store=True`` with metadata, the answer
arriving through ``completion.stored`` and its consumer, retrieve / list (metadata and model
filters) / messages / update / delete, a stream kept whole, tenant scoping, and feedback per rater."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion

from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.auth import add_api_key, create_tenant
from coachforge_shared.db import Database

pytestmark = pytest.mark.stack

MESSAGES: list[Any] = [{"role": "system", "content": "You are a running coach. Answer in one sentence."},
                       {"role": "user", "content": "I slept badly. Should I still do intervals today?"}]


@pytest.fixture(scope="module")
def client(stack) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(stack) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=120,
                        headers={"Authorization": f"Bearer {stack.api_key}"})


@pytest.fixture(scope="module")
def other_tenant(stack) -> OpenAI:  # type: ignore[no-untyped-def]
    """A client of another tenant (a tenant and API key added to the stack's database)."""
    tenant, key = f"other-{secrets.token_hex(4)}", f"cf-other-{secrets.token_hex(8)}"
    db = Database(stack.database_url)
    try:
        create_tenant(db, tenant)
        add_api_key(db, tenant, key)
    finally:
        db.dispose()
    return OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=60)


def _stored(client: OpenAI, completion_id: str, timeout: float = 60) -> ChatCompletion:
    """The stored completion once the consumer kept it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.chat.completions.retrieve(completion_id)
        except openai.NotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _not_found(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(openai.NotFoundError) as err:
        call()
    body = err.value.body
    assert isinstance(body, dict)
    return body


def test_store_retrieve_list_messages_update_delete(client: OpenAI, other_tenant: OpenAI) -> None:
    tag = secrets.token_hex(4)
    plain = client.chat.completions.create(model=BASE_MODEL_ID, messages=MESSAGES, max_tokens=8, temperature=0)
    answer = client.chat.completions.create(model=BASE_MODEL_ID, messages=MESSAGES, max_tokens=8, temperature=0,
                                            store=True, metadata={"run": tag, "screen": "today"}, user="athlete-1")
    assert answer.id.startswith("chatcmpl-") and answer.model == BASE_MODEL_ID

    got = _stored(client, answer.id)
    assert got.object == "chat.completion" and got.created == answer.created and got.model == BASE_MODEL_ID
    assert got.choices[0].message.content == answer.choices[0].message.content
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].finish_reason == answer.choices[0].finish_reason
    assert got.usage is not None and answer.usage is not None
    assert got.usage.total_tokens == answer.usage.total_tokens
    assert got.metadata == {"run": tag, "screen": "today"}
    extra = got.model_extra or {}
    assert extra["requested_model"] == BASE_MODEL_ID and extra["user"] == "athlete-1"
    assert extra["avatar"] is None and extra["latency_ms"] > 0
    assert extra["feedback"] == {"count": 0, "mean_rating": None, "gold_count": 0, "has_correction": False}
    time.sleep(1)  # the plain answer was asked before the stored one arrived: it was never published
    assert _not_found(lambda: client.chat.completions.retrieve(plain.id))["param"] == "completion_id"

    page = client.chat.completions.list(metadata={"run": tag})
    assert [c.id for c in page.data] == [answer.id] and page.has_more is False
    assert [c.id for c in client.chat.completions.list(metadata={"run": tag, "screen": "week"}).data] == []
    assert answer.id in [c.id for c in client.chat.completions.list(model=BASE_MODEL_ID, order="desc", limit=100)]

    messages = client.chat.completions.messages.list(answer.id)
    assert [(m.role, m.content) for m in messages.data] == [(m["role"], m["content"]) for m in MESSAGES]
    assert [m.id for m in messages.data] == [f"{answer.id}-0", f"{answer.id}-1"]
    second = client.chat.completions.messages.list(answer.id, after=f"{answer.id}-0", limit=1)
    assert [m.content for m in second.data] == [MESSAGES[1]["content"]] and second.has_more is False

    updated = client.chat.completions.update(answer.id, metadata={"run": tag, "reviewed": "yes"})
    assert updated.metadata == {"run": tag, "reviewed": "yes"}
    assert [c.id for c in client.chat.completions.list(metadata={"run": tag, "reviewed": "yes"})] == [answer.id]

    # another tenant does not see it, cannot change it nor delete it
    assert _not_found(lambda: other_tenant.chat.completions.retrieve(answer.id))["param"] == "completion_id"
    assert other_tenant.chat.completions.list(metadata={"run": tag}).data == []
    _not_found(lambda: other_tenant.chat.completions.update(answer.id, metadata={}))
    _not_found(lambda: other_tenant.chat.completions.delete(answer.id))

    deleted = client.chat.completions.delete(answer.id)
    assert deleted.id == answer.id and deleted.deleted is True and deleted.object == "chat.completion.deleted"
    assert _not_found(lambda: client.chat.completions.retrieve(answer.id))["param"] == "completion_id"
    _not_found(lambda: client.chat.completions.messages.list(answer.id))
    assert client.chat.completions.list(metadata={"run": tag}).data == []


def test_a_stored_stream_keeps_the_whole_text(client: OpenAI, base_avatar: str) -> None:
    tag = secrets.token_hex(4)
    stream = client.chat.completions.create(model=base_avatar, messages=MESSAGES, max_tokens=16, temperature=0,
                                            stream=True, store=True, metadata={"run": tag})
    ids, parts, finish = set(), [], None
    for chunk in stream:
        ids.add(chunk.id)
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    (completion_id,) = ids
    text = "".join(parts)
    assert text

    got = _stored(client, completion_id)
    assert got.choices[0].message.content == text and got.choices[0].finish_reason == finish
    assert got.model == BASE_MODEL_ID and got.usage is not None and got.usage.completion_tokens > 0
    extra = got.model_extra or {}
    assert extra["avatar"] == base_avatar and extra["requested_model"] == base_avatar
    assert [c.id for c in client.chat.completions.list(model=base_avatar)] == [completion_id]


def test_bad_metadata_is_refused_naming_it(client: OpenAI) -> None:
    for metadata in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=BASE_MODEL_ID, messages=MESSAGES, max_tokens=2, store=True,
                                           metadata=metadata)
        assert isinstance(err.value.body, dict) and err.value.body["param"] == "metadata"


def test_feedback_per_rater_replaced_listed_and_summarised(client: OpenAI, http: httpx.Client) -> None:
    answer = client.chat.completions.create(model=BASE_MODEL_ID, messages=MESSAGES, max_tokens=8, temperature=0,
                                            store=True)
    _stored(client, answer.id)
    url = f"/v1/chat/completions/{answer.id}/feedback"
    first = http.post(url, json={"rating": 2, "comment": "too vague"})
    assert first.status_code == 200, first.text
    assert first.json()["rater"].startswith("api-key:") and first.json()["rating"] == 2
    again = http.post(url, json={"gold": True, "correction": "Swap the intervals for an easy 30-minute run."})
    assert again.json()["id"] == first.json()["id"] and again.json()["rating"] is None
    assert http.post(url, json={"rating": 5, "rater": "coach-maria"}).status_code == 200
    listed = http.get(url).json()
    assert [(f["rater"], f["rating"], f["gold"]) for f in listed["data"]] == [
        (first.json()["rater"], None, True), ("coach-maria", 5, False)]
    summary = (client.chat.completions.retrieve(answer.id).model_extra or {})["feedback"]
    assert summary == {"count": 2, "mean_rating": 5.0, "gold_count": 1, "has_correction": True}

    for body, param in (({}, "rating"), ({"rating": 9}, "rating"), ({"gold": "yes"}, "gold"),
                        ({"rating": 3, "unknown": 1}, "unknown")):
        r = http.post(url, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    r = http.post("/v1/chat/completions/chatcmpl-nope/feedback", json={"rating": 3})
    assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"

    client.chat.completions.delete(answer.id)
    assert http.get(url).status_code == 404
