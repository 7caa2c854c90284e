"""The console alone in a FastAPI app, for tests and for embedding: ``build(settings)``."""

from __future__ import annotations

from fastapi import FastAPI

from coachforge_console import pages  # noqa: F401 - registers the pages on the router
from coachforge_console.settings import ConsoleSettings
from coachforge_console.web import make_deps, router


def build(settings: ConsoleSettings | None = None, app: FastAPI | None = None) -> FastAPI:
    """``app`` (a new one by default) with the console mounted at ``/console``."""
    app = app or FastAPI()
    app.state.console = make_deps(settings or ConsoleSettings())
    app.include_router(router)
    return app
