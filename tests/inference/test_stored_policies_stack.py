"""Stored completion policies on the running stack (real vLLM engine on CPU, real broker, PostgreSQL,
registry and inference over real gRPC): a tenant that stores by default gets its chat completions
kept without asking, scrubbed of personal data, except through an avatar whose own setting says no."""

from __future__ import annotations

import secrets
import time

import httpx
import openai
import pytest
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.auth import add_api_key, create_tenant
from coachforge_shared.db import Database

pytestmark = pytest.mark.stack


def test_a_tenant_storing_by_default_with_an_avatar_that_opts_out(stack) -> None:  # type: ignore[no-untyped-def]
    tenant, key = f"policy-{secrets.token_hex(4)}", f"cf-policy-{secrets.token_hex(8)}"
    db = Database(stack.database_url)
    try:
        create_tenant(db, tenant)
        add_api_key(db, tenant, key)
    finally:
        db.dispose()
    client = OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=300)
    http = httpx.Client(base_url=stack.base_url, timeout=60, headers={"Authorization": f"Bearer {key}"})
    r = http.post("/avatars", json={"name": "quiet", "model": BASE_MODEL_ID, "store": False})
    assert r.status_code == 200 and r.json()["store"] is False, r.text
    r = http.put("/chat/completions/settings", json={"store_by_default": True})
    assert r.status_code == 200, r.text
    assert (r.json()["store_by_default"], r.json()["scrub_pii"], r.json()["retention_days"]) == (True, True, 30)

    messages = [{"role": "user", "content": "I am anna@example.com. One word: rest or run?"}]
    quiet = client.chat.completions.create(model="quiet", messages=messages, max_tokens=4, temperature=0)
    kept = client.chat.completions.create(model=BASE_MODEL_ID, messages=messages, max_tokens=4, temperature=0,
                                          metadata={"phone": "call 555-123-4567"})
    deadline = time.monotonic() + 60
    while True:
        try:
            got = client.chat.completions.retrieve(kept.id)
            break
        except openai.NotFoundError:
            assert time.monotonic() < deadline, "the completion stored by default never arrived"
            time.sleep(0.3)
    assert got.metadata == {"phone": "call [PHONE]"}
    stored_messages = client.chat.completions.messages.list(kept.id).data
    assert [m.content for m in stored_messages] == ["I am [EMAIL]. One word: rest or run?"]
    time.sleep(1)  # published before the kept one: it would have arrived by now
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(quiet.id)
    assert [c.id for c in client.chat.completions.list().data] == [kept.id]
