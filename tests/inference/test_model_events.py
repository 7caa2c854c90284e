"""Model resolution against the running stack's registry: model.* events drop the cached
resolutions of a running inference service at once (the TTL is an hour here), and an avatar's
candidate gets its share of the traffic, sticky per ``user``, the answer saying which version
answered. Real registered adapters (PEFT LoRA, uploaded to the registry), real vLLM engine."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx
import pytest

from coachforge_inference import service
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, candidate_bucket
from coachforge_inference.settings import InferenceSettings
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.grpc_server import InternalChannel

pytestmark = pytest.mark.stack

TENANT = "default"  # the all-in-one owner, whose API key the stack hands out


def _upload(stack, adapter: Path, suffix: str) -> str:  # type: ignore[no-untyped-def]
    files = [("file", (name, (adapter / name).read_bytes()))
             for name in ("adapter_config.json", "adapter_model.safetensors")]
    r = httpx.post(f"{stack.base_url}/models/{BASE_MODEL_ID}/versions", data={"suffix": suffix}, files=files,
                   headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _post(stack, path: str, body: dict[str, object]) -> httpx.Response:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{stack.base_url}{path}", json=body, headers={"Authorization": f"Bearer {stack.api_key}"},
                   timeout=300)
    assert r.status_code == 200, r.text
    return r


def test_activation_and_rollback_reach_a_running_service_before_the_ttl(  # type: ignore[no-untyped-def]
        stack, stack_engine_url: str, lora_adapters: list[Path]) -> None:
    tag = secrets.token_hex(3)
    version = _upload(stack, lora_adapters[0], f"inv{tag}")
    avatar = f"inv-{tag}"
    _post(stack, "/avatars", {"name": avatar, "model": BASE_MODEL_ID})
    deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                         registry=InternalChannel(stack.grpc_target, stack.internal_token),
                         engines=EnginePool([stack_engine_url], health_interval_s=0, api_key=stack.engine_api_key),
                         kafka_bootstrap=stack.kafka_bootstrap)

    async def run() -> None:
        try:
            await deps.start()
            assert await asyncio.to_thread(deps._listener.wait_ready, 30)
            assert (await deps.resolve(TENANT, avatar)).model.id == BASE_MODEL_ID
            assert deps.cached(TENANT, avatar) is not None

            async def wait_for(model_id: str) -> float:
                started = time.monotonic()
                while time.monotonic() - started < 30:
                    if (await deps.resolve(TENANT, avatar)).model.id == model_id:
                        return time.monotonic() - started
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{avatar} still resolves to {(await deps.resolve(TENANT, avatar)).model.id}")

            _post(stack, f"/avatars/{avatar}/activate", {"model": version})
            assert await wait_for(version) < 30  # the cache entry lives an hour: only the event could drop it

            _, routed = await service.complete(deps, TENANT, "/v1/completions", {
                "model": avatar, "prompt": "Easy run:", "max_tokens": 2, "temperature": 0})
            assert routed.model.id == version  # the activated adapter answers, loaded from the registry's copy

            _post(stack, f"/avatars/{avatar}/rollback", {"reason": "test"})
            await wait_for(BASE_MODEL_ID)
        finally:
            await deps.close()

    asyncio.run(run())


def test_candidate_gets_its_share_sticky_per_user(stack, lora_adapters: list[Path]) -> None:  # type: ignore[no-untyped-def]
    tag = secrets.token_hex(3)
    active, candidate = _upload(stack, lora_adapters[1], f"ab{tag}"), _upload(stack, lora_adapters[2], f"ab{tag}")
    avatar = f"ab-{tag}"
    _post(stack, "/avatars", {"name": avatar, "model": active})
    _post(stack, f"/avatars/{avatar}/candidate", {"model": candidate, "traffic_share": 50})
    headers = {"Authorization": f"Bearer {stack.api_key}"}

    def ask(**extra: object) -> httpx.Response:
        r = httpx.post(f"{stack.base_url}/chat/completions", headers=headers, timeout=300, json={
            "model": avatar, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0,
            **extra})
        assert r.status_code == 200, r.text
        return r

    users = [f"athlete-{i}" for i in range(12)]
    expected = {u: candidate if candidate_bucket(TENANT, avatar, u) < 50 else active for u in users}
    assert set(expected.values()) == {active, candidate}
    deadline = time.monotonic() + 30
    while True:  # the stack's cache drops the avatar on model.avatar_updated
        r = ask(user=users[0])
        if r.headers.get("x-coachforge-variant") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for user in users + users[:4]:  # repeated users get the same version again
        r = ask(user=user)
        assert r.headers["x-coachforge-model"] == expected[user] == r.json()["model"], user
        assert r.headers["x-coachforge-variant"] == ("candidate" if expected[user] == candidate else "active")

    _post(stack, f"/avatars/{avatar}/candidate", {"model": candidate, "traffic_share": 100})
    deadline = time.monotonic() + 30
    while ask().headers["x-coachforge-model"] != candidate:  # without a user: random, here always the candidate
        assert time.monotonic() < deadline, "the new share was not seen"
        time.sleep(0.2)
    assert {ask().headers["x-coachforge-model"] for _ in range(4)} == {candidate}


def test_a_deleted_model_is_unloaded_from_the_engines(  # type: ignore[no-untyped-def]
        stack, stack_engine_url: str, lora_adapters: list[Path]) -> None:
    version = _upload(stack, lora_adapters[3], f"del{secrets.token_hex(3)}")
    deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                         registry=InternalChannel(stack.grpc_target, stack.internal_token),
                         engines=EnginePool([stack_engine_url], health_interval_s=0, api_key=stack.engine_api_key),
                         kafka_bootstrap=stack.kafka_bootstrap)

    def on_engine() -> set[str]:
        headers = {"Authorization": f"Bearer {stack.engine_api_key}"}  # the engine requires its key
        return {m["id"] for m in httpx.get(f"{stack_engine_url}/v1/models", headers=headers, timeout=10).json()["data"]}

    async def run() -> None:
        try:
            await deps.start()
            assert await asyncio.to_thread(deps._listener.wait_ready, 30)
            _, routed = await service.complete(deps, TENANT, "/v1/completions", {
                "model": version, "prompt": "Tempo:", "max_tokens": 2, "temperature": 0})
            adapter = routed.model.adapter_name
            assert adapter in on_engine()
            r = httpx.delete(f"{stack.base_url}/models/{version}",
                             headers={"Authorization": f"Bearer {stack.api_key}"})
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 30
            while adapter in on_engine():  # the listener's thread hands the unload to this event loop
                assert time.monotonic() < deadline, "the deleted model's adapter is still loaded"
                await asyncio.sleep(0.2)
            assert deps.cached(TENANT, version) is None
        finally:
            await deps.close()

    asyncio.run(run())


def test_a_resolution_in_use_is_refreshed_before_it_expires(  # type: ignore[no-untyped-def]
        stack, lora_adapters: list[Path]) -> None:
    """With no model.* events (no listener here), a resolution used past half its lifetime is
    fetched again in the background: a model in steady use never waits for the registry on a
    request's path, a change is still seen within the TTL, and a deleted model's entry goes."""
    ttl = 4.0
    tag = secrets.token_hex(3)
    version, doomed = (_upload(stack, lora_adapters[0], f"{prefix}{tag}") for prefix in ("ra", "rd"))
    avatar = f"ra-{tag}"
    _post(stack, "/avatars", {"name": avatar, "model": BASE_MODEL_ID})
    deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=ttl),
                         registry=InternalChannel(stack.grpc_target, stack.internal_token),
                         engines=EnginePool([], health_interval_s=0))

    async def run() -> None:
        try:
            assert (await deps.resolve(TENANT, avatar)).model.id == BASE_MODEL_ID
            _post(stack, f"/avatars/{avatar}/activate", {"model": version})
            while (hit := deps.cached(TENANT, avatar)) is not None and hit.model.id == BASE_MODEL_ID:
                await asyncio.sleep(0.05)
            assert hit is not None and hit.model.id == version  # refreshed while in use: it never expired

            fetched = time.monotonic()
            assert (await deps.resolve(TENANT, doomed)).model.id == doomed
            r = httpx.delete(f"{stack.base_url}/models/{doomed}",
                             headers={"Authorization": f"Bearer {stack.api_key}"})
            assert r.status_code == 200, r.text
            while deps.cached(TENANT, doomed) is not None:
                await asyncio.sleep(0.05)
            assert time.monotonic() - fetched < ttl  # dropped by the refresh (NotFound), not by expiry
        finally:
            await deps.close()

    asyncio.run(run())
