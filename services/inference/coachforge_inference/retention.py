"""Retention of stored chat completions: :func:`purge_expired` deletes every tenant's stored
completions older than its ``retention_days`` (the tenant's policy, else
``COACHFORGE_INFERENCE_STORED_RETENTION_DAYS``; 0 keeps them forever) with their metadata pairs
and feedback, ``stored_purge_batch`` completions per transaction so that no lock is held long.
:class:`Purger` runs it in the background of each inference replica (the first pass soon after
the start, then every ``stored_purge_interval_s``). Replicas purging at once do no harm: each
batch skips the rows another one holds, and deleting a row already gone deletes nothing."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from coachforge_inference import repository
from coachforge_inference.metrics import STORED_PURGED
from coachforge_shared.ids import utcnow
from coachforge_shared.logging import get_logger
from coachforge_shared.loops import BackgroundLoop

if TYPE_CHECKING:
    from coachforge_inference.service import InferenceDeps

log = get_logger("coachforge.inference.retention")

FIRST_PASS_S = 10.0
"""The first pass runs this long after the start (up to twice as long: replicas started together
spread out)."""


def purge_expired(deps: InferenceDeps, now: datetime | None = None, *, stop: threading.Event | None = None) -> int:
    """Delete the stored completions past their tenant's retention (as of ``now``, default now), in
    batches of ``stored_purge_batch``, each in its own transaction; how many were deleted. ``stop``
    set ends the pass between two batches."""
    if deps.db is None:
        return 0
    now = now or utcnow()
    batch = deps.settings.stored_purge_batch
    with deps.db.session() as s:
        tenants = repository.retentions(s)
    total = 0
    for tenant_id, days in tenants:
        days = deps.settings.stored_retention_days if days is None else days
        if days <= 0:  # kept forever
            continue
        created_before = int((now - timedelta(days=days)).timestamp())
        purged = 0
        while stop is None or not stop.is_set():
            with deps.db.session() as s:
                found, deleted = repository.purge_batch(s, tenant_id, created_before, batch)
            purged += deleted
            if found < batch:
                break
        if purged:
            STORED_PURGED.labels(tenant_id).inc(purged)
            log.info("stored completions past their retention deleted", tenant=tenant_id, deleted=purged,
                     retention_days=days)
        total += purged
    return total


class Purger(BackgroundLoop):
    """Runs :func:`purge_expired` in a thread of its own: soon after :meth:`start`, then every
    ``stored_purge_interval_s`` seconds, until :meth:`stop` (which lets the batch in progress end)."""

    failure_message = "stored completion purge failed"

    def __init__(self, deps: InferenceDeps, first_pass_s: float | None = None) -> None:
        interval = deps.settings.stored_purge_interval_s
        first = min(FIRST_PASS_S, interval) * random.uniform(1.0, 2.0) if first_pass_s is None else first_pass_s
        super().__init__("stored-purge", interval, first_wait_s=first)
        self.deps = deps

    def start(self) -> None:
        if self.deps.db is not None:
            super().start()

    def run_pass(self) -> None:
        purge_expired(self.deps, stop=self.stopping)
