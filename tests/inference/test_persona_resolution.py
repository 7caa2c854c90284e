"""An avatar's persona from the real registry (its gRPC server on a SQLite database) to the engine's
request body: inference resolves the avatar with GetModel and GetAvatar over gRPC, applies the
active persona to chat completions (unary and streamed) and the candidate's persona version on
the candidate arm, says which version answered, and leaves text completions alone. The engine is
:class:`FakeEngine` (tests/inference/conftest.py), which keeps the bodies it was sent; the stack
test (tests/registry/test_personas.py) does the same against vLLM."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coachforge_inference import service
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import PERSONA_HEADER, InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_inference.validation import CHAT, COMPLETIONS
from coachforge_registry import service as registry
from coachforge_registry.grpc import registration
from coachforge_registry.schemas import PersonaSettings
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import Authenticator, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, wait_for_health

TENANT = "persona-routing"
BASE = "fake-base"
"""The base model a FakeEngine serves."""
FEW_SHOT = [{"role": "user", "content": "Run today?"}, {"role": "assistant", "content": "Easy 30 min."}]


@pytest.fixture
def registry_deps(db: Database, tmp_path: Path) -> RegistryDeps:
    create_tenant(db, TENANT)
    deps = RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE]), artifacts_dir=tmp_path / "store",
                        platform_models_dir=tmp_path / "models")
    registry.create_avatar(deps, TENANT, "me", "anna", BASE)
    return deps


@pytest.fixture
def registry_target(registry_deps: RegistryDeps) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = Authenticator(registry_deps.db, internal_token="internal")
    server = GrpcServerThread([registration(registry_deps)], auth, f"127.0.0.1:{port}", max_workers=2).start()
    target = f"127.0.0.1:{port}"
    wait_for_health(target)
    yield target
    server.stop()


def _persona(deps: RegistryDeps, **settings: Any) -> int:
    _, row = registry.set_persona(deps, TENANT, "me", "anna", PersonaSettings.model_validate(settings))
    return row.version


def test_the_registrys_persona_reaches_the_engine(fake_engine: Any, registry_deps: RegistryDeps,
                                                  registry_target: str) -> None:
    _persona(registry_deps, system_prompt="You coach {metadata.athlete}.", few_shot=FEW_SHOT,
             sampling={"max_tokens": 3, "temperature": 0.2})
    _persona(registry_deps, system_prompt="Be terse.", system_mode="replace", sampling={"max_tokens": 5})
    ask = [{"role": "system", "content": "own"}, {"role": "user", "content": "Hi"}]

    async def run() -> None:
        async with fake_engine() as engine:
            deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                                 registry=InternalChannel(registry_target, "internal"),
                                 engines=EnginePool([engine.url], timeout_s=10, health_interval_s=0))
            try:
                _, routed = await service.complete(deps, TENANT, CHAT, {"model": "anna", "messages": ask})
                assert (routed.persona_version, routed.arm, routed.model.id) == (2, "", BASE)
                assert routed.headers()[PERSONA_HEADER] == "2"
                sent = engine.bodies[-1]
                assert sent["messages"] == [{"role": "system", "content": "Be terse."}, ask[1]]
                assert (sent["max_tokens"], sent["model"]) == (5, BASE)

                # The candidate: version 1 of the persona on the active model, for every request.
                registry.set_candidate(registry_deps, TENANT, "me", "anna", None, 100, candidate_persona_version=1)
                deps.invalidate(TENANT)  # what the model.avatar_updated event does
                body = {"model": "anna", "messages": ask[1:], "metadata": {"athlete": "Ida"}, "temperature": 1.0,
                        "stream": True}
                events, routed = await service.stream(deps, TENANT, CHAT, body)
                lines = [line async for line in events if line.startswith(b"data: {")]
                assert lines and all(json.loads(line[6:])["model"] == BASE for line in lines)
                assert (routed.persona_version, routed.arm) == (1, "candidate")
                assert routed.headers()[PERSONA_HEADER] == "1"
                sent = engine.bodies[-1]
                assert sent["messages"] == [{"role": "system", "content": "You coach Ida."}, *FEW_SHOT, ask[1]]
                assert (sent["max_tokens"], sent["temperature"]) == (3, 1.0)  # the request's temperature wins
                assert "metadata" not in sent

                # Text completions get no persona.
                _, routed = await service.complete(deps, TENANT, COMPLETIONS,
                                                   {"model": "anna", "prompt": "Hi", "max_tokens": 2})
                assert routed.persona_version == 0 and PERSONA_HEADER not in routed.headers()
                assert engine.bodies[-1] == {"model": BASE, "prompt": "Hi", "max_tokens": 2}
            finally:
                await deps.close()
                deps.registry.close()

    asyncio.run(run())
