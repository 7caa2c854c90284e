"""Client of one vLLM OpenAI-compatible engine, with LoRA adapters loaded (and unloaded) at run time.

The REST path calls the engine with aiohttp: measured against a local HTTP server at concurrency 8,
an httpx ``AsyncClient`` POST cost 1.05-1.08 ms of CPU and an aiohttp one 0.11-0.13 ms, on a
gateway whose goal is under 2 ms added in all. The threads of the gRPC path and the health checks
keep a blocking httpx client.

The routing state (health, requests in flight, adapters in least-recently-used order) lives here
too, guarded by the lock of the :class:`~coachforge_inference.pool.EnginePool` that owns the engine.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Generator
from typing import Any

import aiohttp
import httpx

from coachforge_inference.metrics import ADAPTER_EVICTIONS, ADAPTER_LOADS, ENGINE_UP
from coachforge_shared.errors import CoachForgeError, InvalidArgument, NotFound, Unavailable
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.inference.engine")


class EngineError(CoachForgeError):
    """An error answered by the engine, passed on with its status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = status


class EngineUnreachable(Unavailable):
    """The engine could not be reached (connection refused or reset, timeout): it leaves the rotation,
    and a request that has not streamed anything yet may be retried on another engine."""


_ASYNC_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
"""What an aiohttp call raises when the engine cannot be reached or stops answering."""
_JSON = {"content-type": "application/json"}


class Engine:
    def __init__(self, base_url: str, timeout_s: float, max_loras: int = 4,
                 guard: threading.RLock | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=5.0),
                                 limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=timeout_s)
        self._ahttp: aiohttp.ClientSession | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._loaded: set[str] = set()
        self._locks: dict[str, threading.Lock] = {}
        self._alocks: dict[str, asyncio.Lock] = {}
        self.guard = guard or threading.RLock()
        """Guards the routing state below (the pool's lock when a pool owns this engine)."""
        self.max_loras = max_loras
        self.up = True
        self.inflight = 0
        self.adapters: OrderedDict[str, int] = OrderedDict()
        """Adapters routed here (loaded or loading), least recently used first -> requests using each now."""

    def __repr__(self) -> str:
        return f"Engine({self.base_url!r}, up={self.up}, inflight={self.inflight}, adapters={list(self.adapters)})"

    @property
    def ahttp(self) -> aiohttp.ClientSession:
        """The async client the REST endpoints use, bound to the running event loop (the server has
        one; a client made in another loop, e.g. by a test harness, is replaced rather than reused)."""
        loop = asyncio.get_running_loop()
        if self._ahttp is None or self._aloop is not loop:
            self._aloop = loop
            self._alocks = {}
            # read_bufsize: a server-sent event line may be up to twice this long (long logprobs).
            self._ahttp = aiohttp.ClientSession(timeout=self._timeout, connector=aiohttp.TCPConnector(limit=256),
                                                read_bufsize=2**20, auto_decompress=False)
        return self._ahttp

    def _mark(self, up: bool) -> None:
        ENGINE_UP.labels(self.base_url).set(1 if up else 0)
        with self.guard:
            if not up and self.up:
                log.warning("engine out of rotation", engine=self.base_url)
            if not up:
                # Whatever it held is presumed lost (it may come back restarted): reload on demand.
                self._loaded.clear()
                self.adapters = OrderedDict((n, c) for n, c in self.adapters.items() if c > 0)
            elif not self.up:
                log.info("engine back in rotation", engine=self.base_url)
            self.up = up

    def healthy(self) -> bool:
        try:
            up = self.http.get("/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            up = False
        self._mark(up)
        return up

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def _lock(self, name: str) -> threading.Lock:
        with self.guard:
            return self._locks.setdefault(name, threading.Lock())

    def _loaded_ok(self, name: str, path: str, status: int, text: str) -> None:
        if status != 200 and "already been loaded" not in text:
            ADAPTER_LOADS.labels(self.base_url, "error").inc()
            raise Unavailable(f"Engine refused to load adapter {name}: {text[:300]}")
        ADAPTER_LOADS.labels(self.base_url, "loaded").inc()
        log.info("adapter loaded", adapter=name, path=path, engine=self.base_url)
        self._loaded.add(name)

    def _unreachable(self, what: str, err: Exception) -> EngineUnreachable:
        self._mark(False)
        return EngineUnreachable(f"Engine unreachable{what}: {type(err).__name__}: {err}")

    def ensure_adapter(self, name: str, path: str) -> None:
        """Load adapter ``name`` once, even under a burst of first requests (one lock per adapter)."""
        if name in self._loaded:
            return
        with self._lock(name):
            if name in self._loaded:
                return
            try:
                r = self.http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            except httpx.HTTPError as err:
                ADAPTER_LOADS.labels(self.base_url, "error").inc()
                raise self._unreachable(" while loading adapter", err) from None
            self._loaded_ok(name, path, r.status_code, r.text)

    async def aensure_adapter(self, name: str, path: str) -> None:
        """:meth:`ensure_adapter` for the event loop: one asyncio lock per adapter name."""
        if name in self._loaded:
            return
        client = self.ahttp  # (re)binds the client and the locks to this event loop
        lock = self._alocks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._loaded:
                return
            try:
                async with client.post(f"{self.base_url}/v1/load_lora_adapter",
                                       json={"lora_name": name, "lora_path": path}) as r:
                    status, text = r.status, await r.text()
            except _ASYNC_ERRORS as err:
                ADAPTER_LOADS.labels(self.base_url, "error").inc()
                raise self._unreachable(" while loading adapter", err) from None
            self._loaded_ok(name, path, status, text)

    def _unloaded(self, name: str, status: int | None) -> None:
        self._loaded.discard(name)
        ok = status in (200, 404)
        ADAPTER_EVICTIONS.labels(self.base_url, "unloaded" if ok else "error").inc()
        log.info("adapter unloaded (least recently used)", adapter=name, engine=self.base_url, status=status)

    def unload_adapter(self, name: str) -> None:
        """Unload ``name`` (to make room); an engine that no longer has it is fine."""
        with self._lock(name):
            try:
                status: int | None = self.http.post("/v1/unload_lora_adapter", json={"lora_name": name}).status_code
            except httpx.HTTPError:
                status = None
            self._unloaded(name, status)

    async def aunload_adapter(self, name: str) -> None:
        client = self.ahttp
        async with self._alocks.setdefault(name, asyncio.Lock()):
            try:
                async with client.post(f"{self.base_url}/v1/unload_lora_adapter", json={"lora_name": name}) as r:
                    status: int | None = r.status
            except _ASYNC_ERRORS:
                status = None
            self._unloaded(name, status)

    def forget(self, name: str) -> None:
        self._loaded.discard(name)

    @staticmethod
    def _error(status: int, text: str) -> CoachForgeError:
        """The engine's error answer (``status`` >= 400, body ``text``) as a typed error; the body
        is decoded only for errors, never on the hot path of a successful answer."""
        try:
            message = json.loads(text).get("error", {}).get("message") or text
        except (ValueError, AttributeError):
            message = text
        if status == 404:
            return NotFound(message, param="model")
        if status == 400:
            return InvalidArgument(message)
        return EngineError(status if status < 600 else 502, message)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self.http.post(path, json=body)
        except httpx.HTTPError as err:
            raise self._unreachable("", err) from None
        if not self.up:
            self._mark(True)
        if r.status_code >= 400:
            raise self._error(r.status_code, r.text)
        result: dict[str, Any] = r.json()
        return result

    def stream(self, path: str, body: dict[str, Any]) -> Generator[bytes, None, None]:
        """Server-sent event lines from the engine (each ending with a newline)."""
        try:
            with self.http.stream("POST", path, json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    raise self._error(r.status_code, r.text)
                for line in r.iter_lines():
                    yield (line + "\n").encode()
        except httpx.HTTPError as err:
            raise self._unreachable("", err) from None

    async def apost(self, path: str, content: bytes) -> bytes:
        """POST an already encoded JSON body; the engine's answer body (errors raised as typed errors)."""
        try:
            async with self.ahttp.post(self.base_url + path, data=content, headers=_JSON) as r:
                status, raw = r.status, await r.read()
        except _ASYNC_ERRORS as err:
            raise self._unreachable("", err) from None
        if not self.up:
            self._mark(True)
        if status >= 400:
            raise self._error(status, raw.decode(errors="replace"))
        return raw

    async def astream(self, path: str, content: bytes) -> AsyncIterator[bytes]:
        """Server-sent event lines from the engine (each ending with a newline); errors before the
        first line are raised as typed errors."""
        try:
            async with self.ahttp.post(self.base_url + path, data=content, headers=_JSON) as r:
                if r.status >= 400:
                    raise self._error(r.status, await r.text(errors="replace"))
                async for line in r.content:
                    yield line if line.endswith(b"\n") else line + b"\n"
        except _ASYNC_ERRORS as err:
            raise self._unreachable("", err) from None

    async def aclose(self) -> None:
        if self._ahttp is not None:
            await self._ahttp.close()
            self._ahttp = None

    def close(self) -> None:
        self.http.close()
