"""Two base models on the running stack, each served by its own real vLLM engine: the second (the
bundled weights under another id) is listed, answers requests for itself and for an adapter
registered on it (loaded into its engine only), and its usage is billed under its own ids, while the
first base keeps answering from the first engine."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from coachforge_launcher.models import BASE_MODEL_ID

pytestmark = pytest.mark.stack


def _served(engine_url: str, key: str) -> set[str]:
    r = httpx.get(f"{engine_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    r.raise_for_status()
    return {m["id"] for m in r.json()["data"]}


def _requests_done(engine_url: str) -> float:
    """vLLM's count of finished requests (its /metrics)."""
    text = httpx.get(f"{engine_url}/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def test_requests_adapters_and_usage_go_to_the_right_base(stack, stack_engine_url: str, lora_adapters: list[Path],  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    second, second_url = stack.second_base, stack.second_engine_url
    client = OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)
    listed = {m.id for m in client.models.list().data}
    assert {BASE_MODEL_ID, second} <= listed
    assert _served(second_url, stack.engine_api_key) == {second}

    before_first, before_second = _requests_done(stack_engine_url), _requests_done(second_url)
    answer = client.chat.completions.with_raw_response.create(
        model=second, messages=[{"role": "user", "content": "Say hi."}], max_tokens=3, temperature=0)
    assert answer.headers["x-coachforge-model"] == second and answer.parse().model == second
    assert _requests_done(second_url) == before_second + 1
    assert _requests_done(stack_engine_url) == before_first

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_adapters[0], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = second  # trained on the second base (the same weights)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    http = httpx.Client(base_url=stack.base_url, timeout=120, headers={"Authorization": f"Bearer {stack.api_key}"})
    files = [("file", (name, (adapter / name).read_bytes())) for name in ("adapter_config.json",
                                                                         "adapter_model.safetensors")]
    created = http.post(f"/models/{second}/versions", files=files, data={"suffix": "second-base"})
    assert created.status_code == 200, created.text
    tuned = created.json()["id"]
    assert tuned.startswith(f"ft:{second}:")
    wrong = http.post(f"/models/{BASE_MODEL_ID}/versions", files=files, data={"suffix": "wrong-base"})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "incompatible_adapter"

    reply = client.chat.completions.create(model=tuned, messages=[{"role": "user", "content": "Say hi."}],
                                           max_tokens=3, temperature=0)
    assert reply.model == tuned
    second_served, first_served = _served(second_url, stack.engine_api_key), _served(stack_engine_url,
                                                                                      stack.engine_api_key)
    assert len(second_served - {second}) == 1 and first_served & (second_served - {second}) == set()
    assert _requests_done(second_url) == before_second + 2
    assert _requests_done(stack_engine_url) == before_first

    deadline = time.monotonic() + 60
    while True:
        rows = http.get("/usage", params={"group_by": "model"}).json()["data"]
        billed = {r["model"]: r for r in rows}
        if {second, tuned} <= set(billed) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert billed[second]["messages"] >= 1 and billed[tuned]["messages"] == 1
    assert billed[tuned]["output_tokens"] == reply.usage.completion_tokens  # type: ignore[union-attr]
    deleted = http.delete(f"/models/{tuned}")
    assert deleted.status_code == 200, deleted.text
