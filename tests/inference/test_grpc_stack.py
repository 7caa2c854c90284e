"""gRPC ``InferenceService`` against the running stack (real vLLM engine on CPU, real broker,
PostgreSQL): chat and text completions, streamed and not, with the REST semantics (n, stop,
max_completion_tokens, the usage chunk only when asked, the answering model in the metadata), and
every streamed answer billed, over REST too, whether or not the caller asked for the usage chunk."""

from __future__ import annotations

import json
import secrets

import grpc
import httpx
import pytest

from coachforge.inference.v1 import inference_pb2, inference_pb2_grpc
from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack


def _chat(model: str, text: str, **fields: object) -> inference_pb2.ChatCompletionRequest:
    """A one-turn chat request, greedy unless ``fields`` say otherwise."""
    return inference_pb2.ChatCompletionRequest(
        model=model, messages=[inference_pb2.ChatMessage(role="user", content=text)], **{"temperature": 0, **fields})


def _timing(value: str) -> dict[str, float]:
    """``server-timing: gateway;dur=1.20, engine;dur=480.00`` -> {"gateway": 1.2, "engine": 480.0}."""
    return {name.strip(): float(dur.removeprefix("dur=")) for name, dur in (p.split(";") for p in value.split(","))}


def test_streamed_chat_matches_the_unary_answer(stack) -> None:  # type: ignore[no-untyped-def]
    auth = (("authorization", f"Bearer {stack.api_key}"),)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = _chat(BASE_MODEL_ID, "Name one endurance sport.", max_tokens=12)
        answer, call = stub.CreateChatCompletion.with_call(request, metadata=auth)
        metadata = dict(call.initial_metadata())
        assert metadata["x-coachforge-model"] == BASE_MODEL_ID
        timing = _timing(metadata["server-timing"])
        assert timing["engine"] > 0 and timing["gateway"] >= 0
        assert answer.choices[0].content == answer.content and answer.finish_reason in ("stop", "length")

        request.include_usage = True
        responses = stub.StreamChatCompletion(request, metadata=auth)
        chunks = list(responses)
        assert dict(responses.initial_metadata())["x-coachforge-model"] == BASE_MODEL_ID
        assert all(c.model == BASE_MODEL_ID and c.id == chunks[0].id for c in chunks)
        # Greedy decoding: the streamed pieces add up to the unary answer.
        assert "".join(c.choices[0].content for c in chunks if c.choices) == answer.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
            [answer.finish_reason]
        last = chunks[-1]
        assert not last.choices and last.usage.completion_tokens == answer.usage.completion_tokens
        assert last.usage.prompt_tokens == answer.usage.prompt_tokens
        assert not any(c.HasField("usage") for c in chunks[:-1])


def test_sampling_fields_reach_the_engine(stack) -> None:  # type: ignore[no-untyped-def]
    auth = (("authorization", f"Bearer {stack.api_key}"),)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        two = stub.CreateChatCompletion(_chat(BASE_MODEL_ID, "Say hi.", max_tokens=4, n=2, seed=3,
                                              temperature=1.0), metadata=auth)
        assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens <= 8

        capped = stub.CreateChatCompletion(_chat(BASE_MODEL_ID, "Count from 1 to 20.", max_completion_tokens=3),
                                           metadata=auth)
        assert capped.usage.completion_tokens == 3 and capped.finish_reason == "length"

        text = stub.CreateCompletion(inference_pb2.CompletionRequest(
            model=BASE_MODEL_ID, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0), metadata=auth)
        assert text.model == BASE_MODEL_ID and text.choices[0].content and text.usage.prompt_tokens > 0
        # The answer's second word as a stop sequence: the same greedy answer ends just before it.
        words = text.choices[0].content.split()
        assert len(words) >= 2, text.choices[0].content
        stopped = stub.CreateCompletion(inference_pb2.CompletionRequest(
            model=BASE_MODEL_ID, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[words[1]]), metadata=auth)
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].content == text.choices[0].content[:text.choices[0].content.index(words[1])]

        streamed = list(stub.StreamCompletion(inference_pb2.CompletionRequest(
            model=BASE_MODEL_ID, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0), metadata=auth))
        assert "".join(c.choices[0].content for c in streamed if c.choices) == text.choices[0].content
        assert not any(c.HasField("usage") for c in streamed)  # not asked for


def test_bad_requests_are_field_errors(stack) -> None:  # type: ignore[no-untyped-def]
    auth = (("authorization", f"Bearer {stack.api_key}"),)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        cases = [
            (stub.StreamChatCompletion, inference_pb2.ChatCompletionRequest(model=BASE_MODEL_ID), "messages",
             grpc.StatusCode.INVALID_ARGUMENT),
            (stub.StreamCompletion, inference_pb2.CompletionRequest(model=BASE_MODEL_ID), "prompt",
             grpc.StatusCode.INVALID_ARGUMENT),
            (stub.StreamChatCompletion, _chat(f"ft:nope-{secrets.token_hex(4)}", "x"), "model",
             grpc.StatusCode.NOT_FOUND),
            (stub.CreateChatCompletion, _chat(BASE_MODEL_ID, "x", response_format_json="{nope"), "response_format",
             grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for method, request, param, code in cases:
            with pytest.raises(grpc.RpcError) as err:
                answer = method(request, metadata=auth)
                if method is not stub.CreateChatCompletion:
                    list(answer)  # a stream's error arrives when it is read
            assert err.value.code() == code, (request, err.value.details())
            assert dict(err.value.trailing_metadata())["x-error-param"] == param


def test_every_stream_is_billed(stack, base_avatar: str, avatar_usage) -> None:  # type: ignore[no-untyped-def]
    """A stream whose caller did not ask for the usage chunk still records its tokens and cost;
    the caller does not get the chunk."""
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    root = stack.base_url.removesuffix("/v1")
    avatar = base_avatar

    body = {"model": avatar, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "temperature": 0, "stream": True}
    lines = []
    with httpx.stream("POST", f"{root}/v1/chat/completions", headers=headers, json=body, timeout=300) as resp:
        assert resp.status_code == 200
        lines = list(resp.iter_lines())
        timing = _timing(resp.headers["server-timing"])  # up to the first chunk
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert chunks and not any(c.get("usage") for c in chunks) and "data: [DONE]" in lines
    assert timing["engine"] > 0 and timing["gateway"] >= 0
    metrics = httpx.get(stack.metrics_url).text
    assert 'coachforge_inference_gateway_seconds_count{mode="stream"}' in metrics

    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        streamed = list(stub.StreamChatCompletion(_chat(avatar, "Hi", max_tokens=4),
                                                  metadata=(("authorization", f"Bearer {stack.api_key}"),)))
        assert streamed and not any(c.HasField("usage") for c in streamed)

    rows = avatar_usage(avatar, 2)
    assert len(rows) == 1 and rows[0]["messages"] == 2, rows
    assert 0 < rows[0]["output_tokens"] <= 2 * 4  # type: ignore[operator]
    assert rows[0]["input_tokens"] > 0 and rows[0]["cost_usd"] > 0  # type: ignore[operator]
