"""A background loop: one pass every so often in a daemon thread of the service, until stopped.

The services' periodic work (the registry's export worker and retrain driver, the coach's outcome
retrier, inference's stored-completion purger) is a subclass of :class:`BackgroundLoop` that
implements :meth:`BackgroundLoop.run_pass`::

    class Purger(BackgroundLoop):
        def __init__(self, deps):
            super().__init__("stored-purge", deps.settings.stored_purge_interval_s)
            self.deps = deps

        def run_pass(self) -> None:
            purge_expired(self.deps, stop=self.stopping)

A pass that raises never ends the loop: :class:`~coachforge_shared.db.OutageBackoff` logs a database
outage once (and waits longer between passes while it lasts) and any other error with its traceback.
:meth:`BackgroundLoop.wake` starts the next pass now (a wake during a pass starts another right after
it); :meth:`BackgroundLoop.stop` lets the pass under way finish and joins the thread.
"""

from __future__ import annotations

import threading

from coachforge_shared.db import OutageBackoff


class BackgroundLoop:
    """Runs :meth:`run_pass` in a daemon thread named ``name``: after ``first_wait_s`` seconds, then
    every ``interval_s`` seconds (longer during a database outage) or when woken, until stopped."""

    failure_message = "background pass failed"
    """What the log says when a pass raises (the loop's name is logged with it)."""

    def __init__(self, name: str, interval_s: float, *, first_wait_s: float = 0.0,
                 join_timeout_s: float = 30.0) -> None:
        self.name = name
        self.interval_s = interval_s
        self.first_wait_s = first_wait_s
        self.join_timeout_s = join_timeout_s
        self.stopping = threading.Event()
        """Set by :meth:`stop`: a long pass may check it between batches and return early."""
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def run_pass(self) -> None:
        """One pass of the loop's work."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (nothing when it already runs)."""
        if self.running:
            return
        self.stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next pass now rather than at the end of the interval."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the pass under way (if any) and wait up to ``join_timeout_s`` for the thread."""
        self.stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.join_timeout_s)

    def _loop(self) -> None:
        backoff = OutageBackoff(self.name)
        wait = self.first_wait_s
        while not self.stopping.is_set():
            if wait > 0:
                self._wake.wait(wait)
            self._wake.clear()
            if self.stopping.is_set():
                return
            try:
                self.run_pass()
            except Exception as err:  # one bad pass, or a database outage, must not stop the loop
                backoff.failed(err, self.failure_message)
            else:
                backoff.succeeded()
            wait = backoff.wait(self.interval_s)
