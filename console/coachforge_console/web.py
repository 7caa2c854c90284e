"""The console's request plumbing: one route class that gives every page its session and API
client, refuses state-changing requests without a valid CSRF token, renders errors as pages (an
API error as its OpenAI message, never a traceback) and puts the security headers on every
response; the template environment (autoescaping on) and the static files."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import mimetypes
import secrets
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from coachforge_console import security
from coachforge_console.client import Api, ApiError, Router
from coachforge_console.security import Session, SessionCodec
from coachforge_console.settings import ConsoleSettings
from coachforge_shared.logging import get_logger

log = get_logger("coachforge.console")

PACKAGE = Path(__file__).parent
STATIC = PACKAGE / "static"
PREFIX = "/console"

#: The navigation, in this order, with the path of each page.
NAV = (("Overview", "/console/"), ("Datasets", "/console/datasets"), ("Jobs", "/console/jobs"),
       ("Models", "/console/models"), ("Avatars", "/console/avatars"), ("Evaluations", "/console/evals"),
       ("Arena", "/console/arena"), ("Feedback", "/console/feedback"), ("Usage", "/console/usage"),
       ("Coach", "/console/coach"))

FLASH_CHARS = 1000


class SignInRequired(Exception):
    """The page needs a signed-in user."""


class CsrfRefused(Exception):
    """A state-changing request without a valid CSRF token."""


# -- formatting (template filters) -----------------------------------------------------------------


def _absent(value: Any) -> bool:
    return value is None or isinstance(value, jinja2.Undefined) or (isinstance(value, str) and not value)


def fmt_time(value: Any) -> str:
    """Unix seconds as ``YYYY-MM-DD HH:MM:SS UTC`` ("-" when absent)."""
    if _absent(value) or value == 0:
        return "-"
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError):
        return str(value)


def fmt_num(value: Any, digits: int = 4) -> str:
    if _absent(value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:,.{digits}g}" if abs(number) < 1e15 else f"{number:.3e}"


def fmt_pct(value: Any, digits: int = 1) -> str:
    if _absent(value):
        return "-"
    try:
        return f"{100 * float(value):.{digits}f}%"
    except (TypeError, ValueError):
        return str(value)


def fmt_usd(value: Any) -> str:
    if _absent(value):
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"${number:,.4f}" if abs(number) < 1 else f"${number:,.2f}"


def fmt_duration(seconds: Any) -> str:
    if _absent(seconds):
        return "-"
    try:
        total = max(0, int(float(seconds)))
    except (TypeError, ValueError):
        return str(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def fmt_json(value: Any) -> str:
    """Pretty JSON, as text (shown in a ``<pre>``, escaped like any other text)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def data_block(value: Any) -> Markup:
    """JSON for a ``<script type="application/json">`` data block: ``<``, ``>``, ``&`` and quotes
    escaped as \\u sequences, so nothing in it can close the element."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("'", "\\u0027")
    return Markup(text)  # escaped above; a JSON data block is never executed


def _url(path: str, **params: Any) -> str:
    flat = [(k, v) for k, v in params.items() if v not in (None, "")]
    return path + ("?" + urlencode(flat, doseq=True) if flat else "")


def _static_versions() -> dict[str, str]:
    return {p.relative_to(STATIC).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in STATIC.rglob("*") if p.is_file()}


def build_templates(settings: ConsoleSettings) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(PACKAGE / "templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    versions = _static_versions()
    env.globals.update(
        nav=NAV, url=_url, quote=lambda s: quote(str(s), safe=""), poll_ms=settings.poll_interval_ms,
        static=lambda name: f"{PREFIX}/static/{name}?v={versions.get(name, '0')}")
    env.filters.update(ts=fmt_time, num=fmt_num, pct=fmt_pct, usd=fmt_usd, duration=fmt_duration,
                       pretty=fmt_json, data_block=data_block)
    return env


@dataclass
class ConsoleDeps:
    settings: ConsoleSettings
    codec: SessionCodec
    router: Router
    templates: jinja2.Environment


def make_deps(settings: ConsoleSettings) -> ConsoleDeps:
    secret = settings.secret_key
    if not secret:
        secret = secrets.token_urlsafe(32)
        log.warning("COACHFORGE_CONSOLE_SECRET_KEY is not set: a key was generated for this process; console "
                    "sessions end when it restarts and work on this replica only")
    return ConsoleDeps(settings=settings, codec=SessionCodec(secret, settings.session_max_age_s),
                       router=Router(settings), templates=build_templates(settings))


# -- one request -----------------------------------------------------------------------------------


@dataclass
class Page:
    """A console request: its session, its API client, and how it answers."""

    request: Request
    deps: ConsoleDeps
    session: Session
    dirty: bool = False

    @cached_property
    def api(self) -> Api:
        return Api(self.request, self.deps.settings, self.deps.router, self.session.api_key)

    @property
    def csrf(self) -> str:
        return self.deps.codec.csrf_token(self.session)

    @property
    def htmx(self) -> bool:
        return self.request.headers.get("hx-request") == "true"

    def require_sign_in(self) -> None:
        if not self.session.signed_in:
            raise SignInRequired()

    def notify(self, kind: str, message: str) -> None:
        """A message for the next page this session sees (after a redirect)."""
        self.session.flash.append((kind, message[:FLASH_CHARS]))
        self.dirty = True

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        shown, self.session.flash = self.session.flash, []
        if shown:
            self.dirty = True
        html = self.deps.templates.get_template(template).render(
            page=self, request=self.request, csrf=self.csrf, signed_in=self.session.signed_in,
            identity=self.session.identity, path=self.request.url.path, flashes=shown, **context)
        return HTMLResponse(html, status_code=status)

    def redirect(self, url: str) -> Response:
        if self.htmx:
            return Response(status_code=204, headers={"HX-Redirect": url})
        return RedirectResponse(url, status_code=303)

    async def form(self) -> FormData:
        return await self.request.form()

    async def close(self) -> None:
        if "api" in self.__dict__:
            await self.api.close()


def _finish(page: Page, response: Response) -> Response:
    settings = page.deps.settings
    if page.session.fresh or page.dirty:
        response.set_cookie(security.COOKIE, page.deps.codec.seal(page.session),
                            max_age=page.deps.codec.remaining_s(page.session), path=PREFIX, httponly=True,
                            secure=security.is_https(page.request) if settings.cookie_secure is None
                            else settings.cookie_secure, samesite="strict")
    response.headers.setdefault("Cache-Control", "no-store")
    return security.add_security_headers(response)


async def _check_csrf(page: Page) -> None:
    token = page.request.headers.get(security.CSRF_HEADER)
    if not token:
        content_type = page.request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await page.request.form()
            value = form.get(security.CSRF_FIELD)
            token = value if isinstance(value, str) else None
    if page.session.fresh or not page.deps.codec.csrf_ok(page.session, token):
        raise CsrfRefused()


def _error_page(page: Page, status: int, title: str, message: str) -> Response:
    template = "_error.html" if page.htmx else "error.html"
    response = page.render(template, status=status, title=title, message=message)
    if page.htmx:  # htmx swaps it where the content would have gone
        response.headers["HX-Retarget"] = "#messages"
        response.headers["HX-Reswap"] = "innerHTML"
    return response


class ConsoleRoute(APIRoute):
    """Every console route: session in, cookie and security headers out, errors as pages."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            deps: ConsoleDeps = request.app.state.console
            if self.path_format.startswith(f"{PREFIX}/static/"):
                return security.add_security_headers(await original(request))
            session = deps.codec.open(request.cookies.get(security.COOKIE)) or Session()
            page = Page(request, deps, session)
            request.state.console_page = page
            try:
                if request.method not in ("GET", "HEAD", "OPTIONS"):
                    await _check_csrf(page)
                response = await original(request)
            except SignInRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                if page.htmx:  # a fragment's request: come back to the page that asked for it
                    current = urlsplit(request.headers.get("hx-current-url", ""))
                    target = current.path + (f"?{current.query}" if current.query else "")
                response = page.redirect(_url(f"{PREFIX}/sign-in", next=target))
            except CsrfRefused:
                response = _error_page(page, 403, "Refused", "The form was refused: its security token is missing "
                                       "or stale. Reload the page and try again.")
            except ApiError as err:
                if err.status == 401 and page.session.signed_in:
                    page.session = Session()
                    page.notify("error", f"Signed out: {err.message}")
                    response = page.redirect(f"{PREFIX}/sign-in")
                else:
                    response = _error_page(page, err.status if 400 <= err.status < 600 else 502,
                                           "The API refused this", err.message)
            except RequestValidationError as err:
                problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
                                     for e in err.errors()[:5])
                response = _error_page(page, 400, "Invalid input", problems or "The request was not valid.")
            except StarletteHTTPException as err:
                response = _error_page(page, err.status_code, "Error", str(err.detail))
            except Exception as err:
                # The traceback without the frames' locals: they hold the session's API key.
                log.error("console page failed", path=request.url.path, error=repr(err),
                          traceback=traceback.format_exc(limit=20))
                response = _error_page(page, 500, "Something went wrong",
                                       "The console could not show this page. The error was logged.")
            finally:
                await page.close()
            return _finish(page, response)

        return handler


router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


def get_page(request: Request) -> Page:
    page: Page = request.state.console_page
    return page


def signed_in_page(request: Request) -> Page:
    page = get_page(request)
    page.require_sign_in()
    return page


AnyPage = Annotated[Page, Depends(get_page)]
"""A console page that anyone may see (sign-in)."""
UserPage = Annotated[Page, Depends(signed_in_page)]
"""A console page for signed-in users (others are sent to sign in)."""


def form_str(form: FormData | Mapping[str, Any], name: str, default: str = "") -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else default


def form_int(form: FormData | Mapping[str, Any], name: str) -> int | None:
    text = form_str(form, name)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"{name}: not a whole number: {text!r}.") from None


def form_float(form: FormData | Mapping[str, Any], name: str) -> float | None:
    text = form_str(form, name)
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ApiError(400, f"{name}: not a number: {text!r}.") from None


async def act(page: Page, action: Awaitable[Any], done: str, back: str) -> Response:
    """Run a state-changing API call; back to ``back`` with ``done`` or the API's error message."""
    try:
        await action
    except ApiError as err:
        if err.status == 401:
            raise
        page.notify("error", err.message)
    else:
        page.notify("ok", done)
    return page.redirect(back)


# -- static files ----------------------------------------------------------------------------------

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".txt": "text/plain",
          ".md": "text/plain; charset=utf-8", ".svg": "image/svg+xml"}


@router.get("/static/{name:path}")
def static(name: str) -> Response:
    path = (STATIC / name).resolve()
    if not path.is_file() or STATIC.resolve() not in path.parents:
        return Response("Not found", status_code=404, media_type="text/plain")
    media = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
    if path.name.startswith("LICENSE"):
        media = "text/plain; charset=utf-8"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=86400"})
