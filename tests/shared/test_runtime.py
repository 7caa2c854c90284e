"""The runtime composes services found through their entry points into one process: REST routers,
one gRPC server on the same event loop, the services' consumers, one readiness check."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coachforge.registry.v1 import registry_pb2, registry_pb2_grpc
from coachforge_shared import migrate, runtime
from coachforge_shared.auth import add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import NotFound
from coachforge_shared.settings import PlatformSettings

SERVICES = {"coach", "dataset", "inference", "registry", "trainer"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_service_is_found_through_its_entry_point() -> None:
    assert set(runtime.available()) >= SERVICES
    for name in SERVICES:
        assert runtime.load(name).__module__ == f"coachforge_{name}.wiring"
    with pytest.raises(NotFound) as err:
        runtime.load("billing")
    assert err.value.param == "service" and "registry" in err.value.message


def test_one_service_composed_alone(tmp_path: Path, broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'runtime.db'}"
    migrate.upgrade(url)
    db = Database(url)
    create_tenant(db, "acme")
    add_api_key(db, "acme", "cf-acme-key")
    db.dispose()
    monkeypatch.setenv("COACHFORGE_REGISTRY_BASE_MODELS", '["base-1"]')
    grpc_address = f"127.0.0.1:{free_port()}"
    platform = PlatformSettings(data_dir=tmp_path, database_url=url, kafka_bootstrap=broker,
                                internal_token=secrets.token_hex(8), models_dir=tmp_path / "models")
    app, process = runtime.compose(["registry"], platform, grpc_address, title="registry alone")

    # What the registry declared in its own wiring: its consumer of job.succeeded.
    assert [(c.group, c.topics) for c in process.consumers] == [("registry", ["job.succeeded"]),
                                                                 ("registry-evals", ["eval.run.succeeded"])]
    with TestClient(app) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": True, "broker": True, "grpc": True, "consumers": True}
        assert process.relay is not None and process.relay.running  # sends the outbox's events
        key = {"Authorization": "Bearer cf-acme-key"}
        assert [m["id"] for m in client.get("/v1/models", headers=key).json()["data"]] == ["base-1"]
        assert client.get("/v1/files", headers=key).status_code == 404  # only the registry's routes
        with grpc.insecure_channel(grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING
            assert health.Check(health_pb2.HealthCheckRequest(
                service="coachforge.registry.v1.RegistryService")).status == serving
            with pytest.raises(grpc.RpcError) as err:
                health.Check(health_pb2.HealthCheckRequest(service="coachforge.dataset.v1.DatasetService"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            metadata = (("authorization", key["Authorization"]),)
            models = stub.ListModels(registry_pb2.ListModelsRequest(), metadata=metadata)
            assert [m.id for m in models.models] == ["base-1"]
    assert not any(c.running for c in process.consumers)  # stopped with the app
    assert not process.relay.running
