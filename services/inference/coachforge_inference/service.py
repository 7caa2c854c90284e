"""Inference logic: resolve the requested model through the registry, make sure its adapter is
loaded, call the engine, and record tokens, latency and cost."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

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


def _prepare(deps: InferenceDeps, tenant_id: str, body: dict[str, Any]) -> Routed:
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidArgument("you must provide a model parameter", param="model")
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
        FALLBACKS.labels(tenant_id, model.id).inc()
        log.warning("adapter unavailable; answering from the base model", model=model.id, base=model.base_model)
        base = registry_pb2.Model(id=model.base_model, owned_by=model.owned_by, base_model=model.base_model)
        engine_body["model"] = model.base_model
        return Routed(base, engine_body, fallback_from=model.id, avatar=avatar)
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
