"""The engines behind the inference service, and which one answers a request.

* Engines come from ``engine_urls`` (or the one ``engine_url``) and, optionally, from the
  addresses of a headless service (``engine_service``), resolved again periodically.
* A task on the server's event loop (started by :meth:`EnginePool.start`) checks each engine's
  ``GET /health``; a failed check or a failed call takes the engine out of rotation (and forgets
  its adapters: a restarted engine has none) until a check or a call succeeds again.
* Routing: a healthy engine that already holds (or is loading) the adapter, least in flight
  first; otherwise the least loaded healthy engine. Every engine down: they are tried anyway
  (the marks may be stale; the call will tell).
* Each engine keeps at most ``max_loras`` adapters: before loading another, the least recently
  used adapters no request is using are unloaded (``POST /v1/unload_lora_adapter``). A burst of
  first requests for an adapter picks one engine and loads it once there (one lock per engine
  and adapter).

The pool alone changes the routing state (:class:`PooledEngine`), always on the event loop and
never across an ``await`` between a read and the write that depends on it, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from coachforge_inference.adapters import AdapterCache, is_remote
from coachforge_inference.engine import Engine, EngineUnreachable
from coachforge_inference.metrics import ENGINE_UP, ENGINES
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.errors import Unavailable
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.inference.pool")


async def resolve_service(service: str) -> list[str]:
    """Engine base URLs for a headless service ``host:port`` (or ``http://host:port``): one per A/AAAA record."""
    parts = urlsplit(service if "://" in service else f"http://{service}")
    host, port, scheme = parts.hostname or "", parts.port or 8000, parts.scheme or "http"
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    urls = []
    for family, *_, addr in infos:
        ip = str(addr[0])
        urls.append(f"{scheme}://[{ip}]:{port}" if family == socket.AF_INET6 else f"{scheme}://{ip}:{port}")
    return sorted(set(urls))


class PooledEngine:
    """One engine as the pool sees it: its client and its routing state."""

    def __init__(self, client: Engine) -> None:
        self.client = client
        self.url = client.base_url
        self.up = True
        self.inflight = 0
        """Requests using the engine now."""
        self.adapters: OrderedDict[str, int] = OrderedDict()
        """Adapters routed here (loaded or loading), least recently used first -> requests using each now."""
        self.loaded: set[str] = set()
        """Adapters the engine has (as far as this service knows)."""
        self.locks: dict[str, asyncio.Lock] = {}
        """One lock per adapter: one load (or unload) of it at a time on this engine."""

    def __repr__(self) -> str:
        return f"PooledEngine({self.url!r}, up={self.up}, inflight={self.inflight}, adapters={list(self.adapters)})"

    def lock(self, adapter: str) -> asyncio.Lock:
        lock = self.locks.get(adapter)
        if lock is None:
            lock = self.locks[adapter] = asyncio.Lock()
        return lock


class Lease:
    """One request's hold on an engine (counted in flight until released)."""

    __slots__ = ("_released", "adapter", "engine", "pool")

    def __init__(self, pool: EnginePool, engine: PooledEngine, adapter: str | None) -> None:
        self.pool, self.engine, self.adapter = pool, engine, adapter
        self._released = False

    def release(self) -> None:
        """Give the engine back (idempotent)."""
        if not self._released:
            self._released = True
            self.pool.release(self.engine, self.adapter)


DEFAULT_POOL = "default"
"""The name of the pool of every base model without a pool of its own."""


class EnginePool:
    def __init__(self, urls: Iterable[str] = (), *, timeout_s: float = 300.0, max_loras: int = 4,
                 health_interval_s: float = 5.0, service: str | None = None,
                 discovery_interval_s: float = 15.0, adapters: AdapterCache | None = None,
                 api_key: str | None = None, name: str = DEFAULT_POOL) -> None:
        """``urls``: the engines always in the pool; ``service``: a headless service whose addresses
        join them (at :meth:`start`, then every ``discovery_interval_s``); ``adapters``: where remote
        adapters are fetched to (none: only local adapter paths can be loaded); ``api_key``: the
        engines' API key; ``name``: the pool's name in metrics (its base model, or "default")."""
        self.name = name
        self.api_key = api_key
        self.adapters = adapters
        self.timeout_s, self.max_loras = timeout_s, max_loras
        self.health_interval_s, self.service, self.discovery_interval_s = (
            health_interval_s, service, discovery_interval_s)
        self._engines: dict[str, PooledEngine] = {}
        for url in urls:
            url = url.rstrip("/")
            if url not in self._engines:
                self._engines[url] = PooledEngine(Engine(url, timeout_s, api_key))
        self._static = set(self._engines)
        self._retired: list[Engine] = []
        self._discovered_at = float("-inf")
        self._started = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: InferenceSettings, adapter_cache_dir: Path | None = None, *,
                      urls: Iterable[str] | None = None, service: str | None = None,
                      name: str = DEFAULT_POOL) -> EnginePool:
        """The default pool ``settings`` describe: ``engine_urls`` (or the one ``engine_url`` when
        neither they nor ``engine_service`` are set) and ``engine_service``; or, with ``urls`` or
        ``service``, the pool of base model ``name`` (an entry of ``engine_pools``), with the same
        timeouts, adapter cache and API key. Remote adapters are fetched into ``adapter_cache_dir``
        (default: ``settings.adapter_cache_dir``; neither: local adapters only)."""
        if urls is None and service is None:
            urls = list(settings.engine_urls)
            service = settings.engine_service
            if not urls and not service:
                urls = [settings.engine_url]
        cache_dir = adapter_cache_dir if adapter_cache_dir is not None else settings.adapter_cache_dir
        return cls(urls or (), timeout_s=settings.request_timeout_s, max_loras=settings.engine_max_loras,
                   health_interval_s=settings.engine_health_interval_s, service=service,
                   discovery_interval_s=settings.engine_discovery_interval_s,
                   adapters=AdapterCache(cache_dir, settings.adapter_storage_options) if cache_dir else None,
                   api_key=settings.engine_api_key.get_secret_value() if settings.engine_api_key else None,
                   name=name)

    @property
    def engines(self) -> list[PooledEngine]:
        return list(self._engines.values())

    def engine(self, url: str) -> PooledEngine:
        return self._engines[url.rstrip("/")]

    # --- discovery and health ---

    async def discover(self) -> None:
        """Resolve ``service`` again: new addresses join the pool, vanished ones leave it (an
        unresolvable name keeps the engines it had)."""
        if not self.service:
            return
        self._discovered_at = time.monotonic()
        try:
            found = await resolve_service(self.service)
        except OSError as err:
            log.warning("engine service not resolvable", service=self.service, error=str(err))
            return
        for url in found:
            if url not in self._engines:
                log.info("engine discovered", engine=url)
                self._engines[url] = PooledEngine(Engine(url, self.timeout_s, self.api_key))
        wanted = set(found) | self._static
        for url in [u for u in self._engines if u not in wanted]:
            log.info("engine gone from the service", engine=url)
            self._retired.append(self._engines.pop(url).client)  # closed with the pool (requests may use it)
            with contextlib.suppress(KeyError):
                ENGINE_UP.remove(url)  # a replaced pod's series ends (labels stay bounded)

    async def check_health(self) -> bool:
        """One health pass over every engine (concurrently); whether any is up."""
        engines = self.engines
        ups = await asyncio.gather(*(e.client.health() for e in engines))
        for engine, up in zip(engines, ups, strict=True):
            self.mark(engine, up)
        ENGINES.labels("up", self.name).set(sum(ups))
        ENGINES.labels("down", self.name).set(len(ups) - sum(ups))
        return any(ups)

    async def healthy(self) -> bool:
        """Readiness: at least one engine answers its health check now."""
        return await self.check_health()

    def mark(self, engine: PooledEngine, up: bool) -> None:
        """Put ``engine`` in or out of rotation; out, it forgets its adapters (it may come back
        restarted, without them: they are loaded again on demand)."""
        if self._engines.get(engine.url) is engine:
            ENGINE_UP.labels(engine.url).set(1 if up else 0)
        if not up:
            if engine.up:
                log.warning("engine out of rotation", engine=engine.url)
            engine.loaded.clear()
            engine.adapters = OrderedDict((n, c) for n, c in engine.adapters.items() if c > 0)
        elif not engine.up:
            log.info("engine back in rotation", engine=engine.url)
        engine.up = up

    async def _watch(self) -> None:
        while True:
            try:
                if self.service and time.monotonic() >= self._discovered_at + self.discovery_interval_s:
                    await self.discover()
                await self.check_health()
            except Exception:  # the watcher must survive anything
                log.exception("engine health pass failed")
            await asyncio.sleep(self.health_interval_s)

    async def start(self) -> None:
        """Resolve the engine service (if any) and start the health checks on the running event
        loop (idempotent; the first request starts the checks too)."""
        if self._started:
            return
        self._started = True
        await self.discover()
        self._watch_soon()

    def _watch_soon(self) -> None:
        if self.health_interval_s > 0 and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="engine-health")

    # --- routing ---

    def lease(self, adapter: str | None, exclude: Iterable[PooledEngine] = ()) -> Lease:
        """The engine that serves the next request (counted in flight until the lease is released)."""
        self._watch_soon()
        pool = [e for e in self._engines.values() if all(e is not x for x in exclude)]
        if not pool:
            raise Unavailable("No inference engine is available.")
        # Every engine marked down: try them anyway (the marks may be stale; the call will tell).
        candidates = [e for e in pool if e.up] or pool
        holders = [e for e in candidates if adapter is not None and adapter in e.adapters]
        if holders:
            engine = min(holders, key=lambda e: e.inflight)
        else:
            engine = min(candidates, key=lambda e: (e.inflight, len(e.adapters)))
        engine.inflight += 1
        if adapter is not None:
            engine.adapters[adapter] = engine.adapters.get(adapter, 0) + 1
            engine.adapters.move_to_end(adapter)
        return Lease(self, engine, adapter)

    def release(self, engine: PooledEngine, adapter: str | None) -> None:
        engine.inflight = max(0, engine.inflight - 1)
        if adapter is not None and adapter in engine.adapters:
            engine.adapters[adapter] = max(0, engine.adapters[adapter] - 1)
            if engine.adapters[adapter] == 0 and adapter not in engine.loaded:
                del engine.adapters[adapter]  # its load failed: do not prefer this engine for it

    def _victims(self, engine: PooledEngine, adapter: str) -> list[str]:
        """Idle adapters to unload from ``engine`` (least recently used first) so that ``adapter``
        fits; they leave its routing state at once (a concurrent load does not pick them again)."""
        victims: list[str] = []
        over = len(engine.adapters) - self.max_loras
        for name, users in engine.adapters.items():
            if over <= 0:
                break
            if name != adapter and users == 0:
                victims.append(name)
                over -= 1
        for name in victims:
            del engine.adapters[name]
        return victims

    async def _local_path(self, uri: str) -> str:
        """A path the engines can load ``uri`` from (an object-store URL is fetched into the cache
        first, in a worker thread)."""
        if self.adapters is not None:
            if is_remote(uri):
                return await asyncio.to_thread(self.adapters.local_path, uri)
            return self.adapters.local_path(uri)
        if is_remote(uri):
            raise Unavailable(f"Adapter {uri} cannot be fetched: no adapter cache directory is configured.")
        return uri.removeprefix("file://")

    async def ensure(self, engine: PooledEngine, name: str, uri: str) -> None:
        """Load adapter ``name`` (from ``uri``: a folder, or an object-store URL) on ``engine``,
        unloading least recently used ones to make room; once, however many requests wait for it."""
        if name in engine.loaded:
            return
        path = await self._local_path(uri)
        for victim in self._victims(engine, name):
            await self._unload(engine, victim)
        async with engine.lock(name):
            if name in engine.loaded:
                return
            try:
                await engine.client.load_adapter(name, path)
            except EngineUnreachable:
                self.mark(engine, False)
                raise
            engine.loaded.add(name)

    async def _unload(self, engine: PooledEngine, name: str) -> None:
        async with engine.lock(name):  # a request for it meanwhile waits, then loads it again
            engine.loaded.discard(name)
            await engine.client.unload_adapter(name)

    def forget(self, engine: PooledEngine, name: str) -> None:
        """``engine`` no longer has adapter ``name`` (it answered 404 for it: restarted)."""
        engine.loaded.discard(name)

    async def drop_adapter(self, name: str) -> None:
        """Unload ``name`` (its model was deleted) from every engine where no request is using it."""
        holders = [e for e in self._engines.values() if e.adapters.get(name) == 0 or
                   (name not in e.adapters and name in e.loaded)]
        for engine in holders:
            engine.adapters.pop(name, None)
        await asyncio.gather(*(self._unload(engine, name) for engine in holders))

    # --- calls (a connection failure takes the engine out of rotation, an answer puts it back) ---

    async def post(self, engine: PooledEngine, path: str, content: bytes) -> bytes:
        """:meth:`Engine.post` on ``engine``."""
        try:
            raw = await engine.client.post(path, content)
        except EngineUnreachable:
            self.mark(engine, False)
            raise
        if not engine.up:
            self.mark(engine, True)
        return raw

    async def stream(self, engine: PooledEngine, path: str, content: bytes) -> AsyncIterator[bytes]:
        """:meth:`Engine.stream` on ``engine``."""
        upstream = engine.client.stream(path, content)
        try:
            async for line in upstream:
                if not engine.up:
                    self.mark(engine, True)
                yield line
        except EngineUnreachable:
            self.mark(engine, False)
            raise
        finally:
            await upstream.aclose()  # type: ignore[attr-defined]

    # --- shutdown ---

    async def close(self) -> None:
        """Stop the health checks and close the engines' sessions."""
        task, self._task = self._task, None
        self._started = False
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.wait([task])
        for client in [e.client for e in self.engines] + self._retired:
            await client.close()
        self._retired.clear()
