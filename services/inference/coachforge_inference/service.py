"""Inference logic: resolve the requested model through the registry (cached; model.* events drop a
tenant's entries), pick an engine, make sure the adapter is loaded there, call the engine (once
more on another engine when the first could not be reached before anything was streamed), and
record tokens, latency and cost."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from coachforge.inference.v1 import inference_pb2
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_inference.engine import Engine, EngineUnreachable
from coachforge_inference.metrics import (
    CANDIDATE_ROUTED,
    COST,
    FALLBACKS,
    GATEWAY,
    LATENCY,
    REQUESTS,
    RETRIES,
    TOKENS,
    TTFT,
)
from coachforge_inference.pool import EnginePool
from coachforge_inference.settings import InferenceSettings, Price
from coachforge_shared.db import Database
from coachforge_shared.errors import CoachForgeError, InvalidArgument, NotFound, Unavailable
from coachforge_shared.events import EventPublisher
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.inference")

#: The ``model`` label of a failed request whose model never resolved (the requested name is
#: whatever the client typed, so it must not become a label value).
UNRESOLVED = "unresolved"

T = TypeVar("T")

REFRESH_AHEAD = 0.5
"""A cached resolution older than this share of ``resolve_cache_s`` is fetched again in the
background when it is used (refresh-ahead: a model in steady use never expires)."""

FALLBACK_HEADER = "x-coachforge-fallback"
MODEL_HEADER = "x-coachforge-model"
VARIANT_HEADER = "x-coachforge-variant"
TIMING_HEADER = "server-timing"


@dataclass(frozen=True)
class Resolution:
    """What a requested model id resolves to: the model, and for an avatar with a candidate, the
    candidate and its share of the traffic (0-100)."""

    model: registry_pb2.Model
    candidate: registry_pb2.Model | None = None
    share: int = 0


@dataclass
class InferenceDeps:
    settings: InferenceSettings
    engine: Engine | None
    """The engine built for ``engine_url`` (reused by the pool when it is one of its engines)."""
    registry: InternalChannel
    publisher: EventPublisher | None = None
    db: Database | None = None
    """Where daily usage rows live (``GET /v1/usage``)."""
    engines: EnginePool | None = None
    """The engines requests are routed to (default: the ones ``settings`` name)."""
    kafka_bootstrap: str | None = None
    """Where model.* events are read from to drop stale resolutions (none: only the TTL)."""
    _cache: dict[tuple[str, str], tuple[float, Resolution]] = field(default_factory=dict)
    _generation: dict[str, int] = field(default_factory=dict)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock)
    _refreshing: set[tuple[str, str]] = field(default_factory=set)
    _listener: Any = None

    def __post_init__(self) -> None:
        if self.engines is None:
            self.engines = EnginePool.from_settings(self.settings, self.engine)

    @property
    def pool(self) -> EnginePool:
        assert self.engines is not None
        return self.engines

    def start(self) -> None:
        """Start the engines' health checks and the model.* event listener (idempotent; the first
        resolution starts them too)."""
        self.pool.start()
        with self._cache_lock:
            if not self.kafka_bootstrap or self._listener is not None:
                return
            from coachforge_inference.invalidation import ModelEventListener

            self._listener = ModelEventListener(self.kafka_bootstrap, self.invalidate, deleted=self.pool.drop_adapter)
        self._listener.start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self.pool.close()
        if self.engine is not None:
            self.engine.close()

    async def aclose(self) -> None:
        """Close the async engine clients (call from the event loop that used them)."""
        await self.pool.aclose()
        if self.engine is not None:
            await self.engine.aclose()

    # --- resolution cache ---

    def invalidate(self, tenant_id: str) -> int:
        """Drop every cached resolution of ``tenant_id`` (a model.* event arrived); how many were dropped."""
        with self._cache_lock:
            self._generation[tenant_id] = self._generation.get(tenant_id, 0) + 1
            keys = [k for k in self._cache if k[0] == tenant_id]
            for key in keys:
                del self._cache[key]
        return len(keys)

    def cached(self, tenant_id: str, model_id: str) -> Resolution | None:
        """The cached resolution of ``model_id``, if still fresh (no registry call). One past half
        its lifetime is fetched again from a background thread meanwhile, so that a model in steady
        use is never waited for on a request's path."""
        key = (tenant_id, model_id)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            age = time.monotonic() - hit[0]
            if age >= self.settings.resolve_cache_s:
                return None
            refresh = age >= self.settings.resolve_cache_s * REFRESH_AHEAD and key not in self._refreshing
            if refresh:
                self._refreshing.add(key)
        if refresh:
            threading.Thread(target=self._refresh, args=key, name="resolve-refresh", daemon=True).start()
        return hit[1]

    def _refresh(self, tenant_id: str, model_id: str) -> None:
        try:
            self._fetch(tenant_id, model_id)
        except NotFound:  # gone: the next request gets the error
            with self._cache_lock:
                self._cache.pop((tenant_id, model_id), None)
        except Exception as err:  # the entry stays until it expires; then a request asks the registry itself
            log.warning("model resolution not refreshed", model=model_id, error=str(err))
        finally:
            with self._cache_lock:
                self._refreshing.discard((tenant_id, model_id))

    async def aresolve(self, tenant_id: str, model_id: str) -> Resolution:
        """:meth:`resolve` for the event loop: a cache hit costs no thread hop, a miss asks the
        registry from a worker thread."""
        hit = self.cached(tenant_id, model_id)
        if hit is not None:
            return hit
        return await anyio.to_thread.run_sync(self.resolve, tenant_id, model_id)

    def resolve(self, tenant_id: str, model_id: str) -> Resolution:
        """The registry's answer for ``model_id`` (and an avatar's candidate), cached."""
        hit = self.cached(tenant_id, model_id)
        if hit is not None:
            return hit
        return self._fetch(tenant_id, model_id)

    def _fetch(self, tenant_id: str, model_id: str) -> Resolution:
        """Ask the registry, and cache its answer unless a model.* event arrived meanwhile."""
        if self._listener is None and self.kafka_bootstrap:
            self.start()
        now = time.monotonic()
        with self._cache_lock:
            generation = self._generation.get(tenant_id, 0)
        stub = registry_pb2_grpc.RegistryServiceStub(self.registry.channel)
        metadata = self.registry.metadata(tenant_id)
        with typed_rpc_errors():
            model: registry_pb2.Model = stub.GetModel(registry_pb2.GetModelRequest(model_id=model_id),
                                                      metadata=metadata, timeout=10)
            resolution = Resolution(model)
            if model.fallback:  # the registry sets a fallback policy only for avatars
                avatar = stub.GetAvatar(registry_pb2.GetAvatarRequest(name=model_id), metadata=metadata, timeout=10)
                if avatar.candidate_model and avatar.candidate_share > 0:
                    candidate: registry_pb2.Model = stub.GetModel(
                        registry_pb2.GetModelRequest(model_id=avatar.candidate_model), metadata=metadata, timeout=10)
                    candidate.fallback = model.fallback
                    resolution = Resolution(model, candidate, min(100, int(avatar.candidate_share)))
        with self._cache_lock:
            if self._generation.get(tenant_id, 0) == generation:  # no model.* event meanwhile
                self._cache[(tenant_id, model_id)] = (now, resolution)
        return resolution


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
    arm: str = ""
    """For an avatar with a candidate: which version answers ("active" or "candidate"); "" otherwise."""
    engine: str = ""
    """The engine that answered (its URL)."""
    engine_seconds: float = 0.0
    """Time spent waiting for the engine's answer (for a stream: its first chunk)."""
    gateway_seconds: float = 0.0
    """Time spent in this service apart from that, from the request's arrival to the answer ready
    (for a stream: its first chunk): authentication, resolution, routing, adapter loads, encoding."""

    def headers(self) -> dict[str, str]:
        """Which model answered (``x-coachforge-model``); for an avatar with a candidate, which
        version (``x-coachforge-variant: active|candidate``); a fallback answer says so:
        ``x-coachforge-fallback: base; from=<model that could not be served>``; where the time went
        (``server-timing: gateway;dur=<ms>, engine;dur=<ms>``, up to the first chunk for a stream).
        REST sends these as response headers, gRPC as initial metadata."""
        headers = {MODEL_HEADER: self.model.id,
                   TIMING_HEADER: f"gateway;dur={self.gateway_seconds * 1e3:.2f}, "
                                  f"engine;dur={self.engine_seconds * 1e3:.2f}"}
        if self.arm:
            headers[VARIANT_HEADER] = self.arm
        if self.fallback_from:
            headers[FALLBACK_HEADER] = f"base; from={self.fallback_from}"
        return headers

    def timed(self, mode: str, started: float) -> None:
        """Note the gateway's share of the time since ``started`` (all but ``engine_seconds``) and
        observe it in ``coachforge_inference_gateway_seconds{mode}``."""
        self.gateway_seconds = max(0.0, time.perf_counter() - started - self.engine_seconds)
        GATEWAY.labels(mode).observe(self.gateway_seconds)


def _model_id(body: dict[str, Any]) -> str:
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidArgument("you must provide a model parameter", param="model")
    return model_id


def candidate_bucket(tenant_id: str, avatar: str, user: str) -> int:
    """A stable bucket 0-99 for one user of one avatar: the same user always gets the same version."""
    digest = hashlib.sha256(f"{tenant_id}\0{avatar}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _route(tenant_id: str, model_id: str, body: dict[str, Any], res: Resolution) -> Routed:
    avatar = model_id if res.model.fallback else ""  # the registry sets a fallback policy only for avatars
    model, arm = res.model, ""
    if res.candidate is not None and res.share > 0:
        user = body.get("user")
        bucket = (candidate_bucket(tenant_id, model_id, user) if isinstance(user, str) and user
                  else random.randrange(100))
        arm = "candidate" if bucket < res.share else "active"
        if arm == "candidate":
            model = res.candidate
        CANDIDATE_ROUTED.labels(tenant_id, model_id, arm).inc()
    engine_body = dict(body)
    engine_body["model"] = model.adapter_name or model.id
    return Routed(model, engine_body, avatar=avatar, arm=arm)


def _fallback(tenant_id: str, routed: Routed) -> Routed:
    """The adapter cannot be served: the base model answers (the avatar allows it), and says so."""
    model = routed.model
    FALLBACKS.labels(tenant_id, model.id).inc()
    log.warning("adapter unavailable; answering from the base model", model=model.id, base=model.base_model)
    base = registry_pb2.Model(id=model.base_model, owned_by=model.owned_by, base_model=model.base_model)
    engine_body = dict(routed.engine_body)
    engine_body["model"] = model.base_model
    return Routed(base, engine_body, fallback_from=model.id, avatar=routed.avatar, arm=routed.arm)


def _retry_or_raise(deps: InferenceDeps, tried: list[Engine], err: EngineUnreachable) -> None:
    """After a connection failure before anything was streamed: retry once on another engine, if any."""
    others = [e for e in deps.pool.engines if all(e is not t for t in tried)]
    if len(tried) > 1 or not others:
        raise Unavailable(f"No inference engine could serve the request: {err}") from None
    RETRIES.labels(tried[-1].base_url).inc()
    log.warning("engine unreachable; retrying on another engine", engine=tried[-1].base_url, error=str(err))


def _timed(routed: Routed, call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, its time added to ``routed.engine_seconds``."""
    t = time.perf_counter()
    try:
        return call(*args)
    finally:
        routed.engine_seconds += time.perf_counter() - t


async def _atimed(routed: Routed, call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """:func:`_timed` for a coroutine function."""
    t = time.perf_counter()
    try:
        return await call(*args)
    finally:
        routed.engine_seconds += time.perf_counter() - t


async def _aengage(deps: InferenceDeps, tenant_id: str, body: dict[str, Any],
                   call: Callable[[Engine, bytes], Awaitable[T]]) -> tuple[T, Any, Routed]:
    """Resolve and route ``body``'s model, pick an engine, load the adapter there, and ``call`` it;
    returns the result, the engine lease (the caller releases it when the answer is done) and the
    routing actually used, with the time spent in ``call`` as its ``engine_seconds``. A failure
    counts in ``coachforge_inference_requests_total{outcome="error"}``."""
    label = UNRESOLVED
    try:
        model_id = _model_id(body)
        routed = _route(tenant_id, model_id, body, await deps.aresolve(tenant_id, model_id))
        label = routed.model.id
        return await _aengage_routed(deps, tenant_id, routed, call)
    except CoachForgeError:
        REQUESTS.labels(tenant_id, label, "error").inc()
        raise


async def _aengage_routed(deps: InferenceDeps, tenant_id: str, routed: Routed,
                          call: Callable[[Engine, bytes], Awaitable[T]]) -> tuple[T, Any, Routed]:
    tried: list[Engine] = []
    while True:
        model = routed.model
        adapter = model.adapter_name or None
        lease = deps.pool.lease(adapter, tried)
        try:
            if adapter:
                try:
                    await deps.pool.aensure(lease.engine, adapter, model.adapter_uri)
                except EngineUnreachable:
                    raise
                except Unavailable:
                    if model.fallback != "base":
                        raise
                    lease.release()
                    routed = _fallback(tenant_id, routed)
                    continue
            content = _dumps(routed.engine_body)
            try:
                result = await _atimed(routed, call, lease.engine, content)
            except NotFound:
                if not adapter:
                    raise
                lease.engine.forget(adapter)  # the engine lost the adapter (restart): load it again once
                await deps.pool.aensure(lease.engine, adapter, model.adapter_uri)
                result = await _atimed(routed, call, lease.engine, content)
            routed.engine = lease.engine.base_url
            return result, lease, routed
        except EngineUnreachable as err:
            lease.release()
            tried.append(lease.engine)
            _retry_or_raise(deps, tried, err)
        except BaseException:
            lease.release()
            raise


def _engage(deps: InferenceDeps, tenant_id: str, body: dict[str, Any],
            call: Callable[[Engine, dict[str, Any]], T]) -> tuple[T, Any, Routed]:
    """:func:`_aengage` for threads (gRPC)."""
    label = UNRESOLVED
    try:
        model_id = _model_id(body)
        routed = _route(tenant_id, model_id, body, deps.resolve(tenant_id, model_id))
        label = routed.model.id
        return _engage_routed(deps, tenant_id, routed, call)
    except CoachForgeError:
        REQUESTS.labels(tenant_id, label, "error").inc()
        raise


def _engage_routed(deps: InferenceDeps, tenant_id: str, routed: Routed,
                   call: Callable[[Engine, dict[str, Any]], T]) -> tuple[T, Any, Routed]:
    tried: list[Engine] = []
    while True:
        model = routed.model
        adapter = model.adapter_name or None
        lease = deps.pool.lease(adapter, tried)
        try:
            if adapter:
                try:
                    deps.pool.ensure(lease.engine, adapter, model.adapter_uri)
                except EngineUnreachable:
                    raise
                except Unavailable:
                    if model.fallback != "base":
                        raise
                    lease.release()
                    routed = _fallback(tenant_id, routed)
                    continue
            try:
                result = _timed(routed, call, lease.engine, routed.engine_body)
            except NotFound:
                if not adapter:
                    raise
                lease.engine.forget(adapter)
                deps.pool.ensure(lease.engine, adapter, model.adapter_uri)
                result = _timed(routed, call, lease.engine, routed.engine_body)
            routed.engine = lease.engine.base_url
            return result, lease, routed
        except EngineUnreachable as err:
            lease.release()
            tried.append(lease.engine)
            _retry_or_raise(deps, tried, err)
        except BaseException:
            lease.release()
            raise


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


def complete(deps: InferenceDeps, tenant_id: str, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], Routed]:
    """A non-streaming chat or text completion; ``model`` in the answer is the model that answered."""
    started = time.perf_counter()
    result, lease, routed = _engage(deps, tenant_id, body, lambda engine, b: engine.post(path, b))
    lease.release()
    result["model"] = routed.model.id
    record_usage(deps, tenant_id, routed.model, result.get("usage"), started, routed.avatar)
    routed.timed("unary", started)
    return result, routed


def _bill_stream(body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Whether the caller asked for the usage chunk (``stream_options.include_usage``), i.e.
    whether it is passed on, and ``body`` asking the engine for it anyway, so that every streamed
    answer is billed."""
    options = body.get("stream_options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        return False, body  # not an object: the engine refuses it with a 400 that names the field
    return bool(options.get("include_usage")), {**body, "stream_options": {**options, "include_usage": True}}


def _usage_only(chunk: dict[str, Any]) -> bool:
    """The stream's last chunk that only carries the usage (no choices)."""
    return bool(chunk.get("usage")) and not chunk.get("choices")


def stream(deps: InferenceDeps, tenant_id: str, path: str,
           body: dict[str, Any]) -> tuple[Iterator[dict[str, Any]], Routed]:
    """:func:`astream` for threads (gRPC): the chunks as objects, ``model`` set to the model that
    answered, the usage-only chunk passed on only when ``stream_options.include_usage`` asked for
    it; errors before the first chunk are raised here (after one retry on another engine when the
    first could not be reached), errors after it from the iterator."""
    started = time.perf_counter()

    def call(engine: Engine, engine_body: dict[str, Any]) -> tuple[Generator[bytes, None, None], bytes]:
        upstream = engine.stream(path, engine_body)
        try:
            return upstream, next(upstream, b"")  # raises before anything was sent to the client
        except BaseException:
            upstream.close()
            raise

    wanted, body = _bill_stream(body)
    (upstream, first), lease, routed = _engage(deps, tenant_id, body, call)
    routed.timed("stream", started)
    model = routed.model

    def chunks() -> Iterator[dict[str, Any]]:
        usage = None
        ttft_recorded = False
        try:
            for line in itertools.chain((first,), upstream):
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                chunk["model"] = model.id
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if not ttft_recorded and chunk.get("choices"):
                    TTFT.labels(model.id).observe(time.perf_counter() - started)
                    ttft_recorded = True
                if wanted or not _usage_only(chunk):
                    yield chunk
        except CoachForgeError as err:
            REQUESTS.labels(tenant_id, model.id, "error").inc()
            log.warning("stream broken after it began", model=model.id, engine=routed.engine, error=str(err))
            raise
        finally:
            lease.release()
            upstream.close()
        record_usage(deps, tenant_id, model, usage, started, routed.avatar)

    return chunks(), routed


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


async def acomplete(deps: InferenceDeps, tenant_id: str, path: str, body: dict[str, Any],
                    arrived: float | None = None) -> tuple[bytes, Routed]:
    """A non-streaming completion: the engine's JSON with ``model`` set to the model that answered
    (``arrived``: when the request arrived, by ``time.perf_counter``; default now)."""
    started = time.perf_counter() if arrived is None else arrived

    async def call(engine: Engine, content: bytes) -> bytes:
        return await engine.apost(path, content)

    raw, lease, routed = await _aengage(deps, tenant_id, body, call)
    lease.release()
    result = json.loads(raw)
    renamed = _rename_model(raw, routed.engine_body["model"], routed.model.id)
    if renamed is None:
        result["model"] = routed.model.id
        renamed = _dumps(result)
    record_usage(deps, tenant_id, routed.model, result.get("usage"), started, routed.avatar)
    routed.timed("unary", started)
    return renamed, routed


def _error_event(err: CoachForgeError) -> bytes:
    """An OpenAI-style error as the last server-sent event of a stream that broke after it began."""
    status = int(getattr(err, "http_status", 503))
    return b"data: " + _dumps({"error": {"message": str(err), "type": "service_unavailable", "param": None,
                                         "code": status}}) + b"\n\n"


async def astream(deps: InferenceDeps, tenant_id: str, path: str, body: dict[str, Any],
                  arrived: float | None = None) -> tuple[AsyncIterator[bytes], Routed]:
    """A streaming completion as server-sent events; errors before the first byte are raised (after
    one retry on another engine when the first could not be reached), errors after it end the
    stream with an error event (``arrived`` as in :func:`acomplete`)."""
    started = time.perf_counter() if arrived is None else arrived

    async def call(engine: Engine, content: bytes) -> tuple[AsyncIterator[bytes], bytes]:
        upstream = engine.astream(path, content)
        try:
            return upstream, await upstream.__anext__()  # raises before anything was sent to the client
        except StopAsyncIteration:
            return upstream, b""
        except BaseException:
            await upstream.aclose()  # type: ignore[attr-defined]
            raise

    wanted, body = _bill_stream(body)
    (upstream, first), lease, routed = await _aengage(deps, tenant_id, body, call)
    routed.timed("stream", started)
    model = routed.model
    engine_model = routed.engine_body["model"]

    async def events() -> AsyncIterator[bytes]:
        usage = None
        ttft_recorded = False
        dropped = False  # the usage-only chunk the caller did not ask for (its blank line goes too)
        line = first
        try:
            while line:
                if line.startswith(b"data: {"):
                    renamed = _rename_model(line, engine_model, model.id)
                    if renamed is None or b'"usage":{' in line:
                        chunk = json.loads(line[6:])
                        chunk["model"] = model.id
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        dropped = not wanted and _usage_only(chunk)
                        renamed = b"data: " + _dumps(chunk) + b"\n"
                    if not ttft_recorded and b'"choices":[{' in line:
                        TTFT.labels(model.id).observe(time.perf_counter() - started)
                        ttft_recorded = True
                    line = renamed
                if not dropped:
                    yield line
                elif not line.startswith(b"data: {"):
                    dropped = line.strip() != b""  # skip up to the event's closing blank line
                try:
                    line = await upstream.__anext__()
                except StopAsyncIteration:
                    break
        except CoachForgeError as err:
            REQUESTS.labels(tenant_id, model.id, "error").inc()
            log.warning("stream broken after it began", model=model.id, engine=routed.engine, error=str(err))
            yield _error_event(err)
            return
        finally:
            lease.release()
            await upstream.aclose()  # type: ignore[attr-defined]
        record_usage(deps, tenant_id, model, usage, started, routed.avatar)

    return events(), routed
