"""Knowledge bases at request time on the running stack (dataset, registry, inference and coach
over real gRPC, PostgreSQL, a real vLLM engine on CPU): a knowledge base of four hand-made
documents; an avatar whose persona has ``knowledge``; chat completions through the OpenAI SDK
(REST, streamed and not) and gRPC say which chunks they were given (``x-coachforge-knowledge``, in
the search's rank order), and the engine's prompt token count is the persona's system prompt with
the knowledge block, counted with the model's own chat template, against the same request through
an avatar without knowledge. A deleted knowledge base leaves the chat answered without it, marked
``unavailable``. The coach's context gets a ``Principles:`` section from the shipped corpus
(docs/knowledge/training-principles.md, uploaded as a ``knowledge`` file) when a request names its
knowledge base."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from openai import OpenAI

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_inference.knowledge import HEADER, Snippet, knowledge_block
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.auth import add_api_key, create_tenant
from coachforge_shared.db import Database
from polarize.principles import principles_section

pytestmark = pytest.mark.stack

CORPUS = Path(__file__).resolve().parents[2] / "docs" / "knowledge" / "training-principles.md"
PROMPT = "You are Coach Sage. Answer in one short sentence."
DOCS = {
    "taper.md": "# Taper\n\nA taper lasts one to three weeks before a race: cut the volume by 40 to 60 percent and "
                "keep a few short efforts at race pace.\n",
    "sleep.md": "# Sleep\n\nSleep eight hours or more. A short night before a hard session lowers its quality.\n",
    "fuel.md": "# Fuel\n\nTake 60 to 90 grams of carbohydrate per hour on rides and runs longer than ninety "
               "minutes.\n",
    "race-week.md": "# Race week\n\nThe last days of the taper: two short sessions with strides, rest the day before "
                    "the race.\n",
}
ASK = [{"role": "user", "content": "What should I eat on long rides?"},
       {"role": "assistant", "content": "Carbohydrate."},
       {"role": "user", "content": "How many weeks should my taper last before the race?"}]


TENANT = f"knowledge-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def key(stack) -> str:  # type: ignore[no-untyped-def]
    """An API key of a tenant of this module's own (:data:`TENANT`)."""
    key = f"cf-knowledge-{secrets.token_hex(8)}"
    db = Database(stack.database_url)
    try:
        create_tenant(db, TENANT)
        add_api_key(db, TENANT, key)
    finally:
        db.dispose()
    return key


@pytest.fixture(scope="module")
def http(stack, key: str) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(base_url=stack.base_url, timeout=300, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def prompt_tokens(base_model_dir: Path) -> Any:
    """How many prompt tokens the engine counts for ``messages``: the model's chat template, tokenized."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)

    def count(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


def _ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def _lookups(stack: Any, outcome: str) -> float:
    """``coachforge_knowledge_lookups_total`` of :data:`TENANT` for ``outcome`` (the stack's /metrics)."""
    for line in httpx.get(stack.metrics_url).text.splitlines():
        if line.startswith("coachforge_knowledge_lookups_total{") and f'tenant="{TENANT}"' in line \
                and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_avatar_persona_answers_with_its_knowledge(stack, key: str, http: httpx.Client,  # type: ignore[no-untyped-def]
                                                      prompt_tokens: Any) -> None:
    kb = _ok(http.post("/knowledge_bases", json={"name": "coach notes", "chunk_tokens": 64}))["id"]
    docs = {title: _ok(http.post(f"/knowledge_bases/{kb}/documents", json={"text": text, "title": title}))["id"]
            for title, text in DOCS.items()}
    search = _ok(http.post(f"/knowledge_bases/{kb}/search", json={"query": ASK[-1]["content"], "top_k": 2,
                                                                    "max_tokens": 300}))["data"]
    # the last user turn only (query_turns 1): the two taper documents, the race week's first
    assert [h["document_id"] for h in search] == [docs["race-week.md"], docs["taper.md"]]
    ids = ",".join(h["chunk_id"] for h in search)
    block = knowledge_block([Snippet(h["chunk_id"], h["source"], h["text"]) for h in search])

    for name in ("sage", "plain"):
        _ok(http.post("/avatars", json={"name": name, "model": BASE_MODEL_ID}))
    bad = http.put("/avatars/sage/persona", json={"system_prompt": PROMPT, "knowledge": {"knowledge_base": "kb-x1"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "knowledge.knowledge_base", bad.text
    persona = _ok(http.put("/avatars/sage/persona", json={
        "system_prompt": PROMPT, "knowledge": {"knowledge_base": kb, "top_k": 2, "max_tokens": 300}}))
    assert persona["knowledge"] == {"knowledge_base": kb, "top_k": 2, "max_tokens": 300, "query_turns": 1}
    _ok(http.put("/avatars/plain/persona", json={"system_prompt": PROMPT}))

    client = OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=300)
    used = _lookups(stack, "used")
    raw = client.chat.completions.with_raw_response.create(model="sage", messages=ASK, max_tokens=2,  # type: ignore[arg-type]
                                                           extra_body={"ignore_eos": True})
    assert raw.headers[HEADER] == ids
    with_knowledge = raw.parse().usage
    plain_raw = client.chat.completions.with_raw_response.create(model="plain", messages=ASK, max_tokens=2,  # type: ignore[arg-type]
                                                                 extra_body={"ignore_eos": True})
    assert HEADER not in plain_raw.headers
    plain = plain_raw.parse().usage
    assert with_knowledge is not None and plain is not None
    expected = prompt_tokens([{"role": "system", "content": PROMPT + "\n\n" + block}, *ASK])
    assert plain.prompt_tokens == prompt_tokens([{"role": "system", "content": PROMPT}, *ASK])
    assert with_knowledge.prompt_tokens == expected  # what was sent: the persona's prompt, then the knowledge
    assert with_knowledge.prompt_tokens - plain.prompt_tokens == expected - plain.prompt_tokens > 0
    assert _lookups(stack, "used") >= used + 1

    # streamed over REST, and over gRPC: the same chunks, the same prompt
    with http.stream("POST", "/chat/completions", json={
            "model": "sage", "messages": ASK, "max_tokens": 2, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}) as streamed:
        assert streamed.status_code == 200 and streamed.headers[HEADER] == ids
        chunks = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")]
    assert chunks[-1]["usage"]["prompt_tokens"] == expected
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        answer, call = stub.CreateChatCompletion.with_call(inference_pb2.ChatCompletionRequest(
            model="sage", messages=[inference_pb2.ChatMessage(**m) for m in ASK], max_tokens=2),
            metadata=(("authorization", f"Bearer {key}"),))
        assert dict(call.initial_metadata())[HEADER] == ids
        assert answer.usage.prompt_tokens == expected

    # the knowledge base is deleted: the chat is still answered, without knowledge, and says so
    _ok(http.delete(f"/knowledge_bases/{kb}"))
    raw = client.chat.completions.with_raw_response.create(model="sage", messages=ASK, max_tokens=2,  # type: ignore[arg-type]
                                                           extra_body={"ignore_eos": True})
    assert raw.headers[HEADER] == "unavailable"
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens == plain.prompt_tokens
    assert _lookups(stack, "not_found") >= 1


def test_the_coach_context_gets_principles_from_the_shipped_corpus(http: httpx.Client) -> None:
    from polarize.scenarios import TODAY, scenario_batch

    upload = _ok(http.post("/files", files={"file": (CORPUS.name, CORPUS.read_bytes())},
                           data={"purpose": "knowledge"}))
    kb = _ok(http.post("/knowledge_bases", json={"name": "principles"}))["id"]
    _ok(http.post(f"/knowledge_bases/{kb}/documents", json={"file_id": upload["id"]}))
    _, batch = scenario_batch("overreached", 0)
    athlete = "kb-" + secrets.token_hex(3)
    _ok(http.post("/coach/import", json=json.loads(json.dumps(batch).replace("eval-overreached-0", athlete))))
    today = TODAY.isoformat()
    # a model the registry does not know: the rules answer, and the context is still built (and shown)
    ask = {"model": "no-such-model", "today": today, "question": "I feel wrecked. Changes?", "token_budget": 2000}
    plain = _ok(http.post(f"/coach/athletes/{athlete}/recommendations", json=ask))
    assert plain["knowledge"]["status"] == "off" and "Principles:" not in plain["context"]["text"]
    assert plain["state"]["branch"] == "fatigued" and plain["context"]["level"] == "full"

    budget = plain["context"]["tokens"] + 400
    rec = _ok(http.post(f"/coach/athletes/{athlete}/recommendations",
                        json={**ask, "token_budget": budget, "knowledge_base": kb}))
    knowledge = rec["knowledge"]
    assert knowledge["knowledge_base"] == kb and knowledge["status"] == "used" and knowledge["chunk_ids"]
    text = rec["context"]["text"]
    assert text.startswith("Principles:\n- Training principles > Fatigue flags")
    assert text.endswith("\n" + plain["context"]["text"])
    section = text.removesuffix("\n" + plain["context"]["text"])
    assert section.count("\n- ") == len(knowledge["chunk_ids"])
    assert rec["context"]["tokens"] <= budget and rec["context"]["level"] == "full"
    assert section == principles_section([line[2:] for line in section.split("\n")[1:]])
