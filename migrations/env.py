"""Alembic environment: the URL comes from the platform settings (or the caller's config)."""

from __future__ import annotations

from alembic import context

import coachforge_coach.models  # noqa: F401  (tables register on Base.metadata)
import coachforge_dataset.models  # noqa: F401
import coachforge_evaluator.models  # noqa: F401
import coachforge_inference.models  # noqa: F401
import coachforge_registry.models  # noqa: F401
import coachforge_shared.models  # noqa: F401
import coachforge_trainer.models  # noqa: F401
import coachforge_webhooks.models  # noqa: F401
from coachforge_shared.db import Base, make_engine
from coachforge_shared.settings import PlatformSettings

config = context.config
url = config.get_main_option("sqlalchemy.url") or PlatformSettings().resolved_database_url
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
