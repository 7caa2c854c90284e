"""Adapters kept in S3-compatible storage (a local moto server) are fetched once into the local
cache and loaded by the real vLLM engine from there; a missing adapter is a clean 503, not a crash."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from coachforge.registry.v1 import registry_pb2
from coachforge_inference import service
from coachforge_inference.adapters import AdapterCache, is_remote
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps, Resolution
from coachforge_inference.settings import InferenceSettings
from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_shared.errors import Unavailable
from coachforge_shared.grpc_server import InternalChannel

if TYPE_CHECKING:
    from conftest import S3Server  # tests/conftest.py

pytestmark = pytest.mark.stack

TENANT = "remote-adapters"


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_adapter_in_object_storage_is_fetched_once_and_served(stack, stack_engine_url: str,  # type: ignore[no-untyped-def]
                                                              lora_adapters: list[Path], s3_server: S3Server,
                                                              tmp_path: Path) -> None:
    s3 = s3_server.client()
    bucket, prefix = f"adapters-{secrets.token_hex(3)}", f"{TENANT}/ft-remote"
    s3.create_bucket(Bucket=bucket)
    source = lora_adapters[4]
    for name in _digests(source):
        s3.upload_file(str(source / name), bucket, f"{prefix}/{name}")
    uri = f"s3://{bucket}/{prefix}"
    assert is_remote(uri) and not is_remote(str(source)) and not is_remote(f"file://{source}")

    cache = AdapterCache(tmp_path / "cache", {**s3_server.options, "endpoint_url": s3_server.endpoint_url})
    pool = EnginePool([stack_engine_url], timeout_s=120, health_interval_s=0, adapters=cache,
                      api_key=stack.engine_api_key)
    deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                         registry=InternalChannel(stack.grpc_target, stack.internal_token), engines=pool)
    adapter = f"remote-{secrets.token_hex(3)}"
    model = registry_pb2.Model(id=f"ft:{adapter}", base_model=BASE_MODEL_ID, adapter_name=adapter,
                               adapter_uri=uri, lora_rank=8)
    deps._cache[(TENANT, adapter)] = (time.monotonic(), Resolution(model))
    missing = registry_pb2.Model(id="ft:missing", base_model=BASE_MODEL_ID, adapter_name="missing-remote",
                                 adapter_uri=f"s3://{bucket}/{TENANT}/no-such-adapter", lora_rank=8)
    deps._cache[(TENANT, "missing")] = (time.monotonic(), Resolution(missing))
    body = {"prompt": "Rest day:", "max_tokens": 2, "temperature": 0}

    async def run() -> None:
        try:
            raw, routed = await service.complete(deps, TENANT, "/v1/completions", {**body, "model": adapter})
            assert json.loads(raw)["model"] == f"ft:{adapter}" and routed.engine == stack_engine_url
            with pytest.raises(Unavailable, match=r"no adapter_config\.json"):
                await service.complete(deps, TENANT, "/v1/completions", {**body, "model": "missing"})
        finally:
            await deps.close()

    asyncio.run(run())
    # The engine loaded the downloaded copy: the same files, byte for byte, in one cache folder.
    (fetched,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert _digests(fetched) == _digests(source)
    # Fetched once: with the objects gone the cached copy is still what the URI resolves to.
    for name in _digests(source):
        s3.delete_object(Bucket=bucket, Key=f"{prefix}/{name}")
    assert cache.local_path(uri) == str(fetched)
    with pytest.raises(Unavailable, match="cannot be fetched"):
        AdapterCache(tmp_path / "other", {**s3_server.options, "endpoint_url": s3_server.endpoint_url}
                     ).local_path(uri)
    s3.delete_bucket(Bucket=bucket)
