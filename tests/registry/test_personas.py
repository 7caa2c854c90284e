"""Avatar personas on the running stack (registry and inference over real gRPC, the real broker
carrying model.avatar_updated to inference's cache, PostgreSQL, a real vLLM engine on CPU): a
persona set over REST is applied to chat completions through the avatar, REST and gRPC, streamed
and not. The engine's token counts show what it was sent: the prompt is exactly the persona's
system prompt (its template filled from the request's metadata) and few-shot turns before the
conversation, counted with the model's own chat template; the persona's max_tokens limits the
answer unless the request sends its own (``ignore_eos`` makes the engine generate up to the
limit). Versions, history, rollback, a candidate that is another persona version at a 100% share,
and bad input refused naming the field."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.auth import add_api_key, create_tenant
from coachforge_shared.db import Database

pytestmark = pytest.mark.stack

PERSONA_HEADER = "x-coachforge-persona-version"
PROMPT = ("You are Coach Anna, an endurance coach. The athlete you talk to is {metadata.athlete}. "
          "Answer in one short sentence.")
FEW_SHOT = [{"role": "user", "content": "Should I run today?"},
            {"role": "assistant", "content": "Yes, an easy 30 minutes."}]
ASK = [{"role": "user", "content": "Count from one to fifty in words."}]


@pytest.fixture(scope="module")
def http(stack) -> httpx.Client:  # type: ignore[no-untyped-def]
    tenant, key = f"persona-{secrets.token_hex(4)}", f"cf-persona-{secrets.token_hex(8)}"
    db = Database(stack.database_url)
    try:
        create_tenant(db, tenant)
        add_api_key(db, tenant, key)
    finally:
        db.dispose()
    return httpx.Client(base_url=stack.base_url, timeout=120, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def prompt_tokens(base_model_dir: Path) -> Any:
    """How many prompt tokens the engine counts for ``messages``: the model's chat template, tokenized."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)

    def count(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


def _chat(http: httpx.Client, **body: Any) -> httpx.Response:
    r = http.post("/chat/completions", json={"model": "anna", "messages": ASK, "ignore_eos": True, **body})
    assert r.status_code == 200, r.text
    return r


def _until(http: httpx.Client, version: int, **body: Any) -> httpx.Response:
    """The first answer applying persona ``version`` (inference drops its cached avatar when the
    registry's model.avatar_updated arrives over the broker)."""
    deadline = time.monotonic() + 60
    while True:
        r = _chat(http, **body)
        if r.headers.get(PERSONA_HEADER) == str(version):
            return r
        assert time.monotonic() < deadline, f"persona version {version} never applied: {dict(r.headers)}"
        time.sleep(0.5)


def _usage(r: httpx.Response) -> tuple[int, int]:
    usage = r.json()["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


def _system(athlete: str) -> dict[str, str]:
    return {"role": "system", "content": PROMPT.replace("{metadata.athlete}", athlete)}


def test_a_persona_is_applied_versioned_rolled_back_and_tried_as_a_candidate(  # type: ignore[no-untyped-def]
        stack, http: httpx.Client, prompt_tokens: Any) -> None:
    r = http.post("/avatars", json={"name": "anna", "model": BASE_MODEL_ID})
    assert r.status_code == 200, r.text
    r = _chat(http, max_tokens=2)
    assert PERSONA_HEADER not in r.headers
    assert _usage(r) == (prompt_tokens(ASK), 2)

    # Bad input: 400 naming the field, nothing written.
    for body, param in (({"sampling": {"temperature": 3}}, "sampling.temperature"),
                        ({"sampling": {"stop": ["a", "b", "c", "d", "e"]}}, "sampling.stop"),
                        ({"few_shot": [{"role": "user", "content": "hi"}]}, "few_shot"),
                        ({"system_prompt": "x" * 8001}, "system_prompt"),
                        ({"system_mode": "replace", "tone": "warm"}, "tone")):
        r = http.put("/avatars/anna/persona", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert http.get("/avatars/anna/persona").status_code == 404

    # Version 1: system prompt template, few-shot turns, a max_tokens default.
    r = http.put("/avatars/anna/persona", json={"system_prompt": PROMPT, "few_shot": FEW_SHOT,
                                                "sampling": {"max_tokens": 3, "temperature": 0},
                                                "reason": "launch"})
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    got = http.get("/avatars/anna/persona").json()
    assert (got["version"], got["system_prompt"], got["few_shot"], got["sampling"]) == (
        1, PROMPT, FEW_SHOT, {"max_tokens": 3, "temperature": 0})

    r = _until(http, 1, metadata={"athlete": "Ida"})
    v1_prompt = prompt_tokens([_system("Ida"), *FEW_SHOT, *ASK])
    assert _usage(r) == (v1_prompt, 3)  # what was sent: the persona, then the conversation
    assert v1_prompt > prompt_tokens(ASK)
    r = _chat(http, metadata={"athlete": "Ida Maria Johansson-Lindqvist"})
    assert _usage(r)[0] == prompt_tokens([_system("Ida Maria Johansson-Lindqvist"), *FEW_SHOT, *ASK])
    r = _chat(http)  # no metadata: the placeholder renders empty
    assert _usage(r)[0] == prompt_tokens([_system(""), *FEW_SHOT, *ASK])
    r = _chat(http, max_tokens=7, metadata={"athlete": "Ida"})  # the request's own max_tokens wins
    assert _usage(r) == (v1_prompt, 7)
    own = {"role": "system", "content": "Answer in German."}
    r = _chat(http, messages=[own, *ASK])  # prepend: the request's own system message stays, not the persona's
    assert _usage(r)[0] == prompt_tokens([own, *FEW_SHOT, *ASK])

    # Streamed over REST, and over gRPC.
    with http.stream("POST", "/chat/completions", json={
            "model": "anna", "messages": ASK, "metadata": {"athlete": "Ida"}, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}) as streamed:
        assert streamed.status_code == 200 and streamed.headers[PERSONA_HEADER] == "1"
        chunks = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")]
    assert (chunks[-1]["usage"]["prompt_tokens"], chunks[-1]["usage"]["completion_tokens"]) == (v1_prompt, 3)
    auth = (("authorization", http.headers["Authorization"]),)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        answer, call = stub.CreateChatCompletion.with_call(inference_pb2.ChatCompletionRequest(
            model="anna", messages=[inference_pb2.ChatMessage(**m) for m in ASK], metadata={"athlete": "Ida"}),
            metadata=auth)
        assert dict(call.initial_metadata())[PERSONA_HEADER] == "1"
        assert answer.usage.prompt_tokens == v1_prompt and answer.usage.completion_tokens <= 3

    # Version 2 replaces the request's system messages.
    r = http.put("/avatars/anna/persona", json={"system_prompt": "Be terse.", "system_mode": "replace",
                                                "sampling": {"max_tokens": 5}, "reason": "terser"})
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    r = _until(http, 2, messages=[own, *ASK])
    assert _usage(r) == (prompt_tokens([{"role": "system", "content": "Be terse."}, *ASK]), 5)

    # Rollback: version 3 has version 1's settings.
    r = http.post("/avatars/anna/persona/rollback", json={"reason": "too terse"})
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["system_prompt"], r.json()["few_shot"]) == (3, PROMPT, FEW_SHOT)
    r = _until(http, 3, metadata={"athlete": "Ida"})
    assert _usage(r) == (v1_prompt, 3)
    versions = http.get("/avatars/anna/persona/versions").json()["data"]
    assert [(v["version"], v["active"], v["reason"]) for v in versions] == [
        (3, True, "too terse"), (2, False, "terser"), (1, False, "launch")]

    # A candidate that is version 2 of the persona, at a 100% share.
    r = http.post("/avatars/anna/candidate", json={"candidate_persona_version": 2, "traffic_share": 100,
                                                   "reason": "try terse again"})
    assert r.status_code == 200, r.text
    assert (r.json()["candidate_model"], r.json()["candidate_persona_version"]) == (None, 2)
    r = _until(http, 2, messages=[own, *ASK], user="athlete-7")
    assert r.headers["x-coachforge-variant"] == "candidate" and r.headers["x-coachforge-model"] == BASE_MODEL_ID
    assert _usage(r) == (prompt_tokens([{"role": "system", "content": "Be terse."}, *ASK]), 5)

    history = http.get("/avatars/anna/history").json()["data"]
    assert [(c["action"], c["reason"]) for c in history] == [
        ("candidate_set", "try terse again"), ("persona_rollback", "too terse"), ("persona_set", "terser"),
        ("persona_set", "launch"), ("created", "")]
    assert [c["detail"].get("version") for c in history[1:4]] == [3, 2, 1]
    assert history[1]["detail"]["restored_version"] == 1
    assert all(c["actor"].startswith("api-key:") and c["created_at"] > 0 for c in history)
