"""How the console runs in a process: its settings, session codec and templates, and one router
mounted at ``/console`` (found by the runtime through the ``coachforge.services`` entry point).
It has no database, gRPC service or consumer of its own: every page is a client of the public REST
API (see :mod:`coachforge_console.client`)."""

from __future__ import annotations

from coachforge_console import pages  # noqa: F401 - registers the pages on the router
from coachforge_console.settings import ConsoleSettings
from coachforge_console.web import make_deps, router
from coachforge_shared.runtime import Service, Wiring


def wire(w: Wiring) -> Service:
    deps = make_deps(ConsoleSettings())
    return Service("console", deps, routers=[router])
