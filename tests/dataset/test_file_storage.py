"""Uploads: every line validated, nothing stored unless all lines are valid, limits enforced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coachforge_dataset import service
from coachforge_dataset.pipeline import parse_line
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import FailedPrecondition, InvalidArgument, NotFound, PayloadTooLarge

GOOD = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "hello"}]}


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> DatasetDeps:
    create_tenant(db, "acme")
    create_tenant(db, "globex")
    return DatasetDeps(db=db, settings=DatasetSettings(max_upload_bytes=10_000, chunk_bytes=7, trainer_grpc_target=""),
                       files_dir=tmp_path / "files", models_dir=tmp_path / "models")


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(("raw", "field", "reason"), [
    (b"{oops", "line", "invalid JSON"),
    (b"\xff\xfe", "line", "not valid UTF-8"),
    (b"[1]", "line", "expected a JSON object"),
    (line({"messages": []}), "messages", "missing or not a non-empty list"),
    (line({"messages": [{"role": "bot", "content": "x"}]}), "messages[0].role", "unknown role 'bot'"),
    (line({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]}),
     "messages[0].content", "missing or empty"),
    (line({"messages": [{"role": "user", "content": "q"}]}), "messages", "no assistant turn"),
    (line({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}),
     "messages[1].role", "last turn must be the assistant's"),
    (line({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]}),
     "messages[1].weight", "must be 0 or 1"),
])
def test_line_errors_name_field_and_reason(raw: bytes, field: str, reason: str) -> None:
    _, errors = parse_line(5, raw)
    assert errors and errors[0].line == 5 and errors[0].field == field and reason in errors[0].reason


def test_valid_file_is_stored_with_hash_and_count(deps: DatasetDeps) -> None:
    content = b"\n".join([line(GOOD)] * 3) + b"\n\n"
    row = service.store_upload(deps, "acme", "a.jsonl", "fine-tune", [content[i:i + 7] for i in
                                                                      range(0, len(content), 7)])
    assert row.example_count == 3 and row.bytes == len(content)
    assert b"".join(service.read_content(deps, "acme", row.id)) == content
    assert [f.id for f in service.list_files(deps, "acme")] == [row.id]
    with pytest.raises(NotFound):
        service.get_file(deps, "globex", row.id)
    assert service.list_files(deps, "globex") == []


def test_invalid_file_reports_every_bad_line_and_stores_nothing(deps: DatasetDeps) -> None:
    content = b"\n".join([line(GOOD), b"{bad", line(GOOD), line({"messages": [{"role": "user", "content": "x"}]})])
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "b.jsonl", "fine-tune", [content])
    assert err.value.param == "file"
    assert "2 invalid line(s)" in err.value.message
    assert "line 2: line: invalid JSON" in err.value.message
    assert "line 4: messages: no assistant turn" in err.value.message
    assert service.list_files(deps, "acme") == []
    assert list((deps.files_dir / "acme").iterdir()) == []


def test_size_limit_is_enforced_while_streaming(deps: DatasetDeps) -> None:
    chunks = (line(GOOD) + b"\n" for _ in range(1000))
    with pytest.raises(PayloadTooLarge):
        service.store_upload(deps, "acme", "big.jsonl", "fine-tune", chunks)
    assert list((deps.files_dir / "acme").iterdir()) == []


def test_unknown_purpose_and_empty_file_are_refused(deps: DatasetDeps) -> None:
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "a.jsonl", "assistants", [line(GOOD)])
    assert err.value.param == "purpose"
    with pytest.raises(InvalidArgument):
        service.store_upload(deps, "acme", "e.jsonl", "fine-tune", [b"\n\n"])


def test_delete_removes_row_and_content(deps: DatasetDeps) -> None:
    row = service.store_upload(deps, "acme", "a.jsonl", "fine-tune", [line(GOOD)])
    with pytest.raises(NotFound):
        service.delete_file(deps, "globex", row.id)
    service.delete_file(deps, "acme", row.id)
    assert not Path(row.storage_path).exists()
    with pytest.raises(NotFound):
        service.get_file(deps, "acme", row.id)


def test_any_uploaded_format_reads_back_as_openai_chat_for_training(deps: DatasetDeps) -> None:
    content = b"\n".join([
        line({"conversations": [{"from": "human", "value": "How far?"}, {"from": "gpt", "value": "5 km."}]}),
        line({"instruction": "Name a recovery day.", "input": "", "output": "Sunday."}),
        line(GOOD),
    ]) + b"\n"
    row = service.store_upload(deps, "acme", "mixed.jsonl", "fine-tune", [content])
    records = [json.loads(r) for r in b"".join(service.read_as_openai_chat(deps, "acme", row.id)).splitlines()]
    assert [[m["role"] for m in r["messages"]] for r in records][:2] == [["user", "assistant"], ["user", "assistant"]]
    assert records[0]["messages"][1]["content"] == "5 km."
    assert records[1]["messages"][0]["content"].startswith("Name a recovery day.")
    assert records[2]["messages"] == GOOD["messages"]


def test_content_lost_by_storage_is_a_clear_error_not_a_crash(deps: DatasetDeps) -> None:
    row = service.store_upload(deps, "acme", "a.jsonl", "fine-tune", [line(GOOD) + b"\n"])
    Path(row.storage_path).unlink()
    for read in (service.read_content, service.read_as_openai_chat):
        with pytest.raises(FailedPrecondition, match=f"content of file {row.id} is missing from storage") as err:
            list(read(deps, "acme", row.id))
        assert err.value.code == "file_content_missing" and err.value.param == "file_id"
