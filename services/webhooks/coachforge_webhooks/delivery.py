"""Sending deliveries: :class:`DeliverySender`, a thread of every process that runs the webhooks
service, with a small pool of sending threads.

A pass claims pending deliveries that are due (on PostgreSQL the candidate rows are locked with
``SELECT … FOR UPDATE SKIP LOCKED``, so that several processes never take the same one; each claim is
also a compare-and-set on the row's due time, which is all SQLite needs) by pushing their due time
``timeout_s + claim_s`` ahead: a sender that dies mid-send leaves the delivery due again then. Each
attempt POSTs the stored body, signed (:mod:`coachforge_webhooks.signing`) with the endpoint's
secret and, during a rotation's grace period, its previous one. A 2xx answer delivers it; anything
else (another status, a timeout, a refused connection) is retried after the next wait of
``retry_schedule_s`` until ``max_attempts`` attempts failed, and then it is failed for good.
Delivery is at least once: a receiver recognises a repeated message by ``webhook-id``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import select

from coachforge_shared.db import OutageBackoff, is_outage
from coachforge_shared.ids import unix_now, utcnow
from coachforge_shared.logging import get_logger
from coachforge_webhooks import repository, signing
from coachforge_webhooks.destinations import BlockedDestination, check_destination
from coachforge_webhooks.metrics import ATTEMPT_SECONDS, DELIVERIES
from coachforge_webhooks.models import WebhookDelivery, WebhookEndpoint
from coachforge_webhooks.repository import FAILED, SUCCEEDED
from coachforge_webhooks.sealing import SecretUnavailable
from coachforge_webhooks.service import WebhooksDeps

log = get_logger("coachforge.webhooks.delivery")

USER_AGENT = "CoachForge-Webhooks/0.1"
RETRIED = "retried"
OUTCOMES = (SUCCEEDED, RETRIED, FAILED)
"""What an attempt comes to (the ``outcome`` label of ``coachforge_webhook_deliveries_total``)."""
MAX_ERROR_CHARS = 500
"""A failed attempt keeps this much of the receiver's answer (or of the error) as ``last_error``."""


@dataclass(frozen=True)
class Attempt:
    """One claimed delivery, with what sending it needs."""

    delivery_id: str
    event_type: str
    url: str
    secrets: tuple[str, ...]
    body: str
    attempts: int
    """Attempts made before this one."""
    problem: str | None = None
    """Why it cannot be signed (a sealed secret the keys do not open): the attempt fails unsent."""


def claim_due(deps: WebhooksDeps, limit: int) -> list[Attempt]:
    """Claim up to ``limit`` due deliveries for this process (see the module's docstring)."""
    now = utcnow()
    until = now + timedelta(seconds=deps.settings.timeout_s + deps.settings.claim_s)
    with deps.db.session() as s:
        skip_locked = s.get_bind().dialect.name == "postgresql"
        ids = [i for i in repository.due(s, now, limit, skip_locked=skip_locked)
               if repository.claim(s, i, now, until)]
        if not ids:
            return []
        rows = s.execute(select(WebhookDelivery, WebhookEndpoint)
                         .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                         .where(WebhookDelivery.id.in_(ids)))
        out = []
        box = deps.settings.secret_box()
        for d, e in rows:
            sealed = [e.secret]
            if e.previous_secret and e.previous_secret_expires_at is not None and e.previous_secret_expires_at > now:
                sealed.append(e.previous_secret)
            try:
                secrets, problem = tuple(box.open(x) for x in sealed), None
            except SecretUnavailable as err:
                secrets, problem = (), str(err)
            out.append(Attempt(d.id, d.event_type, e.url, secrets, d.payload, d.attempts, problem))
        return out


def _answer_text(response: httpx.Response) -> str:
    """The start of the receiver's answer (the rest is never read)."""
    taken = b""
    for chunk in response.iter_bytes():
        taken += chunk
        if len(taken) >= MAX_ERROR_CHARS:
            break
    return taken[:MAX_ERROR_CHARS].decode("utf-8", "replace").strip()


def attempt(deps: WebhooksDeps, client: httpx.Client, a: Attempt) -> str:
    """Send one claimed delivery once and store the result; the outcome (succeeded, retried, failed)."""
    timestamp = unix_now()
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    try:
        if a.problem is not None:
            raise SecretUnavailable(a.problem)
        headers = {"content-type": "application/json", "user-agent": USER_AGENT,
                   **signing.headers(a.secrets, a.delivery_id, timestamp, a.body)}
        check_destination(a.url, deps.settings.allowed())
        with client.stream("POST", a.url, content=a.body.encode(), headers=headers,
                           timeout=deps.settings.timeout_s) as response:
            status_code = response.status_code
            if not response.is_success:
                text = _answer_text(response)
                error = f"HTTP {status_code}" + (f": {text}" if text else "")
    except (BlockedDestination, SecretUnavailable) as err:  # nothing was sent
        error = f"not sent: {err}"
    except Exception as err:  # a timeout, a refused connection, a URL httpx cannot send to: a failed attempt
        error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    elapsed = time.perf_counter() - started
    ok = error is None
    ATTEMPT_SECONDS.labels("success" if ok else "failure").observe(elapsed)
    attempts, now = a.attempts + 1, utcnow()
    values: dict[str, object] = {"attempts": attempts, "last_status_code": status_code,
                                 "last_error": (error or "")[:MAX_ERROR_CHARS] or None}
    if ok:
        outcome = SUCCEEDED
        values.update(status=SUCCEEDED, next_attempt_at=None, delivered_at=now)
    elif attempts >= deps.settings.max_attempts:
        outcome = FAILED
        values.update(status=FAILED, next_attempt_at=None)
    else:
        outcome = RETRIED
        values.update(next_attempt_at=now + timedelta(seconds=deps.settings.retry_delay_s(attempts)))
    with deps.db.session() as s:
        stored = repository.finish_attempt(s, a.delivery_id, a.attempts, values)
    if stored:
        DELIVERIES.labels(a.event_type, outcome).inc()
    log_method = log.info if ok else log.warning
    log_method("webhook attempt", delivery_id=a.delivery_id, event_type=a.event_type, outcome=outcome,
               attempts=attempts, status_code=status_code, error=error, seconds=round(elapsed, 3), stored=stored)
    return outcome


class DeliverySender:
    """Claims due deliveries and sends them, ``concurrency`` at a time, until stopped; looks every
    ``poll_interval_s``, and at once when :meth:`wake` is called (a consumed event queued some)."""

    def __init__(self, deps: WebhooksDeps, client: httpx.Client | None = None) -> None:
        self.deps = deps
        self._client = client
        self._own_client = client is None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def wake(self) -> None:
        self._wake.set()

    def _send(self, client: httpx.Client, a: Attempt) -> None:
        try:
            attempt(self.deps, client, a)
        except Exception as err:  # the result was not stored (the database is away): once the claim runs
            # out, the delivery is sent again (same webhook-id)
            if is_outage(err):
                log.warning("webhook attempt not stored: database unavailable", delivery_id=a.delivery_id)
            else:
                log.exception("webhook attempt not stored", delivery_id=a.delivery_id)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._wake.set()

    def run(self) -> None:
        settings = self.deps.settings
        client = self._client or httpx.Client(follow_redirects=False, timeout=settings.timeout_s)
        self._client = client
        pool = self._pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="webhook-send")
        backoff = OutageBackoff("webhook-sender")
        try:
            while not self._stop.is_set():
                self._wake.clear()
                with self._lock:
                    free = settings.concurrency - self._in_flight
                wanted = min(free, settings.batch_size)
                claimed: list[Attempt] = []
                if wanted > 0:
                    try:
                        claimed = claim_due(self.deps, wanted)
                    except Exception as err:
                        backoff.failed(err, "claiming webhook deliveries failed")
                    else:
                        backoff.succeeded()
                for a in claimed:
                    with self._lock:
                        self._in_flight += 1
                    pool.submit(self._send, client, a)
                if wanted > 0 and len(claimed) == wanted and not backoff.outage_failures:
                    continue  # more may be due: claim again as soon as a slot is free
                self._wake.wait(backoff.wait(settings.poll_interval_s))
        finally:
            pool.shutdown(wait=True, cancel_futures=False)
            if self._own_client:
                client.close()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="webhook-sender", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop claiming; attempts under way finish (each within ``timeout_s``)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.deps.settings.timeout_s + 10)
