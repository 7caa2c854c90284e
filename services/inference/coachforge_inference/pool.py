"""The engines behind the inference service, and which one answers a request.

* Engines come from ``engine_urls`` (or the one ``engine_url``) and, optionally, from the
  addresses of a headless service (``engine_service``), resolved again periodically.
* A background thread checks each engine's ``GET /health``; a failed check or a failed call
  takes the engine out of rotation (and forgets its adapters: a restarted engine has none) until
  a check passes again.
* Routing: a healthy engine that already holds (or is loading) the adapter, least in flight
  first; otherwise the least loaded healthy engine. Selection and bookkeeping happen under one
  lock, so a burst of first requests for an adapter picks one engine and loads it once there
  (one load lock per engine and adapter).
* Each engine keeps at most ``max_loras`` adapters: before loading another, the least recently
  used adapters no request is using are unloaded (``POST /v1/unload_lora_adapter``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from coachforge_inference.adapters import AdapterCache, is_remote
from coachforge_inference.engine import Engine
from coachforge_inference.metrics import ENGINE_UP, ENGINES
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.errors import Unavailable
from coachforge_shared.logging import get_logger
from coachforge_shared.settings import PlatformSettings

log = get_logger("coachforge.inference.pool")


def resolve_service(service: str) -> list[str]:
    """Engine base URLs for a headless service ``host:port`` (or ``http://host:port``): one per A/AAAA record."""
    parts = urlsplit(service if "://" in service else f"http://{service}")
    host, port, scheme = parts.hostname or "", parts.port or 8000, parts.scheme or "http"
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    urls = []
    for family, *_, addr in infos:
        ip = str(addr[0])
        urls.append(f"{scheme}://[{ip}]:{port}" if family == socket.AF_INET6 else f"{scheme}://{ip}:{port}")
    return sorted(set(urls))


class Lease:
    """One request's hold on an engine (counted in flight until released)."""

    def __init__(self, pool: EnginePool, engine: Engine, adapter: str | None) -> None:
        self.pool, self.engine, self.adapter = pool, engine, adapter
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.pool.release(self.engine, self.adapter)


class EnginePool:
    def __init__(self, urls: Iterable[str] = (), *, timeout_s: float = 300.0, max_loras: int = 4,
                 health_interval_s: float = 5.0, service: str | None = None,
                 discovery_interval_s: float = 15.0, engines: Iterable[Engine] = (),
                 adapters: AdapterCache | None = None) -> None:
        self.guard = threading.RLock()
        self.adapters = adapters
        self.timeout_s, self.max_loras = timeout_s, max_loras
        self.health_interval_s, self.service, self.discovery_interval_s = (
            health_interval_s, service, discovery_interval_s)
        self._static: list[str] = []
        self._engines: dict[str, Engine] = {}
        for engine in engines:
            engine.guard, engine.max_loras = self.guard, max_loras
            self._engines[engine.base_url] = engine
            self._static.append(engine.base_url)
        for url in urls:
            url = url.rstrip("/")
            if url not in self._engines:
                self._engines[url] = Engine(url, timeout_s, max_loras, self.guard)
                self._static.append(url)
        self._retired: list[Engine] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if service:
            self.discover()

    @classmethod
    def from_settings(cls, settings: InferenceSettings, engine: Engine | None = None) -> EnginePool:
        """The pool ``settings`` describe; ``engine`` (already built, normally for ``engine_url``) is
        the one engine when neither ``engine_urls`` nor ``engine_service`` is set, and is reused when
        it is one of ``engine_urls``."""
        urls = [u.rstrip("/") for u in settings.engine_urls]
        if not urls and not settings.engine_service:
            urls = [engine.base_url if engine is not None else settings.engine_url.rstrip("/")]
        given = [engine] if engine is not None and engine.base_url in urls else []
        cache_dir = settings.adapter_cache_dir or PlatformSettings().data_dir / "adapter-cache"
        return cls(urls, engines=given, timeout_s=settings.request_timeout_s, max_loras=settings.engine_max_loras,
                   health_interval_s=settings.engine_health_interval_s, service=settings.engine_service,
                   discovery_interval_s=settings.engine_discovery_interval_s,
                   adapters=AdapterCache(cache_dir, settings.adapter_storage_options))

    @property
    def engines(self) -> list[Engine]:
        with self.guard:
            return list(self._engines.values())

    def engine(self, url: str) -> Engine:
        return self._engines[url.rstrip("/")]

    # --- discovery and health ---

    def discover(self) -> None:
        """Resolve ``service`` again: new addresses join the pool, vanished ones leave it."""
        if not self.service:
            return
        try:
            found = resolve_service(self.service)
        except OSError as err:
            log.warning("engine service not resolvable", service=self.service, error=str(err))
            return
        with self.guard:
            wanted = set(found) | set(self._static)
            for url in found:
                if url not in self._engines:
                    log.info("engine discovered", engine=url)
                    self._engines[url] = Engine(url, self.timeout_s, self.max_loras, self.guard)
            for url in [u for u in self._engines if u not in wanted]:
                log.info("engine gone from the service", engine=url)
                self._retired.append(self._engines.pop(url))
                try:
                    ENGINE_UP.remove(url)  # a replaced pod's series ends (labels stay bounded)
                except KeyError:
                    pass

    def check_health(self) -> bool:
        """One health pass over every engine; whether any is up."""
        ups = [engine.healthy() for engine in self.engines]
        ENGINES.labels("up").set(sum(ups))
        ENGINES.labels("down").set(len(ups) - sum(ups))
        return any(ups)

    def healthy(self) -> bool:
        """Readiness: at least one engine answers its health check."""
        return self.check_health()

    def _watch(self) -> None:
        next_discovery = 0.0
        while not self._stop.is_set():
            if self.service and time.monotonic() >= next_discovery:
                self.discover()
                next_discovery = time.monotonic() + self.discovery_interval_s
            try:
                self.check_health()
            except Exception:  # the watcher must survive anything
                log.exception("engine health pass failed")
            self._stop.wait(self.health_interval_s)

    def start(self) -> None:
        """Start the background health checks (idempotent; also started by the first request)."""
        with self.guard:
            if self._thread is not None or self.health_interval_s <= 0:
                return
            self._thread = threading.Thread(target=self._watch, name="engine-health", daemon=True)
            self._thread.start()

    # --- routing ---

    def acquire(self, adapter: str | None, exclude: Iterable[Engine] = ()) -> Engine:
        """The engine that serves the next request (counted in flight until :meth:`release`)."""
        if self._thread is None:
            self.start()
        excluded = {id(e) for e in exclude}
        with self.guard:
            pool = [e for e in self._engines.values() if id(e) not in excluded]
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
            return engine

    def lease(self, adapter: str | None, exclude: Iterable[Engine] = ()) -> Lease:
        """:meth:`acquire` as a lease whose :meth:`Lease.release` may be called more than once."""
        return Lease(self, self.acquire(adapter, exclude), adapter)

    def release(self, engine: Engine, adapter: str | None) -> None:
        with self.guard:
            engine.inflight = max(0, engine.inflight - 1)
            if adapter is not None and adapter in engine.adapters:
                engine.adapters[adapter] = max(0, engine.adapters[adapter] - 1)
                if engine.adapters[adapter] == 0 and not engine.loaded(adapter):
                    del engine.adapters[adapter]  # its load failed: do not prefer this engine for it

    def _victims(self, engine: Engine, adapter: str) -> list[str]:
        """Idle adapters to unload from ``engine`` (least recently used first) so that ``adapter`` fits."""
        with self.guard:
            victims: list[str] = []
            over = len(engine.adapters) - engine.max_loras
            for name, users in engine.adapters.items():
                if over <= 0:
                    break
                if name != adapter and users == 0:
                    victims.append(name)
                    over -= 1
            for name in victims:
                del engine.adapters[name]
            return victims

    def ensure(self, engine: Engine, name: str, path: str) -> None:
        """Load adapter ``name`` (from ``path``: a folder, or an object-store URL fetched into the
        local cache first) on ``engine``, unloading least recently used ones to make room."""
        if engine.loaded(name):
            return
        if self.adapters is not None:
            path = self.adapters.local_path(path)
        for victim in self._victims(engine, name):
            engine.unload_adapter(victim)
        engine.ensure_adapter(name, path)

    async def aensure(self, engine: Engine, name: str, path: str) -> None:
        """:meth:`ensure` for the event loop (a download runs in a thread)."""
        if engine.loaded(name):
            return
        if self.adapters is not None and is_remote(path):
            path = await asyncio.to_thread(self.adapters.local_path, path)
        for victim in self._victims(engine, name):
            await engine.aunload_adapter(victim)
        await engine.aensure_adapter(name, path)

    def drop_adapter(self, name: str) -> None:
        """Unload ``name`` (its model was deleted) from every engine where no request is using it."""
        with self.guard:
            holders = [e for e in self._engines.values() if e.adapters.get(name) == 0 or
                       (name not in e.adapters and e.loaded(name))]
            for engine in holders:
                engine.adapters.pop(name, None)
        for engine in holders:
            engine.unload_adapter(name)

    # --- shutdown ---

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for engine in self.engines + self._retired:
            engine.close()

    async def aclose(self) -> None:
        for engine in self.engines + self._retired:
            await engine.aclose()
