"""Inference logic: resolve the requested model through the registry, make sure its adapter is
loaded, call the engine, and record tokens, latency and cost."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from coachforge.inference.v1 import inference_pb2
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_inference.engine import Engine
from coachforge_inference.metrics import COST, FALLBACKS, LATENCY, REQUESTS, TOKENS, TTFT
from coachforge_inference.settings import InferenceSettings, Price
from coachforge_shared.db import Database
from coachforge_shared.errors import CoachForgeError, InvalidArgument, NotFound, Unavailable
from coachforge_shared.events import EventPublisher
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.inference")


@dataclass
class InferenceDeps:
    settings: InferenceSettings
    engine: Engine
    registry: InternalChannel
    publisher: EventPublisher | None = None
    db: Database | None = None
    """Where daily usage rows live (``GET /v1/usage``)."""
    _cache: dict[tuple[str, str], tuple[float, registry_pb2.Model]] = field(default_factory=dict)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock)

    def cached(self, tenant_id: str, model_id: str) -> registry_pb2.Model | None:
        """The cached resolution of ``model_id``, if still fresh (no registry call)."""
        with self._cache_lock:
            hit = self._cache.get((tenant_id, model_id))
        if hit is not None and time.monotonic() - hit[0] < self.settings.resolve_cache_s:
            return hit[1]
        return None

    async def aresolve(self, tenant_id: str, model_id: str) -> registry_pb2.Model:
        """:meth:`resolve` for the event loop: a cache hit costs no thread hop, a miss asks the
        registry from a worker thread."""
        model = self.cached(tenant_id, model_id)
        if model is not None:
            return model
        return await anyio.to_thread.run_sync(self.resolve, tenant_id, model_id)

    def resolve(self, tenant_id: str, model_id: str) -> registry_pb2.Model:
        """The registry's answer for ``model_id``, cached for a few seconds."""
        key = (tenant_id, model_id)
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.settings.resolve_cache_s:
            return hit[1]
        stub = registry_pb2_grpc.RegistryServiceStub(self.registry.channel)
        with typed_rpc_errors():
            model: registry_pb2.Model = stub.GetModel(registry_pb2.GetModelRequest(model_id=model_id),
                                                      metadata=self.registry.metadata(tenant_id), timeout=10)
        with self._cache_lock:
            self._cache[key] = (now, model)
        return model


def price_of(settings: InferenceSettings, model: registry_pb2.Model) -> Price:
    if model.id in settings.prices:
        return settings.prices[model.id]
    return settings.fine_tuned_price if model.adapter_name else settings.base_price


@dataclass
class Routed:
    """Where a request goes: the model that answers and the engine's request body."""

    model: registry_pb2.Model
    engine_body: dict[str, Any]
    fallback_from: str | None = None
    """The model that could not be served when the base model answers instead (avatar policy "base")."""
    avatar: str = ""
    """The avatar alias the caller used ("" when the model was named directly)."""


def _model_id(body: dict[str, Any]) -> str:
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidArgument("you must provide a model parameter", param="model")
    return model_id


def _fallback(tenant_id: str, model: registry_pb2.Model, engine_body: dict[str, Any], avatar: str) -> Routed:
    """The adapter cannot be served: the base model answers where the avatar allows it, else the error stands."""
    FALLBACKS.labels(tenant_id, model.id).inc()
    log.warning("adapter unavailable; answering from the base model", model=model.id, base=model.base_model)
    base = registry_pb2.Model(id=model.base_model, owned_by=model.owned_by, base_model=model.base_model)
    engine_body["model"] = model.base_model
    return Routed(base, engine_body, fallback_from=model.id, avatar=avatar)


async def _aprepare(deps: InferenceDeps, tenant_id: str, body: dict[str, Any]) -> Routed:
    model_id = _model_id(body)
    model = await deps.aresolve(tenant_id, model_id)
    avatar = model_id if model.fallback else ""
    engine_body = dict(body)
    if not model.adapter_name:
        engine_body["model"] = model.id
        return Routed(model, engine_body, avatar=avatar)
    try:
        await deps.engine.aensure_adapter(model.adapter_name, model.adapter_uri)
    except Unavailable:
        if model.fallback != "base":
            raise
        return _fallback(tenant_id, model, engine_body, avatar)
    engine_body["model"] = model.adapter_name
    return Routed(model, engine_body, avatar=avatar)


def _prepare(deps: InferenceDeps, tenant_id: str, body: dict[str, Any]) -> Routed:
    model_id = _model_id(body)
    model = deps.resolve(tenant_id, model_id)
    avatar = model_id if model.fallback else ""  # the registry sets a fallback policy only for avatars
    engine_body = dict(body)
    if not model.adapter_name:
        engine_body["model"] = model.id
        return Routed(model, engine_body, avatar=avatar)
    try:
        deps.engine.ensure_adapter(model.adapter_name, model.adapter_uri)
    except Unavailable:
        if model.fallback != "base":
            raise
        return _fallback(tenant_id, model, engine_body, avatar)
    engine_body["model"] = model.adapter_name
    return Routed(model, engine_body, avatar=avatar)


def record_usage(deps: InferenceDeps, tenant_id: str, model: registry_pb2.Model, usage: dict[str, Any] | None,
                 started: float, avatar: str = "") -> None:
    elapsed = time.perf_counter() - started
    LATENCY.labels(model.id).observe(elapsed)
    REQUESTS.labels(tenant_id, model.id, "ok").inc()
    if not usage:
        return
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    price = price_of(deps.settings, model)
    cost = (prompt * price.input + completion * price.output) / 1_000_000
    TOKENS.labels(tenant_id, model.id, "prompt").inc(prompt)
    TOKENS.labels(tenant_id, model.id, "completion").inc(completion)
    COST.labels(tenant_id, model.id).inc(cost)
    if deps.publisher is not None:
        try:
            deps.publisher.publish("usage.recorded", inference_pb2.UsageRecorded(
                model=model.id, base_model=model.base_model, prompt_tokens=prompt, completion_tokens=completion,
                cost_usd=cost, latency_seconds=elapsed, avatar=avatar), tenant_id, key=model.id, wait=False)
        except Exception:  # usage events must never fail an answered request
            log.exception("usage event not published", model=model.id)


def _call(deps: InferenceDeps, path: str, model: registry_pb2.Model, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return deps.engine.post(path, body)
    except NotFound:
        if not model.adapter_name:
            raise
        # The engine lost the adapter (restart): load it again once and retry.
        deps.engine.forget(model.adapter_name)
        deps.engine.ensure_adapter(model.adapter_name, model.adapter_uri)
        return deps.engine.post(path, body)


def complete(deps: InferenceDeps, tenant_id: str, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], Routed]:
    """A non-streaming chat or text completion; ``model`` in the answer is the model that answered."""
    started = time.perf_counter()
    try:
        routed = _prepare(deps, tenant_id, body)
        result = _call(deps, path, routed.model, routed.engine_body)
    except CoachForgeError:
        REQUESTS.labels(tenant_id, str(body.get("model"))[:100], "error").inc()
        raise
    result["model"] = routed.model.id
    record_usage(deps, tenant_id, routed.model, result.get("usage"), started, routed.avatar)
    return result, routed


def stream(deps: InferenceDeps, tenant_id: str, path: str, body: dict[str, Any]) -> tuple[Iterator[bytes], Routed]:
    """A streaming completion as server-sent events; errors before the first byte are raised."""
    started = time.perf_counter()
    routed = _prepare(deps, tenant_id, body)
    model = routed.model
    upstream = deps.engine.stream(path, routed.engine_body)
    first = next(upstream)  # raises before anything was sent to the client

    def events() -> Iterator[bytes]:
        usage = None
        ttft_recorded = False
        for line in itertools.chain([first], upstream):
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                chunk["model"] = model.id
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if not ttft_recorded and chunk.get("choices"):
                    TTFT.labels(model.id).observe(time.perf_counter() - started)
                    ttft_recorded = True
                line = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n"
            yield line
        record_usage(deps, tenant_id, model, usage, started, routed.avatar)

    return events(), routed


# --- The REST path: async end to end (no thread hop per request), each body encoded once. ---

def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _rename_model(raw: bytes, engine_model: str, model_id: str) -> bytes | None:
    """``raw`` with its first ``"model":"<engine model>"`` replaced by the public model id, or None
    when the engine wrote it another way (the caller then re-encodes)."""
    needle = b'"model":' + _dumps(engine_model)
    if needle not in raw:
        return None
    return raw.replace(needle, b'"model":' + _dumps(model_id), 1)


async def _acall(deps: InferenceDeps, path: str, routed: Routed) -> Any:
    content = _dumps(routed.engine_body)
    model = routed.model
    try:
        return await deps.engine.apost(path, content)
    except NotFound:
        if not model.adapter_name:
            raise
        deps.engine.forget(model.adapter_name)  # the engine lost the adapter (restart): load it again once
        await deps.engine.aensure_adapter(model.adapter_name, model.adapter_uri)
        return await deps.engine.apost(path, content)


async def acomplete(deps: InferenceDeps, tenant_id: str, path: str, body: dict[str, Any]) -> tuple[bytes, Routed]:
    """A non-streaming completion: the engine's JSON with ``model`` set to the model that answered."""
    started = time.perf_counter()
    try:
        routed = await _aprepare(deps, tenant_id, body)
        r = await _acall(deps, path, routed)
    except CoachForgeError:
        REQUESTS.labels(tenant_id, str(body.get("model"))[:100], "error").inc()
        raise
    raw = r.content
    result = json.loads(raw)
    renamed = _rename_model(raw, routed.engine_body["model"], routed.model.id)
    if renamed is None:
        result["model"] = routed.model.id
        renamed = _dumps(result)
    record_usage(deps, tenant_id, routed.model, result.get("usage"), started, routed.avatar)
    return renamed, routed


async def astream(deps: InferenceDeps, tenant_id: str, path: str,
                  body: dict[str, Any]) -> tuple[AsyncIterator[bytes], Routed]:
    """A streaming completion as server-sent events; errors before the first byte are raised."""
    started = time.perf_counter()
    routed = await _aprepare(deps, tenant_id, body)
    model = routed.model
    upstream = deps.engine.astream(path, _dumps(routed.engine_body))
    first = await upstream.__anext__()  # raises before anything was sent to the client
    engine_model = routed.engine_body["model"]

    async def events() -> AsyncIterator[bytes]:
        usage = None
        ttft_recorded = False
        line = first
        try:
            while True:
                if line.startswith(b"data: {"):
                    renamed = _rename_model(line, engine_model, model.id)
                    if renamed is None or b'"usage":{' in line:
                        chunk = json.loads(line[6:])
                        chunk["model"] = model.id
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        renamed = b"data: " + _dumps(chunk) + b"\n"
                    if not ttft_recorded and b'"choices":[{' in line:
                        TTFT.labels(model.id).observe(time.perf_counter() - started)
                        ttft_recorded = True
                    line = renamed
                yield line
                try:
                    line = await upstream.__anext__()
                except StopAsyncIteration:
                    break
        finally:
            await upstream.aclose()
        record_usage(deps, tenant_id, model, usage, started, routed.avatar)

    return events(), routed
