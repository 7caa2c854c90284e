"""Knowledge bases on the real PostgreSQL server: REST (the dataset routers in process, files
uploaded with purpose "knowledge") for create/list/delete, documents and search with a token
budget, tenant isolation and errors that store nothing; indexes rebuilt when another process
changes a knowledge base; gRPC ``KnowledgeService`` over a real server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from coachforge.dataset.v1 import knowledge_pb2, knowledge_pb2_grpc
from coachforge_dataset import api, service, versions
from coachforge_dataset.knowledge import api as knowledge_api
from coachforge_dataset.knowledge import grpc as knowledge_grpc
from coachforge_dataset.knowledge import service as knowledge
from coachforge_dataset.knowledge.schemas import AddKnowledgeDocument, CreateKnowledgeBase, SearchKnowledgeBase
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared import migrate
from coachforge_shared.auth import Authenticator, add_api_key, create_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import FailedPrecondition, InvalidArgument
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel
from coachforge_shared.http import install_error_handlers

DOCS = {
    "polarized.md": "# Polarized training\n\nPolarized training spends about 80 percent of sessions at low intensity "
                    "and 20 percent at high intensity, with little time in the moderate zone between the two "
                    "thresholds.\n",
    "taper.md": "# Taper\n\nA taper cuts training volume by 40 to 60 percent over the last one to three weeks before a "
                "race while keeping some intensity, so fatigue drops and fitness stays.\n",
    "recovery.txt": "Recovery days are very easy sessions or full rest. Soreness, a raised resting heart rate and poor "
                    "sleep are signs that recovery is not complete.\n",
    "sleep.txt": "Sleep is when adaptation happens: most endurance athletes need eight hours or more, and a short "
                 "night before a hard session lowers its quality.\n",
}
ACME = {"Authorization": "Bearer cf-acme-key"}
GLOBEX = {"Authorization": "Bearer cf-globex-key"}


@pytest.fixture
def pg(scratch_postgres: str) -> Iterator[Database]:
    migrate.upgrade(scratch_postgres)
    db = Database(scratch_postgres)
    create_tenant(db, "acme")
    create_tenant(db, "globex")
    add_api_key(db, "acme", "cf-acme-key")
    add_api_key(db, "globex", "cf-globex-key")
    yield db
    db.dispose()


def make_deps(db: Database, files_dir: Path, **settings: Any) -> DatasetDeps:
    return DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target="", **settings), files_dir=files_dir,
                       models_dir=files_dir.parent / "models")


@pytest.fixture
def deps(pg: Database, tmp_path: Path) -> DatasetDeps:
    return make_deps(pg, tmp_path / "files", knowledge_max_document_bytes=2000)


@pytest.fixture
def http(deps: DatasetDeps, pg: Database) -> Iterator[TestClient]:
    app = FastAPI()
    app.state.authenticator = Authenticator(pg, internal_token="internal")
    app.state.dataset = deps
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(knowledge_api.router)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def upload(http: TestClient, name: str, content: bytes, purpose: str = "knowledge",
           headers: dict[str, str] = ACME) -> Any:
    return http.post("/v1/files", headers=headers, files={"file": (name, content)}, data={"purpose": purpose})


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    return body


def new_kb(http: TestClient, headers: dict[str, str] = ACME, **fields: Any) -> dict[str, Any]:
    r = http.post("/v1/knowledge_bases", headers=headers, json={"name": "coach notes", **fields})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_knowledge_base_lifecycle_over_rest(http: TestClient, deps: DatasetDeps) -> None:
    kb = new_kb(http, description="what the coach knows", chunk_tokens=64)
    assert kb["id"].startswith("kb-") and kb["object"] == "knowledge_base"
    assert (kb["chunk_tokens"], kb["chunk_overlap"], kb["document_count"], kb["chunk_count"]) == (64, 31, 0, 0)
    assert http.get(f"/v1/knowledge_bases/{kb['id']}", headers=ACME).json() == kb

    docs = {}
    for name, text in DOCS.items():
        f = upload(http, name, text.encode())
        assert f.status_code == 200, f.text
        assert (f.json()["purpose"], f.json()["bytes"]) == ("knowledge", len(text.encode()))
        r = http.post(f"/v1/knowledge_bases/{kb['id']}/documents", headers=ACME, json={"file_id": f.json()["id"]})
        assert r.status_code == 200, r.text
        docs[name] = r.json()
    doc = docs["taper.md"]
    assert doc["id"].startswith("kbdoc-") and doc["object"] == "knowledge_base.document"
    assert (doc["filename"], doc["status"], doc["chunk_count"], doc["knowledge_base_id"]) == (
        "taper.md", "completed", 1, kb["id"])
    inline = http.post(f"/v1/knowledge_bases/{kb['id']}/documents", headers=ACME,
                       json={"text": "## Fuel\n\nTake 60 to 90 grams of carbohydrate per hour on long rides.",
                             "title": "fuelling guide"}).json()
    assert (inline["filename"], inline["file_id"], inline["chunk_count"]) == ("fuelling guide", None, 1)

    after = http.get(f"/v1/knowledge_bases/{kb['id']}", headers=ACME).json()
    assert (after["document_count"], after["chunk_count"]) == (5, 5)
    assert after["token_count"] == sum(d["token_count"] for d in [*docs.values(), inline])
    listed = http.get(f"/v1/knowledge_bases/{kb['id']}/documents", headers=ACME, params={"limit": 3}).json()
    assert listed["object"] == "list" and listed["has_more"] is True
    assert [d["id"] for d in listed["data"]] == [inline["id"], docs["sleep.txt"]["id"], docs["recovery.txt"]["id"]]
    assert (listed["first_id"], listed["last_id"]) == (inline["id"], docs["recovery.txt"]["id"])
    rest = http.get(f"/v1/knowledge_bases/{kb['id']}/documents", headers=ACME,
                    params={"limit": 3, "after": listed["last_id"]}).json()
    assert [d["id"] for d in rest["data"]] == [docs["taper.md"]["id"], docs["polarized.md"]["id"]]
    assert rest["has_more"] is False

    found = http.post(f"/v1/knowledge_bases/{kb['id']}/search", headers=ACME,
                      json={"query": "how long should my taper be before a race?"}).json()
    assert found["object"] == "list" and found["knowledge_base_id"] == kb["id"]
    # taper, before and race in the taper document (and "Taper" in its heading line); "long" only in
    # the short fuel text beats "before", which the sleep text shares with taper's
    assert [h["source"] for h in found["data"]] == ["taper.md", "fuelling guide", "sleep.txt"]
    top = found["data"][0]
    assert top["document_id"] == doc["id"] and top["text"].startswith("Taper\nA taper cuts training volume")
    assert top["score"] > found["data"][1]["score"] > found["data"][2]["score"] > 0
    assert found["total_tokens"] == sum(h["tokens"] for h in found["data"])
    assert found["first_id"] == top["chunk_id"]

    # the budget: one token short of taper's chunk, the best one is skipped, the fuel one taken, and
    # then sleep's does not fit any more
    sizes = {h["source"]: h["tokens"] for h in found["data"]}
    budget = sizes["taper.md"] - 1
    assert sizes["fuelling guide"] <= budget < sizes["fuelling guide"] + sizes["sleep.txt"]
    within = http.post(f"/v1/knowledge_bases/{kb['id']}/search", headers=ACME,
                       json={"query": "how long should my taper be before a race?", "max_tokens": budget}).json()
    assert [h["source"] for h in within["data"]] == ["fuelling guide"]
    assert within["total_tokens"] == sizes["fuelling guide"]
    one = http.post(f"/v1/knowledge_bases/{kb['id']}/search", headers=ACME,
                    json={"query": "taper race sleep", "top_k": 1}).json()
    assert [h["source"] for h in one["data"]] == ["taper.md"]

    # a deleted document is not found any more
    assert http.delete(f"/v1/knowledge_bases/{kb['id']}/documents/{doc['id']}", headers=ACME).json() == {
        "id": doc["id"], "object": "knowledge_base.document", "deleted": True}
    again = http.post(f"/v1/knowledge_bases/{kb['id']}/search", headers=ACME,
                      json={"query": "how long should my taper be before a race?"}).json()
    assert [h["source"] for h in again["data"]] == ["fuelling guide", "sleep.txt"]
    counts = http.get(f"/v1/knowledge_bases/{kb['id']}", headers=ACME).json()
    assert (counts["document_count"], counts["chunk_count"]) == (4, 4)
    assert error(http.get(f"/v1/knowledge_bases/{kb['id']}/documents/{doc['id']}", headers=ACME), 404)[
        "param"] == "document_id"

    assert http.delete(f"/v1/knowledge_bases/{kb['id']}", headers=ACME).json()["deleted"] is True
    assert error(http.get(f"/v1/knowledge_bases/{kb['id']}", headers=ACME), 404)["code"] == "knowledge_base_not_found"
    assert kb["id"] not in deps.knowledge_indexes
    assert http.get("/v1/files", headers=ACME, params={"purpose": "knowledge"}).json()["data"]  # files stay


def test_knowledge_bases_page_like_openai(http: TestClient) -> None:
    ids = [new_kb(http, name=f"kb {i}")["id"] for i in range(3)]
    page = http.get("/v1/knowledge_bases", headers=ACME, params={"limit": 2}).json()
    assert [k["id"] for k in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[2], ids[1])
    rest = http.get("/v1/knowledge_bases", headers=ACME, params={"limit": 2, "after": page["last_id"]}).json()
    assert [k["id"] for k in rest["data"]] == [ids[0]] and rest["has_more"] is False
    oldest = http.get("/v1/knowledge_bases", headers=ACME, params={"order": "asc"}).json()
    assert [k["id"] for k in oldest["data"]] == ids
    assert error(http.get("/v1/knowledge_bases", headers=ACME, params={"after": "kb-nope"}), 400)["param"] == "after"
    assert error(http.get("/v1/knowledge_bases", headers=ACME, params={"limit": 0}), 400)["param"] == "limit"


def test_another_tenant_sees_nothing(http: TestClient) -> None:
    kb = new_kb(http)
    f = upload(http, "taper.md", DOCS["taper.md"].encode()).json()
    doc = http.post(f"/v1/knowledge_bases/{kb['id']}/documents", headers=ACME, json={"file_id": f["id"]}).json()
    base = f"/v1/knowledge_bases/{kb['id']}"
    for r in (http.get(base, headers=GLOBEX), http.delete(base, headers=GLOBEX),
              http.get(f"{base}/documents", headers=GLOBEX),
              http.post(f"{base}/documents", headers=GLOBEX, json={"text": "mine now"}),
              http.get(f"{base}/documents/{doc['id']}", headers=GLOBEX),
              http.delete(f"{base}/documents/{doc['id']}", headers=GLOBEX),
              http.post(f"{base}/search", headers=GLOBEX, json={"query": "taper"})):
        assert error(r, 404)["code"] == "knowledge_base_not_found"
    assert http.get("/v1/knowledge_bases", headers=GLOBEX).json()["data"] == []
    theirs = new_kb(http, headers=GLOBEX)
    # nor can it add the other tenant's file to its own knowledge base
    body = error(http.post(f"/v1/knowledge_bases/{theirs['id']}/documents", headers=GLOBEX,
                           json={"file_id": f["id"]}), 400)
    assert (body["param"], body["code"]) == ("file_id", "file_not_found")
    # and a document id of another knowledge base is not found in this one
    mine = new_kb(http)
    assert error(http.delete(f"/v1/knowledge_bases/{mine['id']}/documents/{doc['id']}", headers=ACME), 404)[
        "param"] == "document_id"
    assert http.get(base, headers=ACME).json()["document_count"] == 1


def test_bad_documents_are_refused_naming_the_field_and_nothing_is_stored(http: TestClient,
                                                                           deps: DatasetDeps) -> None:
    kb = new_kb(http)
    docs = f"/v1/knowledge_bases/{kb['id']}/documents"
    training = upload(http, "train.jsonl", b'{"messages": [{"role": "user", "content": "hi"}, '
                                           b'{"role": "assistant", "content": "hello"}]}', purpose="fine-tune").json()
    cases = [
        ({"file_id": "file-nope"}, 400, "file_id", "file_not_found"),
        ({"file_id": training["id"]}, 400, "file_id", "invalid_file_purpose"),
        ({"text": "   \n\n  "}, 400, "text", "empty_document"),
        ({"text": "# Only a heading\n"}, 400, "text", "empty_document"),
        ({"text": ""}, 400, "text", "empty_document"),
        ({"text": "a\x00b"}, 400, "text", "invalid_text"),
        ({"text": "x" * 2001}, 413, "text", "document_too_large"),
        ({"file_id": training["id"], "text": "both"}, 400, "text", None),
        ({}, 400, "file_id", None),
        ({"text": "ok", "extra": 1}, 400, "extra", None),
    ]
    for body, status, param, code in cases:
        err = error(http.post(docs, headers=ACME, json=body), status)
        assert err["param"] == param, (body, err)
        if code:
            assert err["code"] == code, (body, err)
    for content, reason in ((b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"), (b"text\x00\x01\x02", "binary"),
                            (b"caf\xc3", "not UTF-8"), (b" \n\t", "no text"), (b"", "no text"),
                            (b"y" * 2001, "larger than")):
        err = error(upload(http, "doc.md", content), 413 if reason == "larger than" else 400)
        assert err["param"] == "file" and reason in err["message"], err
    assert http.get("/v1/files", headers=ACME, params={"purpose": "knowledge"}).json()["data"] == []
    assert [p.name for p in (deps.files_dir / "acme").iterdir()] == [training["id"]]  # no temporary left
    after = http.get(f"/v1/knowledge_bases/{kb['id']}", headers=ACME).json()
    assert (after["document_count"], after["chunk_count"], after["bytes"]) == (0, 0, 0)
    assert http.get(docs, headers=ACME).json()["data"] == []
    # a UTF-8 character split across the upload's chunks is fine, and a BOM is not text
    split = service.store_upload(deps, "acme", "split.md", "knowledge", [b"Caf", b"\xc3", b"\xa9 noir."])
    assert (split.bytes, split.purpose, split.report_id) == (11, "knowledge", None)
    ok = upload(http, "accents.md", "\ufeffCafé au lait: récupération après l'effort.".encode())
    assert ok.status_code == 200, ok.text
    added = http.post(docs, headers=ACME, json={"file_id": ok.json()["id"]}).json()
    hit = http.post(f"/v1/knowledge_bases/{kb['id']}/search", headers=ACME, json={"query": "récupération"}).json()
    assert [h["text"] for h in hit["data"]] == ["Café au lait: récupération après l'effort."]
    assert hit["data"][0]["document_id"] == added["id"]


def test_a_knowledge_file_is_never_training_data(deps: DatasetDeps) -> None:
    row = service.store_upload(deps, "acme", "taper.md", "knowledge", [DOCS["taper.md"].encode()])
    assert b"".join(service.read_content(deps, "acme", row.id)) == DOCS["taper.md"].encode()
    for call in (lambda: list(service.read_as_openai_chat(deps, "acme", row.id)),
                 lambda: versions.check_tokens(deps, "acme", row.id, 100, "SmolLM2-135M-Instruct"),
                 lambda: versions.check_eligibility(deps, "acme", row.id)):
        with pytest.raises(InvalidArgument, match="purpose 'knowledge'"):
            call()


def test_bad_settings_and_searches_are_refused(http: TestClient) -> None:
    for fields, param in (({"chunk_tokens": 100, "chunk_overlap": 50}, "chunk_overlap"),
                          ({"chunk_tokens": 8}, "chunk_tokens"), ({"name": ""}, "name")):
        assert error(http.post("/v1/knowledge_bases", headers=ACME, json={"name": "x", **fields}), 400)[
            "param"] == param
    assert new_kb(http, chunk_tokens=40)["chunk_overlap"] == 19  # the default overlap, lowered below half
    kb = new_kb(http)
    search = f"/v1/knowledge_bases/{kb['id']}/search"
    for body, param in (({"query": ""}, "query"), ({"query": "x", "top_k": 51}, "top_k"),
                        ({"query": "x", "top_k": 0}, "top_k"), ({"query": "x", "max_tokens": 0}, "max_tokens"),
                        ({"top_k": 3}, "query")):
        assert error(http.post(search, headers=ACME, json=body), 400)["param"] == param
    assert http.post(search, headers=ACME, json={"query": "taper"}).json()["data"] == []  # empty: nothing found
    assert error(http.post("/v1/knowledge_bases/kb-nope/search", headers=ACME, json={"query": "x"}), 404)[
        "param"] == "knowledge_base_id"


def searches(tenant: str, index: str) -> float:
    return REGISTRY.get_sample_value("coachforge_knowledge_search_seconds_count",
                                     {"tenant": tenant, "index": index}) or 0.0


def test_each_process_rebuilds_its_index_when_another_changes_the_knowledge_base(pg: Database,
                                                                                 tmp_path: Path) -> None:
    """Two service processes on one database (two DatasetDeps, two caches): a document added or
    deleted through one is seen by the next search through the other."""
    create_tenant(pg, "initech")
    one, two = make_deps(pg, tmp_path / "files"), make_deps(pg, tmp_path / "files")
    kb = knowledge.create_knowledge_base(one, "initech", CreateKnowledgeBase(name="shared"))
    first = knowledge.add_document(one, "initech", kb.id, AddKnowledgeDocument(text=DOCS["taper.md"], title="taper"))
    query = SearchKnowledgeBase(query="sleep before a race")
    built, cached = searches("initech", "built"), searches("initech", "cached")
    assert [h.source for h in knowledge.search(two, "initech", kb.id, query).hits] == ["taper"]
    assert [h.source for h in knowledge.search(two, "initech", kb.id, query).hits] == ["taper"]
    assert (searches("initech", "built") - built, searches("initech", "cached") - cached) == (1, 1)
    knowledge.add_document(one, "initech", kb.id, AddKnowledgeDocument(text=DOCS["sleep.txt"], title="sleep"))
    assert [h.source for h in knowledge.search(two, "initech", kb.id, query).hits] == ["sleep", "taper"]
    knowledge.delete_document(one, "initech", kb.id, first.id)
    assert [h.source for h in knowledge.search(two, "initech", kb.id, query).hits] == ["sleep"]
    assert searches("initech", "built") - built == 3


def test_a_full_knowledge_base_refuses_more_chunks(pg: Database, tmp_path: Path) -> None:
    deps = make_deps(pg, tmp_path / "files", knowledge_max_chunks=3)
    kb = knowledge.create_knowledge_base(deps, "acme", CreateKnowledgeBase(name="small", chunk_tokens=16,
                                                                           chunk_overlap=0))
    knowledge.add_document(deps, "acme", kb.id, AddKnowledgeDocument(text="One two three. Four five six."))
    with pytest.raises(FailedPrecondition) as err:
        knowledge.add_document(deps, "acme", kb.id, AddKnowledgeDocument(text=" ".join(["word"] * 40)))
    assert (err.value.param, err.value.code) == ("text", "knowledge_base_full")
    row = knowledge.get_knowledge_base(deps, "acme", kb.id)
    assert (row.document_count, row.chunk_count) == (1, 1)
    assert len(knowledge.list_documents(deps, "acme", kb.id)[0]) == 1


@pytest.fixture
def rpc(deps: DatasetDeps, pg: Database) -> Iterator[tuple[knowledge_pb2_grpc.KnowledgeServiceStub, InternalChannel,
                                                           str]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = GrpcServerThread([knowledge_grpc.registration(deps)], Authenticator(pg, "internal-test-token"),
                              f"127.0.0.1:{port}").start()
    channel = InternalChannel(f"127.0.0.1:{port}", "internal-test-token")
    try:
        yield knowledge_pb2_grpc.KnowledgeServiceStub(channel.channel), channel, f"127.0.0.1:{port}"
    finally:
        channel.close()
        server.stop()


def test_grpc_knowledge_service(rpc: tuple[knowledge_pb2_grpc.KnowledgeServiceStub, InternalChannel, str],
                                pg: Database) -> None:
    stub, channel, target = rpc
    md = channel.metadata("acme")
    kb = stub.CreateKnowledgeBase(knowledge_pb2.CreateKnowledgeBaseRequest(name="coach", chunk_tokens=64), metadata=md)
    assert (kb.chunk_tokens, kb.chunk_overlap) == (64, 31)
    docs = [stub.AddDocument(knowledge_pb2.AddDocumentRequest(knowledge_base_id=kb.id, text=text, title=name),
                             metadata=md) for name, text in DOCS.items()]
    assert [d.status for d in docs] == [knowledge_pb2.DOCUMENT_STATUS_COMPLETED] * 4
    assert all(d.chunk_count == 1 and d.file_id == "" for d in docs)

    found = stub.Search(knowledge_pb2.SearchRequest(knowledge_base_id=kb.id, query="sleep and recovery"), metadata=md)
    assert [h.source for h in found.hits] == ["recovery.txt", "sleep.txt"]
    assert found.hits[0].document_id == docs[2].id and found.hits[0].score > found.hits[1].score > 0
    assert found.total_tokens == sum(h.tokens for h in found.hits)
    budget = stub.Search(knowledge_pb2.SearchRequest(knowledge_base_id=kb.id, query="sleep and recovery",
                                                     max_tokens=found.hits[1].tokens), metadata=md)
    assert [h.source for h in budget.hits] == ["sleep.txt"]  # recovery's chunk is larger than the budget

    page = stub.ListKnowledgeBases(knowledge_pb2.ListKnowledgeBasesRequest(), metadata=md)
    assert [k.id for k in page.knowledge_bases] == [kb.id] and not page.has_more
    assert stub.GetKnowledgeBase(knowledge_pb2.GetKnowledgeBaseRequest(knowledge_base_id=kb.id),
                                 metadata=md).document_count == 4
    listed = stub.ListDocuments(knowledge_pb2.ListDocumentsRequest(knowledge_base_id=kb.id, limit=3), metadata=md)
    assert [d.id for d in listed.documents] == [d.id for d in docs[::-1][:3]] and listed.has_more
    assert stub.DeleteDocument(knowledge_pb2.DeleteDocumentRequest(knowledge_base_id=kb.id, document_id=docs[2].id),
                               metadata=md).deleted
    assert [h.source for h in stub.Search(knowledge_pb2.SearchRequest(knowledge_base_id=kb.id, query="recovery"),
                                          metadata=md).hits] == []

    def refused(call: Any, code: grpc.StatusCode) -> dict[str, str]:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code, err.value.details()
        return {k: str(v) for k, v in err.value.trailing_metadata() or ()}

    other = channel.metadata("globex")
    missing = refused(lambda: stub.Search(knowledge_pb2.SearchRequest(knowledge_base_id=kb.id, query="sleep"),
                                          metadata=other), grpc.StatusCode.NOT_FOUND)
    assert missing["x-error-param"] == "knowledge_base_id"
    assert refused(lambda: stub.Search(knowledge_pb2.SearchRequest(knowledge_base_id=kb.id, query=""), metadata=md),
                   grpc.StatusCode.INVALID_ARGUMENT)["x-error-param"] == "query"
    assert refused(lambda: stub.Search(knowledge_pb2.SearchRequest(knowledge_base_id=kb.id, query="x", top_k=51),
                                       metadata=md), grpc.StatusCode.INVALID_ARGUMENT)["x-error-param"] == "top_k"
    assert refused(lambda: stub.AddDocument(knowledge_pb2.AddDocumentRequest(knowledge_base_id=kb.id, text=" "),
                                            metadata=md), grpc.StatusCode.INVALID_ARGUMENT)["x-error-param"] == "text"
    assert refused(lambda: stub.AddDocument(knowledge_pb2.AddDocumentRequest(knowledge_base_id=kb.id,
                                                                             file_id="file-nope"), metadata=md),
                   grpc.StatusCode.INVALID_ARGUMENT)["x-error-code"] == "file_not_found"
    assert refused(lambda: stub.CreateKnowledgeBase(knowledge_pb2.CreateKnowledgeBaseRequest(
        name="x", chunk_tokens=100, chunk_overlap=50), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT)["x-error-param"] == "chunk_overlap"

    # an API key with the read scope may search, not change a knowledge base
    _, key = create_api_key(pg, "acme", scopes="read")
    with grpc.insecure_channel(target) as plain:
        keyed = knowledge_pb2_grpc.KnowledgeServiceStub(plain)
        auth = (("authorization", f"Bearer {key}"),)
        assert [h.source for h in keyed.Search(knowledge_pb2.SearchRequest(knowledge_base_id=kb.id, query="sleep"),
                                               metadata=auth).hits] == ["sleep.txt"]
        refused(lambda: keyed.AddDocument(knowledge_pb2.AddDocumentRequest(knowledge_base_id=kb.id, text="x"),
                                          metadata=auth), grpc.StatusCode.PERMISSION_DENIED)

    assert stub.DeleteKnowledgeBase(knowledge_pb2.GetKnowledgeBaseRequest(knowledge_base_id=kb.id), metadata=md).deleted
    refused(lambda: stub.GetKnowledgeBase(knowledge_pb2.GetKnowledgeBaseRequest(knowledge_base_id=kb.id), metadata=md),
            grpc.StatusCode.NOT_FOUND)
