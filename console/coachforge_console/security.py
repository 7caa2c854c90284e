"""Sessions, CSRF tokens and the security headers of every console response.

The session is one cookie holding the signed-in API key, encrypted and authenticated with Fernet
(AES-128-CBC + HMAC-SHA256) under a key derived from ``COACHFORGE_CONSOLE_SECRET_KEY``; the
token's own timestamp gives its expiry. Every state-changing request carries a CSRF token, an HMAC
of the session's random id, in the form field ``csrf_token`` or the header ``X-CSRF-Token``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "coachforge_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def add_security_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers[name] = value
    return response


@dataclass
class Session:
    """What the cookie holds: a random id (the CSRF tokens' anchor) and, once signed in, the API key."""

    sid: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    api_key: str | None = field(default=None, repr=False)
    voter: str | None = None
    since: float = field(default_factory=time.time)
    """When the session began (unix seconds): it ends max_age_s later, however often the cookie is rewritten."""
    flash: list[tuple[str, str]] = field(default_factory=list)
    """Messages (kind, text) for the next page this session sees."""
    fresh: bool = True
    """Not read from a cookie: the response must set it."""

    @property
    def signed_in(self) -> bool:
        return bool(self.api_key)

    @property
    def identity(self) -> str:
        """A stable name for the signed-in key that reveals nothing of it (the default voter name)."""
        if not self.api_key:
            return "anonymous"
        return "key-" + hashlib.sha256(self.api_key.encode()).hexdigest()[:10]


class SessionCodec:
    """Seals sessions into cookie values and opens them again (``None`` when forged or expired)."""

    def __init__(self, secret: str, max_age_s: int) -> None:
        digest = hashlib.sha256(b"coachforge-console-session:" + secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._csrf_key = hashlib.sha256(b"coachforge-console-csrf:" + secret.encode()).digest()
        self.max_age_s = max_age_s

    def seal(self, session: Session) -> str:
        payload = {"sid": session.sid, "key": session.api_key, "voter": session.voter, "since": session.since,
                   "flash": session.flash}
        return self._fernet.encrypt(json.dumps(payload).encode()).decode()

    def open(self, value: str | None) -> Session | None:
        if not value:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(value.encode(), ttl=self.max_age_s))
        except (InvalidToken, ValueError):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("sid"), str):
            return None
        since = payload.get("since")
        if not isinstance(since, int | float) or not -60 <= time.time() - since <= self.max_age_s:
            return None
        flash = [(str(m[0]), str(m[1])) for m in payload.get("flash") or [] if isinstance(m, list) and len(m) == 2]
        return Session(sid=payload["sid"], api_key=payload.get("key") or None, voter=payload.get("voter") or None,
                       since=float(since), flash=flash, fresh=False)

    def remaining_s(self, session: Session) -> int:
        """Seconds the session has left (the cookie's Max-Age)."""
        return max(1, int(self.max_age_s - (time.time() - session.since)))

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), str(token))


def is_https(request: Request) -> bool:
    if request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "")
    return forwarded.split(",")[0].strip().lower() == "https"
