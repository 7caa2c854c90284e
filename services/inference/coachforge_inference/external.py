"""External models: fine-tuned models that a tenant's remote OpenAI-compatible fine-tuning API trained
but offers no download of (OpenAI itself). The registry keeps them as versions without an artifact,
naming the remote's model (``external_model``) and its base URL (``external_base_url``); their
requests are not sent to the engines but forwarded here, with httpx, to
``<external_base_url>/chat/completions`` (or ``/completions``), ``model`` replaced by the remote's
model and ``Authorization: Bearer`` the tenant's key from the remotes file the trainer uses
(``COACHFORGE_INFERENCE_REMOTES_FILE``, read again when it changed: :class:`RemotesFile`).

A key only ever goes to the host it was configured for: a request is refused (503
``remote_mismatch``) when the model's base URL is not the tenant's configured remote, and (503
``remote_not_configured``) when the tenant has none. The key is never logged nor put in an error.
An error the remote answers keeps its status, type, param and code, its message prefixed with who
answered (:class:`RemoteError`), except a refused key (401/403: the tenant's configured key, not the
caller's), which is a 502 ``remote_key_refused``; a remote that cannot be reached is a 503
``remote_unreachable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx

from coachforge.registry.v1 import registry_pb2
from coachforge_inference.settings import InferenceSettings
from coachforge_shared.errors import CoachForgeError, Unavailable
from coachforge_shared.logging import get_logger
from coachforge_shared.remotes import Remote, RemotesFile, shown_url

log = get_logger("coachforge.inference.external")

_GRPC_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
               403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
               409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
               422: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
               503: grpc.StatusCode.UNAVAILABLE}


class RemoteError(CoachForgeError):
    """An error the remote answered for an external model, passed on with its status, and its error's
    type, param and code where it gave them."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.http_status = status
        self.grpc_code = _GRPC_CODES.get(status, grpc.StatusCode.UNAVAILABLE if status >= 500
                                         else grpc.StatusCode.FAILED_PRECONDITION)
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")


def remote_error(status: int, text: str, where: str, key: str = "") -> RemoteError:
    """The remote's error answer (``status`` >= 400, body ``text``: OpenAI's error object, or any text),
    with ``key`` (the key it was sent) blotted out wherever the remote echoed it."""
    if key:
        text = text.replace(key, "***")
    error: dict[str, Any] = {}
    try:
        body = json.loads(text)
        if isinstance(body, dict):
            error = body["error"] if isinstance(body.get("error"), dict) else body
    except ValueError:
        pass
    message = error.get("message") if isinstance(error.get("message"), str) else text.strip()
    param, code, kind = error.get("param"), error.get("code"), error.get("type")
    if status in (401, 403):  # the tenant's configured remote key was refused, not the caller's key: a gateway error
        return RemoteError(502, f"The remote model API at {where} refused the tenant's configured key ({status}): "
                                f"{(message or 'no message')[:2000]}", type="server_error", code="remote_key_refused")
    return RemoteError(status if 400 <= status < 600 else 502,
                       f"The remote model API at {where} answered {status}: {(message or 'no message')[:2000]}",
                       type=kind if isinstance(kind, str) and kind else None,
                       param=param if isinstance(param, str) else None,
                       code=str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None)


def is_external(model: registry_pb2.Model) -> bool:
    """Whether ``model`` is served by a remote rather than the engines."""
    return bool(model.external_model)


def remote_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request as a remote gets it: without vLLM's ``continuous_usage_stats`` (the engines' running
    usage, which OpenAI's API does not know) in ``stream_options``."""
    options = body.get("stream_options")
    if isinstance(options, dict) and "continuous_usage_stats" in options:
        return {**body, "stream_options": {k: v for k, v in options.items() if k != "continuous_usage_stats"}}
    return body


class ExternalModels:
    """Forwards requests for external models to the remotes that serve them (one httpx client, bound
    to the running event loop, for every remote)."""

    def __init__(self, settings: InferenceSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.remotes = RemotesFile(settings.remotes_file, logging.getLogger("coachforge.inference.remotes"))
        self._timeout = httpx.Timeout(settings.request_timeout_s, connect=10.0)
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._loop = loop
            self._http = httpx.AsyncClient(timeout=self._timeout, transport=self._transport, follow_redirects=False,
                                           trust_env=False)
        return self._http

    def remote_for(self, tenant_id: str, model: registry_pb2.Model) -> Remote:
        """The tenant's remote that serves ``model``: refused when the tenant has none, or when it is not
        the remote the model was trained on (its key goes nowhere else)."""
        remote = self.remotes.remote_for(tenant_id)
        if remote is None:
            raise Unavailable(f"The model '{model.id}' is served by the remote at {model.external_base_url}, but no "
                              "remote is configured for this tenant (the remotes file has no entry for it).",
                              param="model", code="remote_not_configured")
        configured = remote.shown_url.rstrip("/")
        if shown_url(model.external_base_url).rstrip("/") != configured:
            raise Unavailable(f"The model '{model.id}' is served by the remote at {model.external_base_url}, but this "
                              f"tenant's configured remote is {configured}; its key is not sent to another host.",
                              param="model", code="remote_mismatch")
        return remote

    def _request(self, model: registry_pb2.Model, remote: Remote, path: str, content: bytes) -> httpx.Request:
        url = model.external_base_url.rstrip("/") + "/" + path.removeprefix("/v1/").lstrip("/")
        return self.http.build_request("POST", url, content=content, headers={
            "authorization": f"Bearer {remote.api_key}", "content-type": "application/json",
            "accept": "application/json, text/event-stream"})

    def _unreachable(self, model: registry_pb2.Model, err: Exception) -> Unavailable:
        log.warning("remote model API unreachable", model=model.id, remote=model.external_base_url,
                    error=type(err).__name__)
        return Unavailable(f"The remote model API at {model.external_base_url} serving '{model.id}' cannot be "
                           f"reached: {type(err).__name__}.", param="model", code="remote_unreachable")

    async def post(self, model: registry_pb2.Model, remote: Remote, path: str, content: bytes) -> bytes:
        """POST an encoded request for ``model`` (``path``: ``/v1/chat/completions`` or ``/v1/completions``)
        to its remote; the answer's body (an error answered raised as :class:`RemoteError`)."""
        try:
            r = await self.http.send(self._request(model, remote, path, content))
        except httpx.TransportError as err:
            raise self._unreachable(model, err) from None
        if r.status_code >= 400:
            raise remote_error(r.status_code, r.text, model.external_base_url, remote.api_key)
        return r.content

    async def stream(self, model: registry_pb2.Model, remote: Remote, path: str,
                     content: bytes) -> AsyncIterator[bytes]:
        """Server-sent event lines of the remote's streamed answer (each ending with a newline); an error
        answered before the first line raised as :class:`RemoteError`, a connection lost at any point as
        ``Unavailable``."""
        try:
            r = await self.http.send(self._request(model, remote, path, content), stream=True)
        except httpx.TransportError as err:
            raise self._unreachable(model, err) from None
        try:
            if r.status_code >= 400:
                await r.aread()
                raise remote_error(r.status_code, r.text, model.external_base_url, remote.api_key)
            async for line in r.aiter_lines():
                yield line.encode() + b"\n"
        except httpx.TransportError as err:
            raise self._unreachable(model, err) from None
        finally:
            await r.aclose()

    async def close(self) -> None:
        """Close the client (from the loop that used it; one of a finished loop is dropped)."""
        http, loop, self._http, self._loop = self._http, self._loop, None, None
        if http is not None and loop is asyncio.get_running_loop():
            await http.aclose()


class NoLease:
    """What an external model's request holds instead of an engine's lease: nothing to give back."""

    __slots__ = ()

    def release(self) -> None:
        pass
