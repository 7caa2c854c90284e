"""Inference logic: resolve the requested model through the registry (cached; model.* events drop a
tenant's entries), pick an engine, make sure the adapter is loaded there, call the engine (once
more on another engine when the first could not be reached before anything was streamed), and
record tokens, latency and cost (and, for a request with ``store``, publish the answer to be kept).
One async path, on the server's event loop, for REST and gRPC; each body is encoded once and the
engine's answer renamed at the byte level where it can be."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from coachforge.inference.v1 import inference_pb2
from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_inference import knowledge, policies, stored
from coachforge_inference.engine import EngineUnreachable, engine_error
from coachforge_inference.external import ExternalModels, NoLease, is_external, remote_body
from coachforge_inference.limits import Admission, RateLimiter
from coachforge_inference.metrics import (
    CANDIDATE_ROUTED,
    COST,
    FALLBACKS,
    GATEWAY,
    KNOWLEDGE_LOOKUPS,
    LATENCY,
    REQUESTS,
    RETRIES,
    TOKENS,
    TTFT,
)
from coachforge_inference.persona import apply_persona
from coachforge_inference.pool import EnginePool, Lease, PooledEngine
from coachforge_inference.settings import InferenceSettings, Price
from coachforge_inference.validation import CHAT, take_store, validate
from coachforge_shared.db import Database
from coachforge_shared.errors import CoachForgeError, InvalidArgument, NotFound, Unavailable
from coachforge_shared.events import EventPublisher
from coachforge_shared.grpc_server import InternalChannel, typed_rpc_errors
from coachforge_shared.ids import new_id
from coachforge_shared.logging import get_logger
from coachforge_shared.remotes import Remote

if TYPE_CHECKING:
    from coachforge_inference.stored import StoreRequest

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
PERSONA_HEADER = "x-coachforge-persona-version"
TIMING_HEADER = "server-timing"

APP = "app"
EVALUATION = "evaluation"
PURPOSES = (APP, EVALUATION)
"""Why a completion is asked, billed and counted apart: an application's request (every REST call)
or an eval run's sample or judge (the evaluator, over gRPC). A bounded label value."""


def check_purpose(purpose: str) -> str:
    """``purpose`` as billed ("" is "app"); anything but app or evaluation is refused."""
    if not purpose:
        return APP
    if purpose not in PURPOSES:
        raise InvalidArgument(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}", param="purpose")
    return purpose


@dataclass(frozen=True)
class Resolution:
    """What a requested model id resolves to: the model, and for an avatar with a candidate, the
    candidate and its share of the traffic (0-100); for an avatar, its own ``store`` setting (None:
    the tenant's default) and its persona (:mod:`coachforge_inference.persona`) with its version,
    for the active model and for the candidate (a candidate that is only another persona version
    is the active model with that persona)."""

    model: registry_pb2.Model
    candidate: registry_pb2.Model | None = None
    share: int = 0
    store: bool | None = None
    persona: dict[str, Any] | None = None
    persona_version: int = 0
    candidate_persona: dict[str, Any] | None = None
    candidate_persona_version: int = 0


@dataclass
class InferenceDeps:
    settings: InferenceSettings
    registry: InternalChannel
    publisher: EventPublisher | None = None
    db: Database | None = None
    """Where daily usage rows and stored completions live (``GET /v1/usage``, ``/v1/chat/completions/{id}``)."""
    kafka_bootstrap: str | None = None
    """Where model.* events are read from to drop stale resolutions (none: only the TTL)."""
    engines: EnginePool | None = None
    """The default pool: the engines of every base model without a pool of its own (default: the
    ones ``settings`` name in ``engine_url``/``engine_urls``/``engine_service``)."""
    pools: dict[str, EnginePool] = field(default_factory=dict)
    """The pools of further base models, by base model id (default: ``settings.engine_pools``)."""
    adapter_cache_dir: Path | None = None
    """Where adapters kept in object storage are fetched to before an engine loads them (for the
    default pool; none: only local adapter paths can be served)."""
    dataset: InternalChannel | None = None
    """The dataset service, searched for the knowledge of avatar personas with ``knowledge`` (none:
    they answer without it, ``x-coachforge-knowledge: unavailable``)."""
    _cache: dict[tuple[str, str], tuple[float, Resolution]] = field(default_factory=dict, init=False, repr=False)
    _generation: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    """Guards the cache: the model.* listener and the refresh-ahead threads change it too."""
    _refreshing: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False)
    _listener: Any = field(default=None, init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)
    policy_cache: policies.PolicyCache = field(init=False, repr=False)
    """Tenants' stored completion policies, for requests that do not say ``store``."""
    limiter: RateLimiter = field(init=False, repr=False)
    """Tenants' rate limits and daily quotas (:mod:`coachforge_inference.limits`)."""
    external: ExternalModels = field(init=False, repr=False)
    """Where requests for external models go: their remotes (:mod:`coachforge_inference.external`)."""

    def __post_init__(self) -> None:
        if self.engines is None:
            self.engines = EnginePool.from_settings(self.settings, self.adapter_cache_dir)
        if not self.pools:
            self.pools = {base: EnginePool.from_settings(self.settings, self.adapter_cache_dir, urls=pool.urls,
                                                         service=pool.service, name=base)
                          for base, pool in self.settings.engine_pools.items()}
        self.policy_cache = policies.PolicyCache(self.settings.stored_policy_cache_s)
        self.limiter = RateLimiter(self.settings, self.db)
        self.external = ExternalModels(self.settings)

    @property
    def pool(self) -> EnginePool:
        """The default pool."""
        assert self.engines is not None
        return self.engines

    def pool_for(self, model: registry_pb2.Model) -> EnginePool:
        """The engines serving ``model``'s base model (a base model is its own base)."""
        return self.pools.get(model.base_model or model.id, self.pool)

    @property
    def all_pools(self) -> list[EnginePool]:
        return [self.pool, *self.pools.values()]

    async def drop_adapter(self, name: str) -> None:
        """Unload a deleted model's adapter wherever it sits idle."""
        await asyncio.gather(*(pool.drop_adapter(name) for pool in self.all_pools))

    async def start(self) -> None:
        """Start the engines' health checks and the model.* event listener, on the running event
        loop (idempotent; the first registry lookup starts them too)."""
        if self._started:
            return
        self._started = True
        for pool in self.all_pools:
            await pool.start()
        if self.kafka_bootstrap:
            from coachforge_inference.invalidation import ModelEventListener

            self._listener = ModelEventListener(self.kafka_bootstrap, self.invalidate, deleted=self.drop_adapter)
            self._listener.start()

    async def close(self) -> None:
        """Stop the listener and the health checks; close the engines' sessions."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await asyncio.to_thread(listener.stop)
        for pool in self.all_pools:
            await pool.close()
        await self.external.close()
        self._started = False

    async def healthy(self) -> bool:
        """Readiness: every pool (each base model) has an engine that answers its health check now."""
        return all(await asyncio.gather(*(pool.healthy() for pool in self.all_pools)))

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

    async def resolve(self, tenant_id: str, model_id: str) -> Resolution:
        """The registry's answer for ``model_id`` (and an avatar's candidate), cached: a cache hit
        costs no thread hop, a miss asks the registry from a worker thread."""
        hit = self.cached(tenant_id, model_id)
        if hit is not None:
            return hit
        if not self._started:
            await self.start()
        return await anyio.to_thread.run_sync(self._fetch, tenant_id, model_id)

    def _fetch(self, tenant_id: str, model_id: str) -> Resolution:
        """Ask the registry (blocking: from a worker thread), and cache its answer unless a model.*
        event arrived meanwhile."""
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
                store = avatar.store if avatar.HasField("store") else None
                persona = _persona(avatar.persona_json)
                version = avatar.persona_version if persona is not None else 0
                resolution = Resolution(model, store=store, persona=persona, persona_version=version)
                if (avatar.candidate_model or avatar.candidate_persona_version) and avatar.candidate_share > 0:
                    if avatar.candidate_model:
                        candidate: registry_pb2.Model = stub.GetModel(
                            registry_pb2.GetModelRequest(model_id=avatar.candidate_model), metadata=metadata,
                            timeout=10)
                        candidate.fallback = model.fallback
                    else:  # another persona version of the active model
                        candidate = registry_pb2.Model()
                        candidate.CopyFrom(model)
                    candidate_persona, candidate_version = persona, version
                    if avatar.candidate_persona_version:
                        candidate_persona = _persona(avatar.candidate_persona_json)
                        candidate_version = avatar.candidate_persona_version if candidate_persona is not None else 0
                    resolution = Resolution(model, candidate, min(100, int(avatar.candidate_share)), store,
                                            persona, version, candidate_persona, candidate_version)
        with self._cache_lock:
            if self._generation.get(tenant_id, 0) == generation:  # no model.* event meanwhile
                self._cache[(tenant_id, model_id)] = (now, resolution)
        return resolution


def _persona(persona_json: str) -> dict[str, Any] | None:
    """A persona's settings as the registry sent them; None for none (or, defensively, for one that
    is not a JSON object: the avatar answers without it rather than not at all)."""
    if not persona_json:
        return None
    try:
        persona = json.loads(persona_json)
    except ValueError:
        log.warning("persona settings are not JSON; answering without them")
        return None
    return persona if isinstance(persona, dict) else None


def price_of(settings: InferenceSettings, model: registry_pb2.Model) -> Price:
    """US dollars per million tokens of ``model``: its price table entry, else the fine-tuned or base default."""
    if model.id in settings.prices:
        return settings.prices[model.id]
    return settings.fine_tuned_price if model.adapter_name else settings.base_price


async def model_price(deps: InferenceDeps, tenant_id: str, model_id: str) -> tuple[registry_pb2.Model, Price]:
    """The model a request for ``model_id`` resolves to (an avatar: its active model; ``NotFound``
    for an unknown one) and the price its requests are billed at."""
    if not model_id:
        raise InvalidArgument("you must provide a model parameter", param="model")
    model = (await deps.resolve(tenant_id, model_id)).model
    return model, price_of(deps.settings, model)


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
    purpose: str = APP
    """Why the completion was asked ("app" or "evaluation"): how its usage is labelled and billed."""
    engine: str = ""
    """The engine that answered (its URL); for an external model, its remote's base URL."""
    engine_seconds: float = 0.0
    """Time spent waiting for the engine's answer (for a stream: its first chunk)."""
    gateway_seconds: float = 0.0
    """Time spent in this service apart from that, from the request's arrival to the answer ready
    (for a stream: its first chunk): authentication, resolution, routing, adapter loads, encoding."""
    error: CoachForgeError | None = None
    """The error that ended a stream after it began (its body is the stream's last event)."""
    store: StoreRequest | None = None
    """Set when the request asked for ``store``: what is kept with the answer."""
    usage: dict[str, Any] | None = None
    """A finished stream's usage (the engine's last chunk, passed on to the caller or not); for a
    stream the client abandoned, the tokens until then."""
    admission: Admission | None = None
    """What the tenant's rate limits admitted the request on (None: no limits); settled once billed."""
    usage_event_id: str = field(default_factory=lambda: new_id("evt"))
    """The id of this request's ``usage.recorded`` event, minted once per request: however often its
    usage is published (a retry, a replay, an outbox relay), the usage consumer counts it once."""
    persona_version: int = 0
    """The avatar's persona version applied to the request (0: none)."""
    knowledge_setting: dict[str, Any] | None = None
    """The applied persona's ``knowledge`` (what to search for the system message), if any."""
    knowledge: str = ""
    """``x-coachforge-knowledge``: the knowledge chunk ids put into the prompt, comma-separated in rank
    order, or ``unavailable`` when they could not be searched ("": no header)."""

    def headers(self) -> dict[str, str]:
        """Which model answered (``x-coachforge-model``); for an avatar with a candidate, which
        version (``x-coachforge-variant: active|candidate``); a fallback answer says so:
        ``x-coachforge-fallback: base; from=<model that could not be served>``; where the time went
        (``server-timing: gateway;dur=<ms>, engine;dur=<ms>``, up to the first chunk for a stream);
        the avatar's persona version applied (``x-coachforge-persona-version``) and the knowledge
        chunks its prompt was given (``x-coachforge-knowledge``). REST sends these as response
        headers, gRPC as initial metadata."""
        headers = {MODEL_HEADER: self.model.id,
                   TIMING_HEADER: f"gateway;dur={self.gateway_seconds * 1e3:.2f}, "
                                  f"engine;dur={self.engine_seconds * 1e3:.2f}"}
        if self.arm:
            headers[VARIANT_HEADER] = self.arm
        if self.fallback_from:
            headers[FALLBACK_HEADER] = f"base; from={self.fallback_from}"
        if self.persona_version:
            headers[PERSONA_HEADER] = str(self.persona_version)
        if self.knowledge:
            headers[knowledge.HEADER] = self.knowledge
        if self.admission is not None:
            headers.update(self.admission.headers)
        return headers

    def timed(self, mode: str, started: float) -> None:
        """Note the gateway's share of the time since ``started`` (all but ``engine_seconds``) and
        observe it in ``coachforge_inference_gateway_seconds{mode}``."""
        self.gateway_seconds = max(0.0, time.perf_counter() - started - self.engine_seconds)
        GATEWAY.labels(mode).observe(self.gateway_seconds)


def candidate_bucket(tenant_id: str, avatar: str, user: str) -> int:
    """A stable bucket 0-99 for one user of one avatar: the same user always gets the same version."""
    digest = hashlib.sha256(f"{tenant_id}\0{avatar}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _route(tenant_id: str, model_id: str, body: dict[str, Any], res: Resolution, path: str = CHAT,
           metadata: dict[str, str] | None = None) -> Routed:
    """Pick the avatar's active or candidate arm (sticky per ``user``) and build the engine's body:
    for a chat completion, with the arm's persona applied (``metadata`` fills its system prompt)."""
    avatar = model_id if res.model.fallback else ""  # the registry sets a fallback policy only for avatars
    model, arm = res.model, ""
    persona, persona_version = res.persona, res.persona_version
    if res.candidate is not None and res.share > 0:
        user = body.get("user")
        bucket = (candidate_bucket(tenant_id, model_id, user) if isinstance(user, str) and user
                  else random.randrange(100))
        arm = "candidate" if bucket < res.share else "active"
        if arm == "candidate":
            model = res.candidate
            persona, persona_version = res.candidate_persona, res.candidate_persona_version
        CANDIDATE_ROUTED.labels(tenant_id, model_id, arm).inc()
    knowledge_setting = None
    if persona is not None and path == CHAT:
        engine_body = apply_persona(body, persona, metadata or {})
        if isinstance(persona.get("knowledge"), dict):
            knowledge_setting = persona["knowledge"]
    else:
        engine_body, persona_version = dict(body), 0
    engine_body["model"] = model.external_model or model.adapter_name or model.id
    return Routed(model, engine_body, avatar=avatar, arm=arm, persona_version=persona_version,
                  knowledge_setting=knowledge_setting)


async def _add_knowledge(deps: InferenceDeps, tenant_id: str, routed: Routed, messages: Any) -> None:
    """Search the applied persona's knowledge base for the conversation ``messages`` (as the client
    sent them) and put the snippets found into the engine's system message; a search that cannot
    be made leaves the request as it is, marked ``unavailable`` (never an error)."""
    assert routed.knowledge_setting is not None
    found = await knowledge.lookup(deps.dataset, tenant_id, routed.knowledge_setting, messages,
                                   deps.settings.knowledge_timeout_s)
    KNOWLEDGE_LOOKUPS.labels(tenant_id, found.outcome).inc()
    if found.snippets and isinstance(routed.engine_body.get("messages"), list):
        routed.engine_body["messages"] = knowledge.with_knowledge(routed.engine_body["messages"],
                                                                  knowledge.knowledge_block(found.snippets))
    routed.knowledge = found.header


def _fallback(tenant_id: str, routed: Routed) -> Routed:
    """The adapter cannot be served: the base model answers (the avatar allows it), and says so."""
    model = routed.model
    FALLBACKS.labels(tenant_id, model.id).inc()
    log.warning("adapter unavailable; answering from the base model", model=model.id, base=model.base_model)
    base = registry_pb2.Model(id=model.base_model, owned_by=model.owned_by, base_model=model.base_model)
    engine_body = dict(routed.engine_body)
    engine_body["model"] = model.base_model
    return Routed(base, engine_body, fallback_from=model.id, avatar=routed.avatar, arm=routed.arm,
                  purpose=routed.purpose, store=routed.store, usage_event_id=routed.usage_event_id,
                  admission=routed.admission, persona_version=routed.persona_version,
                  knowledge_setting=routed.knowledge_setting, knowledge=routed.knowledge)


EngineCall = Callable[[EnginePool, PooledEngine, bytes], Awaitable[T]]
"""Asks one engine of a pool (the pool of the routed model's base) for the answer to the encoded body."""
ExternalCall = Callable[[ExternalModels, registry_pb2.Model, Remote, bytes], Awaitable[T]]
"""Asks the remote that serves an external model (with the tenant's remote) for the answer to the encoded body."""


def _retry_or_raise(pool: EnginePool, tried: list[PooledEngine], err: EngineUnreachable) -> None:
    """After a connection failure before anything was streamed: retry once on another engine of the
    same pool, if any."""
    others = [e for e in pool.engines if all(e is not t for t in tried)]
    if len(tried) > 1 or not others:
        raise Unavailable(f"No inference engine could serve the request: {err}") from None
    RETRIES.labels(tried[-1].url).inc()
    log.warning("engine unreachable; retrying on another engine", engine=tried[-1].url, error=str(err))


async def _timed(routed: Routed, call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await call(*args)``, its time added to ``routed.engine_seconds``."""
    t = time.perf_counter()
    try:
        return await call(*args)
    finally:
        routed.engine_seconds += time.perf_counter() - t


async def _engage(deps: InferenceDeps, tenant_id: str, path: str, body: dict[str, Any], call: EngineCall[T],
                  forward: ExternalCall[T], purpose: str = APP) -> tuple[T, Lease | NoLease, Routed]:
    """Check ``body``, resolve and route its model, pick an engine, load the adapter there, and
    ``call`` it (an external model: ``forward`` it to its remote instead); returns the result, the
    engine lease (the caller releases it when the answer is done) and the routing actually used,
    with the time spent in ``call`` as its ``engine_seconds``. A failure counts in
    ``coachforge_inference_requests_total{outcome="error"}``."""
    label = UNRESOLVED
    admission: Admission | None = None
    try:
        purpose = check_purpose(purpose)
        model_id = validate(path, body, deps.settings.max_n)
        asked: bool | None = None
        metadata: dict[str, str] = {}
        if "store" in body or "metadata" in body:  # only these requests pay for checking them
            asked, metadata, body = take_store(path, body)
        if purpose == APP:  # eval runs are not refused (their cost counts toward the daily quotas)
            admission = await deps.limiter.admit(tenant_id, path, body)
        resolution = await deps.resolve(tenant_id, model_id)
        routed = _route(tenant_id, model_id, body, resolution, path, metadata)
        routed.purpose = purpose
        routed.admission = admission
        if routed.knowledge_setting is not None:
            await _add_knowledge(deps, tenant_id, routed, body.get("messages"))
        if await _stores(deps, tenant_id, path, purpose, asked, resolution):
            routed.store = stored.StoreRequest(model_id, metadata, body)
        label = routed.model.id
        return await _engage_routed(deps, tenant_id, routed, call, forward)
    except BaseException as err:
        deps.limiter.settle(admission, 0, 0.0)  # nothing was generated: the tokens admitted on come back
        if isinstance(err, CoachForgeError):
            REQUESTS.labels(tenant_id, label, "error").inc()
        raise


async def _stores(deps: InferenceDeps, tenant_id: str, path: str, purpose: str, asked: bool | None,
                  resolution: Resolution) -> bool:
    """Whether the answer is kept as a stored completion: the request's own ``store`` when it says
    (``false`` never stores), else, for an application's chat completion, the avatar's ``store``
    when it has one, else the tenant's ``store_by_default`` (cached: no database query here)."""
    if asked is not None:
        return asked
    if path != CHAT or purpose != APP or deps.publisher is None:
        return False
    if resolution.store is not None:
        return resolution.store
    return (await policies.current(deps, tenant_id)).store_by_default


async def _engage_routed(deps: InferenceDeps, tenant_id: str, routed: Routed, call: EngineCall[T],
                         forward: ExternalCall[T]) -> tuple[T, Lease | NoLease, Routed]:
    if is_external(routed.model):  # served by the remote that trained it, not by the engines
        model = routed.model
        remote = deps.external.remote_for(tenant_id, model)
        result = await _timed(routed, forward, deps.external, model, remote, _dumps(remote_body(routed.engine_body)))
        routed.engine = model.external_base_url
        return result, NoLease(), routed
    tried: list[PooledEngine] = []
    while True:
        model = routed.model
        pool = deps.pool_for(model)
        adapter = model.adapter_name or None
        lease = pool.lease(adapter, tried)
        try:
            if adapter:
                try:
                    await pool.ensure(lease.engine, adapter, model.adapter_uri)
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
                result = await _timed(routed, call, pool, lease.engine, content)
            except NotFound:
                if not adapter:
                    raise
                pool.forget(lease.engine, adapter)  # the engine lost the adapter (restart): load it again once
                await pool.ensure(lease.engine, adapter, model.adapter_uri)
                result = await _timed(routed, call, pool, lease.engine, content)
            routed.engine = lease.engine.url
            return result, lease, routed
        except EngineUnreachable as err:
            lease.release()
            tried.append(lease.engine)
            _retry_or_raise(pool, tried, err)
        except BaseException:
            lease.release()
            raise


def record_usage(deps: InferenceDeps, tenant_id: str, model: registry_pb2.Model, usage: dict[str, Any] | None,
                 started: float, avatar: str = "", purpose: str = APP, *, event_id: str | None = None,
                 admission: Admission | None = None) -> None:
    """Count an answered request: latency, tokens and cost by ``purpose`` in the metrics, and a
    ``usage.recorded`` event for the daily usage rows (``event_id``: the request's
    :attr:`Routed.usage_event_id`, so that the request is billed once); charge its tenant's rate
    limits what it used (``admission``: what they admitted it on)."""
    elapsed = time.perf_counter() - started
    LATENCY.labels(model.id).observe(elapsed)
    REQUESTS.labels(tenant_id, model.id, "ok").inc()
    if not usage:
        deps.limiter.settle(admission, 0, 0.0)
        return
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    price = price_of(deps.settings, model)
    cost = (prompt * price.input + completion * price.output) / 1_000_000
    deps.limiter.settle(admission, prompt + completion, cost)
    TOKENS.labels(tenant_id, model.id, "prompt", purpose).inc(prompt)
    TOKENS.labels(tenant_id, model.id, "completion", purpose).inc(completion)
    COST.labels(tenant_id, model.id, purpose).inc(cost)
    if deps.publisher is not None:
        try:
            deps.publisher.publish("usage.recorded", inference_pb2.UsageRecorded(
                model=model.id, base_model=model.base_model, prompt_tokens=prompt, completion_tokens=completion,
                cost_usd=cost, latency_seconds=elapsed, avatar=avatar, purpose=purpose), tenant_id, key=model.id,
                wait=False, event_id=event_id)
        except Exception:  # usage events must never fail an answered request
            log.exception("usage event not published", model=model.id)


def _bill_stream(body: dict[str, Any]) -> tuple[bool, bool, dict[str, Any]]:
    """Whether the caller asked for the usage chunk (``stream_options.include_usage``) and for the
    running usage in every chunk (vLLM's ``continuous_usage_stats``), i.e. whether they are passed
    on, and ``body`` asking the engine for both anyway: every streamed answer is billed, and one
    the client abandons is billed for the prompt and the tokens generated until then (the engine's
    last chunk, with the final usage, never comes)."""
    options = body.get("stream_options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        return False, False, body  # not an object: validation refuses it
    return (bool(options.get("include_usage")), bool(options.get("continuous_usage_stats")),
            {**body, "stream": True,
             "stream_options": {**options, "include_usage": True, "continuous_usage_stats": True}})


_RUNNING_USAGE = ',"usage":{'
_JSON = json.JSONDecoder()


def _take_usage(line: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """A chunk's running usage (the prompt's tokens and those generated so far) and the line
    without it, cut out as text rather than by decoding and re-encoding the whole chunk;
    ``(line, None)`` when it carries none."""
    try:
        text = line.decode()
        at = text.rfind(_RUNNING_USAGE)
        if at < 0:
            return line, None
        usage, end = _JSON.raw_decode(text, at + len(_RUNNING_USAGE) - 1)
    except ValueError:
        return line, None
    return (text[:at] + text[end:]).encode(), usage if isinstance(usage, dict) else None


def _usage_only(chunk: dict[str, Any]) -> bool:
    """The stream's last chunk that only carries the usage (no choices)."""
    return bool(chunk.get("usage")) and not chunk.get("choices")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _rename_model(raw: bytes, engine_model: str, model_id: str) -> bytes | None:
    """``raw`` with its first ``"model":"<engine model>"`` replaced by the public model id, or None
    when the engine wrote it another way (the caller then re-encodes)."""
    needle = b'"model":' + _dumps(engine_model)
    if needle not in raw:
        return None
    return raw.replace(needle, b'"model":' + _dumps(model_id), 1)


async def complete(deps: InferenceDeps, tenant_id: str, path: str, body: dict[str, Any],
                   arrived: float | None = None, *, purpose: str = APP) -> tuple[bytes, Routed]:
    """A non-streaming chat (``path`` ``/v1/chat/completions``) or text (``/v1/completions``)
    completion: the engine's JSON with ``model`` set to the model that answered (``arrived``: when
    the request arrived, by ``time.perf_counter``; default now; ``purpose``: "app" or "evaluation",
    how the usage is labelled and billed, "" = "app", anything else refused). A chat completion
    asked with ``store: true`` is also published as ``completion.stored``
    (:mod:`coachforge_inference.stored`); ``store`` and ``metadata`` never reach the engine."""
    started = time.perf_counter() if arrived is None else arrived

    def call(pool: EnginePool, engine: PooledEngine, content: bytes) -> Awaitable[bytes]:
        return pool.post(engine, path, content)

    def forward(external: ExternalModels, model: registry_pb2.Model, remote: Remote,
                content: bytes) -> Awaitable[bytes]:
        return external.post(model, remote, path, content)

    raw, lease, routed = await _engage(deps, tenant_id, path, body, call, forward, purpose)
    lease.release()
    result = json.loads(raw)
    renamed = _rename_model(raw, routed.engine_body["model"], routed.model.id)
    if renamed is None:
        result["model"] = routed.model.id
        renamed = _dumps(result)
    record_usage(deps, tenant_id, routed.model, result.get("usage"), started, routed.avatar, routed.purpose,
                 event_id=routed.usage_event_id, admission=routed.admission)
    if routed.store is not None:
        stored.publish(deps, tenant_id, routed, result, started)
    routed.timed("unary", started)
    return renamed, routed


def _stream_error(line: bytes) -> CoachForgeError:
    """An error event the engine sent in the middle of a stream (``data: {"error": …}``) as a typed error."""
    try:
        code = json.loads(line[6:])["error"].get("code")
    except (ValueError, KeyError, AttributeError):
        code = None
    return engine_error(code if isinstance(code, int) else 500, line[6:].decode(errors="replace"))


async def _first(upstream: AsyncIterator[bytes]) -> tuple[AsyncIterator[bytes], bytes]:
    """A stream and its first line, awaited (an error before anything was sent to the client is raised)."""
    try:
        return upstream, await upstream.__anext__()
    except StopAsyncIteration:
        return upstream, b""
    except BaseException:
        await upstream.aclose()  # type: ignore[attr-defined]
        raise


async def stream(deps: InferenceDeps, tenant_id: str, path: str, body: dict[str, Any],
                 arrived: float | None = None, *, purpose: str = APP) -> tuple[AsyncIterator[bytes], Routed]:
    """A streaming completion as server-sent event lines (each ending with a newline), ``model``
    set to the model that answered, the usage-only chunk passed on only when
    ``stream_options.include_usage`` asked for it (the engine is always asked for it: every stream
    is billed). Errors before the first byte are raised (after one retry on another engine when the
    first could not be reached); an error after it ends the stream with the error's own body as
    the last event, and is kept as ``Routed.error`` (``arrived`` and ``purpose`` as in :func:`complete`).
    With ``store: true`` the answer's text is added up on the way and published once the stream
    ended without an error."""
    started = time.perf_counter() if arrived is None else arrived

    def call(pool: EnginePool, engine: PooledEngine, content: bytes) -> Awaitable[tuple[AsyncIterator[bytes], bytes]]:
        return _first(pool.stream(engine, path, content))

    def forward(external: ExternalModels, model: registry_pb2.Model, remote: Remote,
                content: bytes) -> Awaitable[tuple[AsyncIterator[bytes], bytes]]:
        return _first(external.stream(model, remote, path, content))

    wanted, running_wanted, body = _bill_stream(body)
    (upstream, first), lease, routed = await _engage(deps, tenant_id, path, body, call, forward, purpose)
    routed.timed("stream", started)
    model = routed.model
    engine_model = routed.engine_body["model"]

    async def events() -> AsyncIterator[bytes]:
        usage = None  # the engine's count: running (in every chunk), then final (its last chunk)
        generated = 0  # chunks with a choice: about one token each, for an engine without a running count
        ttft_recorded = False
        dropped = False  # the usage-only chunk the caller did not ask for (its blank line goes too)
        open_event = False  # the last line sent was not an event's closing blank line
        finished = broken = False
        line = first
        try:
            while line:
                if line.startswith(b"data: {"):
                    if line.startswith(b'data: {"error"'):
                        raise _stream_error(line)
                    chosen = b'"choices":[{' in line
                    if chosen:
                        generated += 1
                        if not running_wanted:
                            line, running = _take_usage(line)
                            if running is not None:
                                usage = running
                    renamed = _rename_model(line, engine_model, model.id)
                    if renamed is None or b'"usage":{' in line:
                        chunk = json.loads(line[6:])
                        chunk["model"] = model.id
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        dropped = not wanted and _usage_only(chunk)
                        renamed = b"data: " + _dumps(chunk) + b"\n"
                    if not ttft_recorded and chosen:
                        TTFT.labels(model.id).observe(time.perf_counter() - started)
                        ttft_recorded = True
                    line = renamed
                if not dropped:
                    yield line
                    open_event = line != b"\n"
                elif not line.startswith(b"data: {"):
                    dropped = line.strip() != b""  # skip up to the event's closing blank line
                try:
                    line = await upstream.__anext__()
                except StopAsyncIteration:
                    break
            finished = True
        except CoachForgeError as err:
            broken = True
            REQUESTS.labels(tenant_id, model.id, "error").inc()
            log.warning("stream broken after it began", model=model.id, engine=routed.engine, error=str(err))
            routed.error = err
            if open_event:
                yield b"\n"
            yield b"data: " + _dumps(err.to_body()) + b"\n\n"
            return
        finally:
            lease.release()
            if not broken:
                # Finished, or abandoned by the client (GeneratorExit, CancelledError: this runs once
                # either way, before anything here awaits): billed for the tokens generated so far.
                if not finished:
                    log.info("stream abandoned by the client", model=model.id, generated_chunks=generated)
                    if usage is None and generated:
                        usage = {"prompt_tokens": 0, "completion_tokens": generated}
                routed.usage = usage
                record_usage(deps, tenant_id, model, usage, started, routed.avatar, routed.purpose,
                             event_id=routed.usage_event_id, admission=routed.admission)
            await upstream.aclose()  # type: ignore[attr-defined]

    if routed.store is not None:  # kept once the stream has ended
        return stored.collect(deps, tenant_id, events(), routed, started), routed
    return events(), routed
