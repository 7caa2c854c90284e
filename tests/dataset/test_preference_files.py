"""Preference files (OpenAI's DPO format) for purpose fine-tune: each line checked with errors naming
its line and field, a file all chat or all preference lines (the file object says which), the pairs
read back intact for the trainer, CheckTokens counting a pair's prompt with its longer output, the
eligibility scan, and dataset versions refusing them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coachforge_dataset import service, versions
from coachforge_dataset.pipeline.preference import Preference, parse_training_line
from coachforge_dataset.schemas import CreateDatasetVersion
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument


def pair(i: int = 0, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "input": {"messages": [{"role": "system", "content": "You are a running coach."},
                               {"role": "user", "content": f"I ran {i + 3} km today with heavy legs. Run tomorrow?"}],
                  "tools": [], "parallel_tool_calls": True},
        "preferred_output": [{"role": "assistant", "content": f"After {i + 3} km on heavy legs, rest tomorrow."}],
        "non_preferred_output": [{"role": "assistant", "content": "Sure, run hard."}]}
    obj.update(changes)
    return obj


CHAT = {"messages": [{"role": "user", "content": "How hard should Tuesday be?"},
                     {"role": "assistant", "content": "Easy: zone 2 for forty minutes."}]}


def jsonl(*objs: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


@pytest.fixture
def deps(db: Database, tmp_path: Path, base_model_dir: Path) -> DatasetDeps:
    create_tenant(db, "acme")
    return DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target=""), files_dir=tmp_path / "files",
                       models_dir=base_model_dir.parent)


def issues_of(obj: dict[str, Any]) -> list[tuple[str, str]]:
    kind, found, issues = parse_training_line(7, json.dumps(obj).encode())
    assert kind == "preference" and (found is None) == bool(issues)
    assert all(i.line == 7 for i in issues)
    return [(i.field, i.reason) for i in issues]


# -- one line ---------------------------------------------------------------------------------------

def test_a_good_pair_is_read_whole() -> None:
    kind, found, issues = parse_training_line(1, json.dumps(pair()).encode())
    assert (kind, issues) == ("preference", [])
    assert isinstance(found, Preference)
    assert [m.role for m in found.prompt] == ["system", "user"]
    assert found.preferred.startswith("After 3 km") and found.non_preferred == "Sure, run hard."
    record = found.to_record()
    assert record["input"]["tools"] == [] and record["input"]["parallel_tool_calls"] is True
    assert record["preferred_output"] == pair()["preferred_output"]
    assert parse_training_line(1, found.to_jsonl())[1] == found  # what the trainer reads re-reads the same


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"input": {"messages": []}}, "input.messages", "non-empty list"),
    ({"input": "hi"}, "input", "not an object"),
    ({"input": {"messages": [{"role": "robot", "content": "x"}]}}, "input.messages[0].role", "unknown role"),
    ({"input": {"messages": [{"role": "user", "content": " "}]}}, "input.messages[0].content", "missing or empty"),
    ({"input": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}},
     "input.messages[1].role", "last turn must be the user's"),
    ({"input": {"messages": [{"role": "user", "content": "a"}], "tools": "search"}}, "input.tools", "list"),
    ({"input": {"messages": [{"role": "user", "content": "a"}], "parallel_tool_calls": "yes"}},
     "input.parallel_tool_calls", "true or false"),
    ({"preferred_output": []}, "preferred_output", "exactly one message"),
    ({"preferred_output": {"role": "assistant", "content": "x"}}, "preferred_output", "exactly one message"),
    ({"preferred_output": [{"role": "user", "content": "x"}]}, "preferred_output[0].role", "must be 'assistant'"),
    ({"non_preferred_output": [{"role": "assistant", "content": ""}]}, "non_preferred_output[0].content",
     "missing or empty"),
    ({"non_preferred_output": [{"role": "assistant", "content": "After 3 km on heavy legs, rest tomorrow."}]},
     "non_preferred_output[0].content", "must differ"),
])
def test_each_problem_names_its_field(change: dict[str, Any], field: str, reason: str) -> None:
    found = issues_of(pair(**change))
    assert any(f == field and reason in r for f, r in found), found


def test_missing_outputs_are_each_reported() -> None:
    obj = pair()
    del obj["preferred_output"], obj["non_preferred_output"]
    assert [f for f, _ in issues_of(obj)] == ["preferred_output", "non_preferred_output"]


def test_a_line_without_outputs_but_with_an_input_object_is_a_preference_line() -> None:
    assert [f for f, _ in issues_of({"input": {"messages": [{"role": "user", "content": "hi"}]}})] == [
        "preferred_output", "non_preferred_output"]
    # An alpaca line's input is text: still a chat line.
    assert parse_training_line(1, json.dumps({"instruction": "a", "input": "b", "output": "c"}).encode())[0] == "chat"


# -- whole files ------------------------------------------------------------------------------------

def test_a_preference_file_is_stored_and_says_so(deps: DatasetDeps) -> None:
    row = service.store_upload(deps, "acme", "prefs.jsonl", "fine-tune", [jsonl(*(pair(i) for i in range(3)))])
    assert row.example_count == 3
    assert service.to_openai(row)["validation"]["format"] == "preference"  # type: ignore[index]
    assert service.to_proto(row).format == "preference"
    chat = service.store_upload(deps, "acme", "chat.jsonl", "fine-tune", [jsonl(CHAT)])
    assert service.to_openai(chat)["validation"]["format"] == "chat"  # type: ignore[index]
    assert service.to_proto(chat).format == "chat"

    read = [json.loads(x) for x in service.read_as_openai_chat(deps, "acme", row.id)]
    expected = pair(1)
    assert read[1] == expected  # the pairs reach the trainer intact, tools and all


def test_bad_lines_are_rejected_naming_line_and_field(deps: DatasetDeps) -> None:
    bad = pair(1, preferred_output=[{"role": "assistant", "content": ""}])
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "prefs.jsonl", "fine-tune", [jsonl(pair(0), bad, pair(2)) + b"{oops\n"])
    assert err.value.param == "file" and err.value.code == "invalid_file_format"
    assert "line 2: preferred_output[0].content: missing or empty" in err.value.message
    assert "line 4: line: invalid JSON" in err.value.message


def test_lenient_upload_drops_bad_pairs(deps: DatasetDeps) -> None:
    bad = pair(1, non_preferred_output=[])
    row = service.store_upload(deps, "acme", "prefs.jsonl", "fine-tune", [jsonl(pair(0), bad, pair(2))],
                               policy="lenient")
    assert (row.example_count, row.invalid_lines) == (2, 1)
    assert [json.loads(x)["preferred_output"][0]["content"] for x in service.read_as_openai_chat(
        deps, "acme", row.id)] == [pair(0)["preferred_output"][0]["content"], pair(2)["preferred_output"][0]["content"]]


@pytest.mark.parametrize(("lines", "odd", "kind", "first"), [
    ((CHAT, CHAT, pair(0), CHAT), 3, "preference", "chat"),
    ((pair(0), pair(1), CHAT), 3, "chat", "preference"),
])
def test_a_file_mixing_chat_and_preference_lines_is_refused(deps: DatasetDeps, lines: tuple[Any, ...], odd: int,
                                                            kind: str, first: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        service.store_upload(deps, "acme", "mixed.jsonl", "fine-tune", [jsonl(*lines)])
    assert f"line {odd}: line: a {kind} line in a {first} file (line 1 is a {first} line)" in err.value.message
    assert "1 invalid line(s)" in err.value.message


def test_blank_and_undecodable_first_lines_do_not_decide_the_kind(deps: DatasetDeps) -> None:
    row = service.store_upload(deps, "acme", "prefs.jsonl", "fine-tune", [b"\n{nope\n" + jsonl(pair(0), pair(1))],
                               policy="lenient")
    assert service.to_openai(row)["validation"]["format"] == "preference"  # type: ignore[index]
    assert (row.example_count, row.invalid_lines) == (2, 1)


# -- what the trainer asks of a preference file -----------------------------------------------------

def test_check_tokens_counts_the_prompt_with_the_longer_output(deps: DatasetDeps) -> None:
    long_bad = pair(0, non_preferred_output=[{"role": "assistant", "content": "Run hard. " * 40}])
    row = service.store_upload(deps, "acme", "prefs.jsonl", "fine-tune", [jsonl(pair(1), long_bad)])
    counted = versions.check_tokens(deps, "acme", row.id, 10_000, "SmolLM2-135M-Instruct")
    assert (counted.examples, counted.over_limit) == (2, 0)
    short = versions.check_tokens(deps, "acme", row.id, 120, "SmolLM2-135M-Instruct")
    assert short.over_limit == 1
    assert (short.issues[0].line, short.issues[0].field) == (2, "non_preferred_output")
    assert short.max_tokens == counted.max_tokens > 120


def test_eligibility_judges_a_pair_by_its_preferred_output(deps: DatasetDeps) -> None:
    terse = pair(2, preferred_output=[{"role": "assistant", "content": "No"}])
    row = service.store_upload(deps, "acme", "prefs.jsonl", "fine-tune", [jsonl(pair(0), pair(0), pair(1), terse)])
    found = versions.check_eligibility(deps, "acme", row.id)
    assert (found.examples, found.usable) == (4, 2)
    assert dict(found.unusable) == {"duplicate": 1, "too_short": 1}


def test_a_dataset_version_is_not_built_from_a_preference_file(deps: DatasetDeps) -> None:
    row = service.store_upload(deps, "acme", "prefs.jsonl", "fine-tune", [jsonl(pair(0), pair(1))])
    with pytest.raises(InvalidArgument) as err:
        versions.create_version(deps, "acme", CreateDatasetVersion(name="prefs", files=[row.id]))
    assert err.value.param == "files" and "preference pairs" in err.value.message
