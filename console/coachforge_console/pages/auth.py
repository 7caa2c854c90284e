"""Sign in with an API key (checked against the API), sign out."""

from __future__ import annotations

from starlette.responses import Response

from coachforge_console.client import Api, ApiError
from coachforge_console.security import Session
from coachforge_console.web import AnyPage, form_str, router


def safe_next(target: str) -> str:
    """Only a path of the console itself (no other site, no scheme-relative URL)."""
    if target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/"


@router.get("/sign-in")
def sign_in_form(page: AnyPage, next: str = "/console/") -> Response:
    if page.session.signed_in:
        return page.redirect(safe_next(next))
    return page.render("sign_in.html", title="Sign in", next=safe_next(next), error=None)


@router.post("/sign-in")
async def sign_in(page: AnyPage) -> Response:
    form = await page.form()
    key, target = form_str(form, "api_key"), safe_next(form_str(form, "next", "/console/"))
    if not key:
        return page.render("sign_in.html", status=400, title="Sign in", next=target, error="Enter an API key.")
    api = Api(page.request, page.deps.settings, page.deps.router, key)
    try:
        await api.get("/v1/models")
    except ApiError as err:
        status = 401 if err.status in (401, 403) else err.status
        return page.render("sign_in.html", status=status, title="Sign in", next=target,
                           error=f"The key was not accepted: {err.message}")
    finally:
        await api.close()
    page.session = Session(api_key=key)  # a new id: no session fixation, new CSRF tokens
    page.dirty = True
    return page.redirect(target)


@router.post("/sign-out")
def sign_out(page: AnyPage) -> Response:
    page.session = Session()
    page.notify("ok", "Signed out.")
    return page.redirect("/console/sign-in")
