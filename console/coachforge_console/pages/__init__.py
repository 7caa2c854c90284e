"""The console's pages, one module per navigation entry; importing this package registers them all
on :data:`coachforge_console.web.router`, then the catch-all 404 after them."""

from coachforge_console.pages import (  # noqa: F401 - importing a page module registers its routes
    arena,
    auth,
    avatars,
    coach,
    datasets,
    evals,
    fallback,
    feedback,
    jobs,
    models,
    overview,
    usage,
)
from coachforge_console.web import router

fallback.install(router)
