"""A streamed chat completion whose client hangs up before the end, against the all-in-one stack
(the real vLLM engine, broker, usage consumer and PostgreSQL): the request is billed once, for its
prompt and the tokens the engine generated until the client went away."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.stack

QUESTION = [{"role": "user", "content": "Write a long story about a runner training for her first marathon."}]
MAX_TOKENS = 600


def test_an_abandoned_stream_is_billed_once_for_its_prompt_and_the_tokens_generated(
        stack: Any, base_avatar: str, avatar_usage: Any) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    # The prompt's tokens, as the engine counts them (a finished one-token answer).
    r = httpx.post(f"{stack.base_url}/chat/completions", headers=headers, timeout=300,
                   json={"model": base_avatar, "messages": QUESTION, "max_tokens": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    prompt_tokens = r.json()["usage"]["prompt_tokens"]
    assert prompt_tokens > 0
    assert avatar_usage(base_avatar, 1)[0]["output_tokens"] == 1

    received: list[dict[str, Any]] = []
    with httpx.Client(timeout=300) as client, client.stream(
            "POST", f"{stack.base_url}/chat/completions", headers=headers,
            json={"model": base_avatar, "messages": QUESTION, "max_tokens": MAX_TOKENS, "ignore_eos": True,
                  "temperature": 0, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                received.append(json.loads(line[6:]))
                if len(received) == 2:
                    break  # leaving the block closes the connection: the client went away
    assert all("usage" not in chunk for chunk in received), received  # the engine's running count stays inside

    (row,) = avatar_usage(base_avatar, 2)
    assert row["messages"] == 2 and row["input_tokens"] == 2 * prompt_tokens, row
    partial = row["output_tokens"] - 1
    assert 1 <= partial < MAX_TOKENS, row  # generated until the hang-up: some, not all

    # Counted once: a later request (after it on the same partition) adds exactly its own usage.
    r = httpx.post(f"{stack.base_url}/chat/completions", headers=headers, timeout=300,
                   json={"model": base_avatar, "messages": QUESTION, "max_tokens": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    (row,) = avatar_usage(base_avatar, 3)
    assert (row["messages"], row["input_tokens"], row["output_tokens"]) == (3, 3 * prompt_tokens, partial + 2), row
