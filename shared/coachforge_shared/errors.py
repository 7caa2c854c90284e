"""Typed errors. They are mapped to HTTP and gRPC codes in exactly two places:
:func:`coachforge_shared.http.install_error_handlers` and
:class:`coachforge_shared.grpc_server.ErrorAndAuthInterceptor`.
Handlers raise these and never set status codes by hand."""

from __future__ import annotations

import grpc


class CoachForgeError(Exception):
    """Base class. ``param`` names the offending field or line, ``code`` is a stable machine code."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    type = "server_error"
    retry_after_s: int | None = None
    """Seconds after which trying again may succeed (sent as HTTP ``Retry-After``), when known."""
    headers: dict[str, str] | None = None
    """More response headers of the error's HTTP answer (e.g. the ``x-ratelimit-*`` of a 429)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_body(self) -> dict[str, object]:
        """OpenAI-style error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidArgument(CoachForgeError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    type = "invalid_request_error"


class Unauthenticated(CoachForgeError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    type = "authentication_error"


class PermissionDenied(CoachForgeError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    type = "permission_error"


class NotFound(CoachForgeError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    type = "invalid_request_error"


class Conflict(CoachForgeError):
    http_status = 409
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    type = "invalid_request_error"


class FailedPrecondition(CoachForgeError):
    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    type = "invalid_request_error"


class PayloadTooLarge(CoachForgeError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    type = "invalid_request_error"


class Unavailable(CoachForgeError):
    """Something this call needs is away for now (the database, another service, an engine):
    ``retry_after_s`` says when to try again, where a retry is expected to succeed."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after_s = retry_after_s


class RateLimited(CoachForgeError):
    """Too many requests or tokens for the tenant's limits (``code`` ``rate_limit_exceeded``, ``type``
    the limit that was hit: ``requests`` or ``tokens``), or its daily quota spent (``code`` and
    ``type`` ``insufficient_quota``): 429 with ``Retry-After`` and the ``x-ratelimit-*`` headers."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, kind: str, code: str, retry_after_s: int,
                 headers: dict[str, str] | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.type = kind
        self.retry_after_s = retry_after_s
        self.headers = headers


RATE_LIMIT_CODES = ("rate_limit_exceeded", "insufficient_quota")
"""The ``code`` of a :class:`RateLimited` error; over gRPC they tell it from a :class:`PayloadTooLarge`."""


class Internal(CoachForgeError):
    pass


_BY_GRPC_CODE: dict[grpc.StatusCode, type[CoachForgeError]] = {
    cls.grpc_code: cls
    for cls in (InvalidArgument, Unauthenticated, PermissionDenied, NotFound, Conflict,
                FailedPrecondition, PayloadTooLarge, Unavailable)
}


ERROR_PARAM_KEY = "x-error-param"
"""Trailing metadata of a failed gRPC call: the ``param`` of the typed error it stands for."""
ERROR_CODE_KEY = "x-error-code"
"""Trailing metadata of a failed gRPC call: the machine ``code`` of the typed error, where one is set."""
ERROR_RETRY_AFTER_KEY = "x-retry-after"
"""Trailing metadata of a failed gRPC call: seconds after which trying again may succeed, where known."""
TOO_MANY_CALLS = "too_many_concurrent_calls"
"""The code of a call refused because its method had as many calls in progress as it may: the
server is busy, not the request too large (RESOURCE_EXHAUSTED alone means :class:`PayloadTooLarge`)."""


UPSTREAM_RETRY_AFTER_S = 5
"""``Retry-After`` of a 503 caused by another service being away (the database's own outage uses the same)."""


def from_rpc_error(err: grpc.RpcError) -> CoachForgeError:
    """Turn a gRPC error received from another service back into the typed error it came from."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (err.details() if isinstance(err, grpc.Call) else None) or str(err)
    param = error_code = None
    retry_after_s = UPSTREAM_RETRY_AFTER_S
    if isinstance(err, grpc.Call):
        for key, value in err.trailing_metadata() or ():
            if key == ERROR_PARAM_KEY:
                param = str(value)
            elif key == ERROR_CODE_KEY:
                error_code = str(value)
            elif key == ERROR_RETRY_AFTER_KEY and str(value).isdigit():
                retry_after_s = int(value)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and error_code == TOO_MANY_CALLS:
        return Unavailable(details, param=param, code=error_code, retry_after_s=1)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and error_code in RATE_LIMIT_CODES:
        kind = "insufficient_quota" if error_code == "insufficient_quota" else "requests"
        return RateLimited(details, kind=kind, code=error_code, retry_after_s=retry_after_s, param=param)
    cls = _BY_GRPC_CODE.get(code, Unavailable if code == grpc.StatusCode.DEADLINE_EXCEEDED else Internal)
    if cls is Unavailable:
        # Away for now on the other side (its database, a service it needs): the caller's client should
        # retry after the same pause a local outage asks for.
        return Unavailable(details, param=param, code=error_code, retry_after_s=retry_after_s)
    return cls(details, param=param, code=error_code)
