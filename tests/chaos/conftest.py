"""Fault injection on the shared all-in-one stack: its programs found through supervisord, the
stack's own PostgreSQL database closed and opened, usage read back over REST, and one line of
figures per test (served, lost, doubled, recovery time) printed and collected in
``chaos-report.json`` under the stack's data folder.

The faults are real (SIGSTOP, SIGKILL, refused connections), so these tests run after every other
test of the run, and each one ends by checking that the stack came back."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest

from coachforge_launcher.models import BASE_MODEL_ID

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the fault-injection tests last, so that what they break can only fail themselves."""
    items.sort(key=lambda item: "/tests/chaos/" in str(item.path).replace(os.sep, "/"))


@dataclass
class Chaos:
    """What the chaos tests do to the stack and read back from it."""

    stack: Any
    report: list[dict[str, Any]] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.api_key}"}

    @property
    def root_url(self) -> str:
        return self.stack.base_url.removesuffix("/v1")

    # -- the stack's programs ---------------------------------------------------------------------
    def supervisorctl(self, *args: str) -> str:
        conf = self.stack.data_dir / "supervisord.conf"
        out = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    def pid(self, program: str) -> int:
        """The running process of one supervisord program (``broker``, ``services``, ``engine``,
        ``trainer-worker``)."""
        pid = self.supervisorctl("pid", program)
        assert pid.isdigit() and int(pid) > 0, f"{program} is not running: {self.supervisorctl('status')}"
        return int(pid)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.root_url}/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 180) -> float:
        """Seconds until ``/ready`` answers 200 (every component of the stack up again)."""
        start = time.monotonic()
        while not self.ready():
            assert time.monotonic() - start < timeout, f"stack not ready again: {self.supervisorctl('status')}"
            time.sleep(0.2)
        return time.monotonic() - start

    # -- the database -----------------------------------------------------------------------------
    @contextmanager
    def database_closed(self) -> Iterator[None]:
        """The stack's PostgreSQL database refuses every new connection and its open ones are cut
        (``ALLOW_CONNECTIONS false`` and ``pg_terminate_backend``), until the block ends."""
        name = self.stack.database_url.rsplit("/", 1)[1]
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            try:
                yield
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    def sql(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows of one query on the stack's database (behind the services' back)."""
        url = self.stack.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn:
            return list(conn.execute(query, params).fetchall())

    # -- the public API ---------------------------------------------------------------------------
    def avatar(self) -> str:
        """A new avatar on the base model (its name): usage is read back per avatar."""
        name = f"chaos-{secrets.token_hex(4)}"
        r = httpx.post(f"{self.stack.base_url}/avatars", headers=self.headers, json={"name": name,
                                                                                    "model": BASE_MODEL_ID})
        assert r.status_code == 200, r.text
        return name

    def upload_training_file(self, name: str, examples: int = 12) -> httpx.Response:
        """``POST /v1/files`` of a small chat training file (the response, whatever it is)."""
        lines = [json.dumps({"messages": [
            {"role": "user", "content": f"Is {i + 3} km easy enough today?"},
            {"role": "assistant", "content": f"Yes, {i + 3} km easy keeps you fresh for tomorrow."}]})
            for i in range(examples)]
        return httpx.post(f"{self.stack.base_url}/files", headers=self.headers, timeout=60,
                          data={"purpose": "fine-tune"}, files={"file": (name, ("\n".join(lines) + "\n").encode())})

    def create_job(self, training_file: str, **hyperparameters: Any) -> httpx.Response:
        """``POST /v1/fine_tuning/jobs`` on the base model: one short epoch unless told otherwise."""
        return httpx.post(f"{self.stack.base_url}/fine_tuning/jobs", headers=self.headers, timeout=60,
                          json={"model": BASE_MODEL_ID, "training_file": training_file,
                                "hyperparameters": {"n_epochs": 1, "batch_size": 4, **hyperparameters}})

    def job(self, job_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.stack.base_url}/fine_tuning/jobs/{job_id}", headers=self.headers, timeout=60)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def cancel(self, job_id: str) -> None:
        httpx.post(f"{self.stack.base_url}/fine_tuning/jobs/{job_id}/cancel", headers=self.headers, timeout=60)

    def wait_listed(self, model: str, timeout: float = 120) -> None:
        """Until ``GET /v1/models`` lists ``model`` (inference learns of a registration from its event)."""
        deadline = time.monotonic() + timeout
        while model not in {m["id"] for m in httpx.get(f"{self.stack.base_url}/models", headers=self.headers,
                                                       timeout=30).json()["data"]}:
            assert time.monotonic() < deadline, f"{model} is not listed"
            time.sleep(0.5)

    def chat(self, avatar: str, content: str, *, max_tokens: int = 8, timeout: float = 120) -> httpx.Response:
        return httpx.post(f"{self.stack.base_url}/chat/completions", headers=self.headers, timeout=timeout,
                          json={"model": avatar, "messages": [{"role": "user", "content": content}],
                                "max_tokens": max_tokens, "temperature": 0})

    def usage(self, avatar: str) -> tuple[int, int, int]:
        """What the avatar was billed: (requests, input tokens, output tokens)."""
        r = httpx.get(f"{self.stack.base_url}/usage", headers=self.headers, params={"avatar": avatar}, timeout=30)
        assert r.status_code == 200, r.text
        rows = r.json()["data"]
        return (sum(row["messages"] for row in rows), sum(row["input_tokens"] for row in rows),
                sum(row["output_tokens"] for row in rows))

    @staticmethod
    def owed(answers: list[dict[str, Any]]) -> tuple[int, int, int]:
        """What a list of chat completion bodies should bill: (requests, input tokens, output tokens)."""
        return (len(answers), sum(a["usage"]["prompt_tokens"] for a in answers),
                sum(a["usage"]["completion_tokens"] for a in answers))

    def outbox_drained(self, timeout: float = 120) -> float:
        """Seconds until no event waits in the outbox table (every one sent to the broker)."""
        start = time.monotonic()
        while self.sql("SELECT count(*) FROM outbox_events")[0][0]:
            assert time.monotonic() - start < timeout, self.sql(
                "SELECT type, attempts, last_error FROM outbox_events ORDER BY id LIMIT 5")
            time.sleep(0.5)
        return time.monotonic() - start

    def wait_billed(self, avatar: str, expected: tuple[int, int, int], timeout: float = 180) -> float:
        """Seconds until the avatar's usage reaches ``expected`` requests (then it must equal it);
        the last reading when it never does."""
        start = time.monotonic()
        while True:
            billed = self.usage(avatar)
            if billed[0] >= expected[0] or time.monotonic() - start > timeout:
                return time.monotonic() - start
            time.sleep(0.5)

    def record(self, fault: str, **figures: Any) -> None:
        """One line of the chaos report: what was served, lost, doubled, and how fast it recovered."""
        line = {"fault": fault, **figures}
        self.report.append(line)
        print(f"\nchaos: {json.dumps(line)}")
        path = self.stack.data_dir / "chaos-report.json"
        path.write_text(json.dumps(self.report, indent=2))


@pytest.fixture(scope="session")
def chaos(stack: Any) -> Chaos:
    return Chaos(stack)


@pytest.fixture
def frozen() -> Iterator[Callable[[int], None]]:
    """``frozen(pid)``: stop a process with SIGSTOP; it is continued at the end of the test at the
    latest, whatever happened."""
    stopped: list[int] = []

    def freeze(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    yield freeze
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
