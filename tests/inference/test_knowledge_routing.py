"""An avatar persona's knowledge from the real registry and the real dataset service (both gRPC
servers on one SQLite database) to the engine's request body: the registry checks the knowledge
base is the tenant's; inference searches it for the conversation's last user turns and puts the
snippets, in rank order, into the system message after the persona's prompt, and says which chunks
it used (``x-coachforge-knowledge``). A knowledge base that is gone or a dataset service that does
not answer leaves the request answered without knowledge, marked ``unavailable``, counted in
``coachforge_knowledge_lookups_total``. The engine is :class:`FakeEngine` (tests/inference/conftest.py),
which keeps the bodies it was sent; tests/inference/test_knowledge_stack.py does the same against vLLM."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from coachforge_dataset.knowledge import grpc as knowledge_grpc
from coachforge_dataset.knowledge import service as knowledge_service
from coachforge_dataset.knowledge.schemas import AddKnowledgeDocument, CreateKnowledgeBase, SearchKnowledgeBase
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_inference import service
from coachforge_inference.knowledge import HEADER, Snippet, knowledge_block
from coachforge_inference.pool import EnginePool
from coachforge_inference.service import InferenceDeps
from coachforge_inference.settings import InferenceSettings
from coachforge_inference.validation import CHAT, COMPLETIONS
from coachforge_registry import service as registry
from coachforge_registry.grpc import registration
from coachforge_registry.knowledge import KnowledgeBaseCheck
from coachforge_registry.schemas import PersonaSettings
from coachforge_registry.service import RegistryDeps
from coachforge_registry.settings import RegistrySettings
from coachforge_shared.auth import Authenticator, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, wait_for_health

TENANT, OTHER = "knowledge-routing", "knowledge-other"
BASE = "fake-base"
PROMPT = "You are Coach Anna."
DOCS = {
    "taper.md": "# Taper\n\nA taper cuts training volume by 40 to 60 percent before a race while keeping some "
                "intensity.\n",
    "sleep.md": "# Sleep\n\nSleep is when adaptation happens: eight hours or more before a race week.\n",
    "fuel.md": "# Fuel\n\nTake 60 to 90 grams of carbohydrate per hour on long rides.\n",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dataset_deps(db: Database, tmp_path: Path) -> DatasetDeps:
    for tenant in (TENANT, OTHER):
        create_tenant(db, tenant)
    return DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target=""), files_dir=tmp_path / "files",
                       models_dir=tmp_path / "models")


@pytest.fixture
def target(db: Database, dataset_deps: DatasetDeps, tmp_path: Path) -> Iterator[str]:
    """The registry's and the dataset service's knowledge gRPC servicers on one server."""
    registry_deps = RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE]), artifacts_dir=tmp_path / "s",
                                 platform_models_dir=tmp_path / "models")
    port = _free_port()
    server = GrpcServerThread([registration(registry_deps), knowledge_grpc.registration(dataset_deps)],
                              Authenticator(db, internal_token="internal"), f"127.0.0.1:{port}", max_workers=4).start()
    wait_for_health(f"127.0.0.1:{port}")
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def registry_deps(db: Database, target: str, tmp_path: Path) -> Iterator[RegistryDeps]:
    """The registry (as it runs: asking the dataset service whether a persona's knowledge base is the tenant's)."""
    channel = InternalChannel(target, "internal")
    deps = RegistryDeps(db=db, settings=RegistrySettings(base_models=[BASE]), artifacts_dir=tmp_path / "store",
                        platform_models_dir=tmp_path / "models", knowledge_bases=KnowledgeBaseCheck(channel))
    registry.create_avatar(deps, TENANT, "me", "anna", BASE)
    yield deps
    channel.close()


def _knowledge_base(deps: DatasetDeps, tenant: str = TENANT) -> str:
    kb = knowledge_service.create_knowledge_base(deps, tenant, CreateKnowledgeBase(name="coach notes"))
    for title, text in DOCS.items():
        knowledge_service.add_document(deps, tenant, kb.id, AddKnowledgeDocument(text=text, title=title))
    return kb.id


def _lookups(outcome: str) -> float:
    return REGISTRY.get_sample_value("coachforge_knowledge_lookups_total",
                                     {"tenant": TENANT, "outcome": outcome}) or 0.0


def test_the_snippets_reach_the_engine_after_the_persona_prompt(fake_engine: Any, dataset_deps: DatasetDeps,
                                                                registry_deps: RegistryDeps, target: str) -> None:
    kb = _knowledge_base(dataset_deps)
    registry.set_persona(registry_deps, TENANT, "me", "anna", PersonaSettings.model_validate(
        {"system_prompt": PROMPT, "knowledge": {"knowledge_base": kb, "top_k": 2, "max_tokens": 400,
                                                "query_turns": 2}}))
    ask = [{"role": "user", "content": "How much carbohydrate on long rides?"},
           {"role": "assistant", "content": "Some."},
           {"role": "user", "content": "And how long is a taper before a race?"}]
    query = "How much carbohydrate on long rides?\nAnd how long is a taper before a race?"
    expected = knowledge_service.search(dataset_deps, TENANT, kb, SearchKnowledgeBase(query=query, top_k=2,
                                                                                      max_tokens=400)).hits
    assert len(expected) == 2
    block = knowledge_block([Snippet(h.chunk_id, h.source, h.text) for h in expected])

    async def run() -> None:
        async with fake_engine() as engine:
            deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600),
                                 registry=InternalChannel(target, "internal"),
                                 dataset=InternalChannel(target, "internal"),
                                 engines=EnginePool([engine.url], timeout_s=10, health_interval_s=0))
            try:
                used = _lookups("used")
                _, routed = await service.complete(deps, TENANT, CHAT, {"model": "anna", "messages": ask})
                assert routed.headers()[HEADER] == ",".join(h.chunk_id for h in expected)
                assert engine.bodies[-1]["messages"] == [{"role": "system", "content": PROMPT + "\n\n" + block}, *ask]
                assert _lookups("used") == used + 1

                # streamed: the same, and the request's own system message gets the block instead
                own = {"role": "system", "content": "Answer in German."}
                events, routed = await service.stream(deps, TENANT, CHAT, {"model": "anna", "messages": [own, *ask],
                                                                           "stream": True})
                assert [line async for line in events]
                assert routed.headers()[HEADER] == ",".join(h.chunk_id for h in expected)
                assert engine.bodies[-1]["messages"] == [{"role": "system", "content": own["content"] + "\n\n" + block},
                                                         *ask]

                # nothing matches: no knowledge, no header
                empty = _lookups("empty")
                _, routed = await service.complete(deps, TENANT, CHAT, {"model": "anna", "messages": [
                    {"role": "user", "content": "zebra quokka"}]})
                assert HEADER not in routed.headers() and _lookups("empty") == empty + 1
                assert engine.bodies[-1]["messages"][0] == {"role": "system", "content": PROMPT}

                # text completions get neither persona nor knowledge
                _, routed = await service.complete(deps, TENANT, COMPLETIONS, {"model": "anna", "prompt": "taper"})
                assert HEADER not in routed.headers() and engine.bodies[-1]["prompt"] == "taper"

                # the knowledge base is deleted: answered without knowledge, and said so
                knowledge_service.delete_knowledge_base(dataset_deps, TENANT, kb)
                missing = _lookups("not_found")
                _, routed = await service.complete(deps, TENANT, CHAT, {"model": "anna", "messages": ask})
                assert routed.headers()[HEADER] == "unavailable" and _lookups("not_found") == missing + 1
                assert engine.bodies[-1]["messages"] == [{"role": "system", "content": PROMPT}, *ask]
            finally:
                await deps.close()
                deps.registry.close()
                assert deps.dataset is not None
                deps.dataset.close()

    asyncio.run(run())


def test_an_unreachable_dataset_service_never_fails_the_chat(fake_engine: Any, dataset_deps: DatasetDeps,
                                                             registry_deps: RegistryDeps, target: str) -> None:
    kb = _knowledge_base(dataset_deps)
    registry.set_persona(registry_deps, TENANT, "me", "anna", PersonaSettings.model_validate(
        {"system_prompt": PROMPT, "knowledge": {"knowledge_base": kb}}))
    ask = [{"role": "user", "content": "How long is a taper?"}]

    async def run() -> None:
        async with fake_engine() as engine:
            for dataset in (InternalChannel(f"127.0.0.1:{_free_port()}", "internal"), None):
                deps = InferenceDeps(settings=InferenceSettings(resolve_cache_s=3600, knowledge_timeout_s=0.5),
                                     registry=InternalChannel(target, "internal"), dataset=dataset,
                                     engines=EnginePool([engine.url], timeout_s=10, health_interval_s=0))
                try:
                    unavailable = _lookups("unavailable")
                    raw, routed = await service.complete(deps, TENANT, CHAT, {"model": "anna", "messages": ask})
                    assert b'"choices"' in raw
                    assert routed.headers()[HEADER] == "unavailable"
                    assert _lookups("unavailable") == unavailable + 1
                    assert engine.bodies[-1]["messages"] == [{"role": "system", "content": PROMPT}, *ask]
                finally:
                    await deps.close()
                    deps.registry.close()
                    if dataset is not None:
                        dataset.close()

    asyncio.run(run())


def test_the_registry_refuses_a_knowledge_base_the_tenant_does_not_have(dataset_deps: DatasetDeps,
                                                                        registry_deps: RegistryDeps) -> None:
    theirs = _knowledge_base(dataset_deps, OTHER)
    with pytest.raises(Exception) as err:
        registry.set_persona(registry_deps, TENANT, "me", "anna", PersonaSettings.model_validate(
            {"knowledge": {"knowledge_base": theirs}}))
    assert (type(err.value).__name__, err.value.param, err.value.code) == (  # type: ignore[attr-defined]
        "InvalidArgument", "knowledge.knowledge_base", "knowledge_base_not_found")
    with pytest.raises(Exception) as err:
        registry.get_persona(registry_deps, TENANT, "anna")
    assert type(err.value).__name__ == "NotFound"  # nothing was written
    mine = _knowledge_base(dataset_deps)
    _, row = registry.set_persona(registry_deps, TENANT, "me", "anna", PersonaSettings.model_validate(
        {"knowledge": {"knowledge_base": mine, "top_k": 3}}))
    assert registry.applied_persona_json(row) == (
        '{"system_prompt":null,"system_mode":"prepend","sampling":{},"few_shot":[],"response_format":null,'
        f'"knowledge":{{"knowledge_base":"{mine}","top_k":3,"max_tokens":400,"query_turns":1}}}}')
