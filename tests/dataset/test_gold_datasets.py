"""Gold dataset versions against the running stack: completions stored through the official
``openai`` SDK, rated over REST (one gold with a correction, one low), then ``POST /v1/datasets``
with ``stored_completions`` reads them from inference over gRPC into a version whose export holds
the correction and whose lineage names the completion."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.auth import add_api_key, create_tenant
from coachforge_shared.db import Database

pytestmark = pytest.mark.stack

CORRECTION = "Swap the intervals for 40 minutes easy in zone 1; you slept badly."


@pytest.fixture(scope="module")
def api_key(stack) -> str:  # type: ignore[no-untyped-def]
    """A tenant of its own, so that only this module's completions are rated."""
    tenant, key = f"gold-{secrets.token_hex(4)}", f"cf-gold-{secrets.token_hex(8)}"
    db = Database(stack.database_url)
    try:
        create_tenant(db, tenant)
        add_api_key(db, tenant, key)
    finally:
        db.dispose()
    return key


@pytest.fixture(scope="module")
def client(stack, api_key: str) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=stack.base_url, api_key=api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(stack, api_key: str) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.base_url.removesuffix("/v1"), timeout=300,
                      headers={"Authorization": f"Bearer {api_key}"}) as c:
        yield c


def _stored(client: OpenAI, completion_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.chat.completions.retrieve(completion_id)
            return
        except openai.NotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_a_gold_dataset_version_from_rated_completions(client: OpenAI, http: httpx.Client) -> None:
    questions = ["I slept badly. Should I still do intervals today?", "Is a long ride fine after a race?",
                 "My legs are sore. Tempo run or rest?"]
    ids = []
    for question in questions:
        answer = client.chat.completions.create(
            model=BASE_MODEL_ID, max_tokens=8, temperature=0, store=True,
            messages=[{"role": "system", "content": "You are a running coach."}, {"role": "user", "content": question}])
        ids.append(answer.id)
    for completion_id in ids:
        _stored(client, completion_id)
    r = http.post(f"/v1/chat/completions/{ids[0]}/feedback",
                  json={"rating": 5, "gold": True, "correction": CORRECTION, "rater": "coach-maria"})
    assert r.status_code == 200, r.text
    r = http.post(f"/v1/chat/completions/{ids[1]}/feedback", json={"rating": 1, "rater": "coach-maria"})
    assert r.status_code == 200, r.text

    r = http.post("/v1/datasets", json={"name": "gold", "stored_completions": {"gold": True},
                                        "validation_fraction": 0.0})
    assert r.status_code == 200, r.text
    version: dict[str, Any] = r.json()
    assert (version["train_examples"], version["validation_examples"]) == (1, 0)
    lineage = version["lineage"]["stored_completions"]
    assert lineage["completion_ids"] == [ids[0]] and lineage["filter"]["gold"] is True

    r = http.get(f"/v1/datasets/{version['id']}/export", params={"format": "openai", "split": "train"})
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0]["messages"][1] == {"role": "user", "content": questions[0]}
    assert lines[0]["messages"][-1] == {"role": "assistant", "content": CORRECTION}

    r = http.post("/v1/datasets", json={"name": "gold", "stored_completions": {"min_rating": 5, "model": "nobody"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stored_completions", r.text
