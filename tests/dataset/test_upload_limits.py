"""Upload limits as an attacker meets them: a line far over ``max_line_bytes`` sent in many small
chunks is an invalid line naming its number (strict: the file is refused and nothing stored;
lenient: dropped and reported, later lines keep their numbers), over REST with OpenAI's error body
too; hostile JSON (deep nesting, giant integers, lone surrogates) is an issue, not a 500; a bad
filename is a 400; a client's base model name never reaches the filesystem as a path, and no error
names a server folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coachforge_dataset import api, service, versions
from coachforge_dataset.schemas import CreateDatasetVersion
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import Authenticator, add_api_key, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument
from coachforge_shared.http import install_error_handlers

GOOD = json.dumps({"messages": [{"role": "user", "content": "Easy or hard today?"},
                                {"role": "assistant", "content": "Easy: your TSB is -24."}]}).encode()
LIMIT = 1000


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> DatasetDeps:
    create_tenant(db, "acme")
    return DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target="", max_line_bytes=LIMIT, chunk_bytes=50),
                       files_dir=tmp_path / "files", models_dir=tmp_path / "models")


def dribbled(content: bytes, size: int = 50) -> Iterator[bytes]:
    """The content in small chunks, as a slow client sends it."""
    for i in range(0, len(content), size):
        yield content[i:i + size]


def long_line(n: int = 200_000) -> bytes:
    return b'{"messages": [{"role": "user", "content": "' + b"a" * n + b'"}]}'


def test_strict_refuses_a_file_with_a_line_over_the_limit_naming_it(deps: DatasetDeps) -> None:
    content = GOOD + b"\n" + long_line() + b"\n" + GOOD + b"\n"
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "big.jsonl", "fine-tune", dribbled(content))
    assert err.value.param == "file" and err.value.code == "invalid_file_format"
    assert f"line 2: line: longer than the limit of {LIMIT} bytes" in err.value.message
    assert service.list_files(deps, "acme") == []
    assert not [p for p in (deps.files_dir / "acme").iterdir() if p.name.startswith(".")]  # no temporary left


def test_lenient_drops_the_long_line_and_keeps_the_numbers_after_it(deps: DatasetDeps) -> None:
    content = b"\n".join([GOOD, long_line(), GOOD, b"{nope", GOOD, b"x" * (LIMIT + 1)])
    row = service.store_upload(deps, "acme", "big.jsonl", "fine-tune", dribbled(content, 7), policy="lenient")
    assert (row.example_count, row.invalid_lines) == (3, 3)
    report = json.loads(b"".join(service.report_json_chunks(service.get_report(deps, "acme", file_id=row.id))))
    assert [(i["line"], i["reason"].split(" (")[0]) for i in report["issues"]] == [
        (2, f"longer than the limit of {LIMIT} bytes"), (4, "invalid JSON"),
        (6, f"longer than the limit of {LIMIT} bytes")]
    stored = b"".join(service.read_content(deps, "acme", row.id)).split(b"\n")
    assert stored[:5] == [GOOD, b"", GOOD, b"", GOOD]  # dropped lines are blank: numbers still match


def test_a_line_exactly_at_the_limit_is_read(deps: DatasetDeps) -> None:
    head, tail = b'{"instruction": "x", "output": "', b'"}'
    line = head + b"y" * (LIMIT - len(head) - len(tail)) + tail
    assert len(line) == LIMIT
    assert service.store_upload(deps, "acme", "edge.jsonl", "fine-tune", dribbled(line + b"\n")).example_count == 1
    with pytest.raises(InvalidArgument, match="line 1: line: longer than the limit"):  # its \r is one byte more
        service.store_upload(deps, "acme", "edge.jsonl", "fine-tune", dribbled(line + b"\r\n"))


def test_evals_files_have_the_same_line_limit(deps: DatasetDeps) -> None:
    item = json.dumps({"item": {"q": "x"}}).encode()
    with pytest.raises(InvalidArgument, match=f"line 2: line: longer than the limit of {LIMIT} bytes"):
        service.store_upload(deps, "acme", "items.jsonl", "evals", dribbled(item + b"\n" + b" " * 5000 + b"\n"))


def test_the_line_limit_is_a_documented_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DatasetSettings().max_line_bytes == 8 * 1024**2
    assert DatasetSettings.model_fields["max_line_bytes"].description
    monkeypatch.setenv("COACHFORGE_DATASET_MAX_LINE_BYTES", "4096")
    assert DatasetSettings().max_line_bytes == 4096


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested deeper than 64 levels"),
    (b'{"instruction": "x", "output": "y", "n": ' + b"7" * 6000 + b"}", "Exceeds the limit"),
    (b'{"instruction": "x", "output": "\\udc80"}', "lone UTF-16 surrogate"),
])
def test_hostile_json_lines_are_reported_not_crashes(deps: DatasetDeps, raw: bytes, reason: str) -> None:
    deps.settings.max_line_bytes = 1024**2  # within the line limit: the JSON itself is the problem
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "h.jsonl", "fine-tune", [GOOD + b"\n" + raw + b"\n"])
    assert "line 2: line: invalid JSON" in err.value.message and reason in err.value.message


def test_an_escaped_surrogate_pair_is_still_text(deps: DatasetDeps) -> None:
    raw = b'{"instruction": "smile", "output": "\\ud83d\\ude00"}'
    assert service.store_upload(deps, "acme", "emoji.jsonl", "fine-tune", [raw]).example_count == 1


@pytest.mark.parametrize("name", ["x" * 256, "bad\x00name.jsonl", "line\nbreak.jsonl"])
def test_bad_filenames_are_refused(deps: DatasetDeps, name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", name, "fine-tune", [GOOD])
    assert err.value.param == "filename"


@pytest.fixture
def client(deps: DatasetDeps, db: Database) -> Iterator[TestClient]:
    add_api_key(db, "acme", "cf-acme-key")
    app = FastAPI()
    app.state.authenticator = Authenticator(db, internal_token="internal")
    app.state.dataset = deps
    install_error_handlers(app)
    app.include_router(api.router)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield http


def test_rest_upload_with_a_long_line_is_a_400_naming_the_line(client: TestClient) -> None:
    r = client.post("/v1/files", headers={"Authorization": "Bearer cf-acme-key"}, data={"purpose": "fine-tune"},
                    files={"file": ("big.jsonl", GOOD + b"\n" + long_line(3_000_000) + b"\n")})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == ("file", "invalid_file_format", "invalid_request_error")
    assert f"line 2: line: longer than the limit of {LIMIT} bytes ({len(long_line(3_000_000))} bytes)" in \
        error["message"]


def test_base_model_names_are_checked_before_any_path_and_errors_name_no_folder(deps: DatasetDeps,
                                                                                tmp_path: Path) -> None:
    (deps.models_dir / "SmolLM2-135M-Instruct").mkdir(parents=True)
    (deps.models_dir / "SmolLM2-135M-Instruct" / "tokenizer.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "tokenizer.json").write_text("{}")  # what "../outside" would have reached
    row = service.store_upload(deps, "acme", "a.jsonl", "fine-tune", [GOOD])
    for name in ("../outside", str(outside), "SmolLM2-135M-Instruct/../../outside", "..", "a\x00b", "nope"):
        with pytest.raises(InvalidArgument) as err:
            versions.check_tokens(deps, "acme", row.id, 100, name)
        assert err.value.param == "model"
        assert "prepared base models: SmolLM2-135M-Instruct" in err.value.message
        assert str(deps.models_dir) not in err.value.message
        with pytest.raises(InvalidArgument) as err:
            versions.create_version(deps, "acme", CreateDatasetVersion(name="d", files=[row.id], base_model=name))
        assert err.value.param == "model" and str(deps.models_dir) not in err.value.message
