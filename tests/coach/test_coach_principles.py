"""Training principles in the coach's context, from the real dataset service (its KnowledgeService
on a gRPC server over the same SQLite database) holding the shipped corpus
(docs/knowledge/training-principles.md): searched for the athlete's readiness and question, they
lead the context as a ``Principles:`` section within the token budget (the first thing to give
way), from the coach's setting or the request's own knowledge base; without one the prompt is
exactly what it always was; a knowledge base that is not the tenant's or a dataset service that
does not answer never fails the recommendation. Over gRPC too."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import TODAY, ScriptedModels, athlete_batch  # type: ignore[import-not-found]
from prometheus_client import REGISTRY

from coachforge.coach.v1 import coach_pb2, coach_pb2_grpc
from coachforge_coach import grpc as coach_grpc
from coachforge_coach import service
from coachforge_coach.clients import GrpcKnowledgeClient, token_counter
from coachforge_coach.schemas import RecommendIn
from coachforge_coach.service import CoachDeps
from coachforge_coach.settings import CoachSettings
from coachforge_dataset.knowledge import grpc as knowledge_grpc
from coachforge_dataset.knowledge import service as knowledge_service
from coachforge_dataset.knowledge.schemas import AddKnowledgeDocument, CreateKnowledgeBase, SearchKnowledgeBase
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import INTERNAL_HEADER, TENANT_HEADER, Authenticator
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel, wait_for_health
from polarize.principles import principles_query, principles_section
from polarize.prompt import SYSTEM_PROMPT
from polarize.rules import AthleteState

CORPUS = Path(__file__).resolve().parents[2] / "docs" / "knowledge" / "training-principles.md"
QUESTION = "Should I still do the intervals?"
TOKEN = "internal-coach-principles"


def rec_in(**kw: object) -> RecommendIn:
    return RecommendIn.model_validate({"today": TODAY.isoformat(), "question": QUESTION, **kw})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dataset(deps: CoachDeps, tmp_path: Path) -> DatasetDeps:
    return DatasetDeps(db=deps.db, settings=DatasetSettings(trainer_grpc_target=""), files_dir=tmp_path / "files",
                       models_dir=tmp_path / "models")


@pytest.fixture
def target(deps: CoachDeps, dataset: DatasetDeps) -> Iterator[str]:
    """The coach's and the dataset service's knowledge servicers on one gRPC server; the coach
    searching knowledge bases through it."""
    port = _free_port()
    server = GrpcServerThread([coach_grpc.registration(deps), knowledge_grpc.registration(dataset)],
                              Authenticator(deps.db, internal_token=TOKEN), f"127.0.0.1:{port}", max_workers=4).start()
    wait_for_health(f"127.0.0.1:{port}")
    channel = InternalChannel(f"127.0.0.1:{port}", TOKEN)
    deps.knowledge = GrpcKnowledgeClient(channel)
    yield f"127.0.0.1:{port}"
    channel.close()
    server.stop()


def _corpus(dataset: DatasetDeps, tenant: str = "acme") -> str:
    kb = knowledge_service.create_knowledge_base(dataset, tenant, CreateKnowledgeBase(name="principles",
                                                                                       chunk_tokens=120))
    knowledge_service.add_document(dataset, tenant, kb.id, AddKnowledgeDocument(text=CORPUS.read_text(),
                                                                                title=CORPUS.name))
    return kb.id


def _principles(outcome: str) -> float:
    return REGISTRY.get_sample_value("coachforge_coach_principles_total",
                                     {"tenant": "acme", "outcome": outcome}) or 0.0


def test_principles_lead_the_context_of_a_configured_coach(deps: CoachDeps, models: ScriptedModels,
                                                           dataset: DatasetDeps, target: str) -> None:
    service.import_batch(deps, "acme", athlete_batch(sleep=4.5))  # poor sleep: fatigued
    kb = _corpus(dataset)
    plain = service.recommend(deps, "acme", "anna", rec_in(token_budget=4000))
    assert plain["knowledge"] == {"knowledge_base": None, "status": "off", "found": 0, "chunk_ids": []}
    assert "Principles:" not in plain["context"]["text"]

    deps.settings = CoachSettings(knowledge_base=kb)
    used = _principles("used")
    rec = service.recommend(deps, "acme", "anna", rec_in(token_budget=4000))
    assert rec["state"]["branch"] == "fatigued"
    state = AthleteState(**{k: v for k, v in rec["state"].items() if k != "branch"})
    query = principles_query(state, QUESTION, deps.config)
    assert query == "fatigued fatigue recovery sleep\n" + QUESTION
    hits = knowledge_service.search(dataset, "acme", kb, SearchKnowledgeBase(
        query=query, top_k=deps.settings.knowledge_top_k, max_tokens=deps.settings.knowledge_max_tokens)).hits
    assert len(hits) >= 2 and any("Fatigue flags" in h.text for h in hits)
    assert rec["knowledge"] == {"knowledge_base": kb, "status": "used", "found": len(hits),
                                "chunk_ids": [h.chunk_id for h in hits]}
    assert rec["context"]["text"] == principles_section([h.text for h in hits]) + "\n" + plain["context"]["text"]
    assert rec["context"]["level"] == plain["context"]["level"] == "full"
    assert models.calls[-1]["messages"] == [{"role": "system", "content": SYSTEM_PROMPT},
                                            {"role": "user", "content": rec["context"]["text"]}]
    assert rec["prompt_hash"] != plain["prompt_hash"]
    assert _principles("used") == used + 1
    again = service.recommend(deps, "acme", "anna", rec_in(token_budget=4000))
    assert again["context"]["text"] == rec["context"]["text"]  # deterministic

    # a request without a knowledge base gets exactly the plain context
    off = service.recommend(deps, "acme", "anna", rec_in(token_budget=4000, knowledge_base=""))
    assert off["context"] == plain["context"] and off["prompt_hash"] == plain["prompt_hash"]
    assert off["knowledge"]["status"] == "off"

    # a budget the plain context just fits: the principles give way, nothing is summarised
    tight = service.recommend(deps, "acme", "anna", rec_in(token_budget=plain["context"]["tokens"]))
    assert tight["context"]["text"] == plain["context"]["text"]
    assert tight["knowledge"] == {"knowledge_base": kb, "status": "dropped", "found": len(hits), "chunk_ids": []}
    # room for the best one only (counted as the coach counts: here without a prepared tokenizer)
    count, _ = token_counter(deps.models_dir, "SmolLM2-135M-Instruct")
    one = principles_section([hits[0].text]) + "\n" + plain["context"]["text"]
    budget = count(SYSTEM_PROMPT + "\n" + one)
    some = service.recommend(deps, "acme", "anna", rec_in(token_budget=budget))
    assert some["knowledge"]["chunk_ids"] == [hits[0].chunk_id] and some["knowledge"]["status"] == "used"
    assert (some["context"]["text"], some["context"]["tokens"], some["context"]["level"]) == (one, budget, "full")


def test_a_request_names_its_knowledge_base_and_failures_never_fail_it(deps: CoachDeps, models: ScriptedModels,
                                                                       dataset: DatasetDeps, target: str) -> None:
    service.import_batch(deps, "acme", athlete_batch(ill=True))
    kb = _corpus(dataset)
    theirs = _corpus(dataset, "globex")
    rec = service.recommend(deps, "acme", "anna", rec_in(token_budget=4000, knowledge_base=kb))
    assert rec["knowledge"]["status"] == "used" and rec["state"]["branch"] == "ill"
    assert rec["context"]["text"].startswith("Principles:\n- Training principles > Recovery after illness or injury")

    not_found = _principles("not_found")
    for other in (theirs, "kb-0123456789abcdef01234567"):
        rec = service.recommend(deps, "acme", "anna", rec_in(token_budget=4000, knowledge_base=other))
        assert rec["knowledge"] == {"knowledge_base": other, "status": "not_found", "found": 0, "chunk_ids": []}
        assert rec["source"] == "model" and "Principles:" not in rec["context"]["text"]
    assert _principles("not_found") == not_found + 2

    with pytest.raises(Exception) as err:
        rec_in(knowledge_base="notes")
    assert "knowledge_base" in str(err.value)

    # the dataset service does not answer, or there is none
    dead = InternalChannel(f"127.0.0.1:{_free_port()}", TOKEN)
    deps.settings = CoachSettings(knowledge_base=kb, knowledge_timeout_s=0.5)
    for client in (GrpcKnowledgeClient(dead), None):
        deps.knowledge = client
        rec = service.recommend(deps, "acme", "anna", rec_in(token_budget=4000))
        assert rec["knowledge"]["status"] == "unavailable" and rec["source"] == "model"
        assert "Principles:" not in rec["context"]["text"]
    dead.close()


def test_recommend_over_grpc_names_its_knowledge_base(deps: CoachDeps, dataset: DatasetDeps, target: str) -> None:
    service.import_batch(deps, "acme", athlete_batch(sleep=4.5))
    kb = _corpus(dataset)
    metadata = ((INTERNAL_HEADER, TOKEN), (TENANT_HEADER, "acme"))
    with grpc.insecure_channel(target) as channel:
        stub = coach_pb2_grpc.CoachServiceStub(channel)
        got = stub.Recommend(coach_pb2.RecommendRequest(athlete_id="anna", question=QUESTION, today=TODAY.isoformat(),
                                                        token_budget=4000, knowledge_base=kb), metadata=metadata)
        assert (got.knowledge_base, got.knowledge_status) == (kb, "used")
        assert got.knowledge_chunk_ids and got.context.startswith("Principles:\n")
        plain = stub.Recommend(coach_pb2.RecommendRequest(athlete_id="anna", question=QUESTION,
                                                          today=TODAY.isoformat(), token_budget=4000),
                               metadata=metadata)
        assert (plain.knowledge_base, plain.knowledge_status, list(plain.knowledge_chunk_ids)) == ("", "off", [])
        assert got.context.endswith(plain.context) and "Principles:" not in plain.context
