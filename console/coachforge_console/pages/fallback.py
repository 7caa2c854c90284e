"""Any other path under /console: a 404 page (with the console's headers). Registered last, by
:func:`install`, so that it never hides a page."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from coachforge_console.web import AnyPage


def not_found(page: AnyPage, rest: str) -> Response:
    return page.render("error.html", status=404, title="Not found",
                       message=f"There is no console page /console/{rest}.")


def install(router: APIRouter) -> None:
    router.add_api_route("/{rest:path}", not_found, methods=["GET", "POST"])
