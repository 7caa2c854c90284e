"""The console's client of the public REST API, with the signed-in user's API key.

Unless ``COACHFORGE_CONSOLE_API_URL`` (or a route of ``…_API_ROUTES``) says where the API is, calls
go to the app of the same process, in-process (``httpx.ASGITransport``): no network, same
authentication, same error bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from starlette.requests import Request

from coachforge_console.settings import ConsoleSettings


class ApiError(Exception):
    """An API call that did not succeed, with the OpenAI error body's message."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_from(response: httpx.Response) -> ApiError:
    message, code, param = "", None, None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or "")
        code = err.get("code") if isinstance(err.get("code"), str) else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
    if not message:
        message = f"The API answered {response.status_code} {response.reason_phrase}."
    return ApiError(response.status_code, message, code, param)


class Router:
    """Which base URL serves a path: the longest matching prefix of ``api_routes``, else ``api_url``,
    else the same process (``None``)."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.default = settings.api_url.rstrip("/") if settings.api_url else None
        self.routes = sorted(((p.rstrip("/"), u.rstrip("/")) for p, u in settings.api_routes.items()),
                             key=lambda r: -len(r[0]))

    def base_for(self, path: str) -> str | None:
        for prefix, url in self.routes:
            if path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?"):
                return url
        return self.default


class Api:
    """One request's view of the API, as the signed-in key."""

    def __init__(self, request: Request, settings: ConsoleSettings, router: Router, api_key: str | None) -> None:
        self._request, self._settings, self._router, self._key = request, settings, router, api_key
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def _client(self, base: str | None) -> httpx.AsyncClient:
        if base not in self._clients:
            headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
            if base is None:
                transport = httpx.ASGITransport(app=self._request.app)
                self._clients[base] = httpx.AsyncClient(transport=transport, base_url="http://coachforge.internal",
                                                        headers=headers, timeout=self._settings.api_timeout_s)
            else:
                self._clients[base] = httpx.AsyncClient(base_url=base, headers=headers,
                                                        timeout=self._settings.api_timeout_s)
        return self._clients[base]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def raw(self, method: str, path: str, *, params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
                  json: Any = None, data: Mapping[str, Any] | None = None, files: Any = None) -> httpx.Response:
        base = self._router.base_for(path)
        try:
            return await self._client(base).request(method, path, params=params, json=json, data=data, files=files)
        except httpx.HTTPError as err:
            where = base or "this process"
            raise ApiError(502, f"The API at {where} could not be reached: {type(err).__name__}.") from None

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a successful call (``None`` for 204); :class:`ApiError` otherwise."""
        response = await self.raw(method, path, **kwargs)
        if response.status_code >= 400:
            raise error_from(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(502, f"The API answered {path} with something that is not JSON.") from None

    async def get(self, path: str, **params: Any) -> Any:
        return await self.call("GET", path, params={k: v for k, v in params.items() if v not in (None, "")})

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.call("POST", path, json=body if body is not None else {})

    async def optional(self, path: str, **params: Any) -> Any:
        """Like :meth:`get`, but ``None`` when the API has no such thing (404): for parts of a page whose
        API may not exist in this deployment."""
        try:
            return await self.get(path, **params)
        except ApiError as err:
            if err.status in (404, 405):
                return None
            raise
