"""Property-based tests: arbitrary bytes and malformed JSON never crash the validator, and every
rejection names a line (and a field and a reason)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coachforge_dataset import service
from coachforge_dataset.pipeline import FORMATS, parse_line, run_pipeline
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import create_tenant
from coachforge_shared.db import Database
from coachforge_shared.errors import InvalidArgument

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["messages", "conversations", "role", "content", "from", "value", "instruction", "input",
                        "output", "text", "athlete_context", "question", "modification", "weight",
                        "conversation_id"])
# Objects built from the keys the formats use, with values of any JSON type: malformed records.
records = st.recursive(
    json_values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=16,
)
lines = st.one_of(
    st.binary(max_size=200),
    records.map(lambda v: json.dumps(v).encode()),
    records.map(lambda v: json.dumps(v).encode()[:-1]),  # truncated JSON
    st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=400, deadline=None)
@given(raw=lines, number=st.integers(min_value=1, max_value=10**6),
       fmt=st.sampled_from([None, *FORMATS]))
def test_parse_line_never_crashes_and_issues_name_the_line(raw: bytes, number: int, fmt: str | None) -> None:
    example, issues = parse_line(number, raw.replace(b"\n", b" "), fmt)
    assert (example is None) == bool(issues)
    for issue in issues:
        assert issue.line == number and issue.field and issue.reason


@settings(max_examples=60, deadline=None)
@given(body=st.lists(lines, min_size=1, max_size=12))
def test_pipeline_never_crashes(body: list[bytes]) -> None:
    flat = [b.replace(b"\n", b" ") for b in body]
    result = run_pipeline(flat, min_quality=0.3, scrub_pii=True)
    lineage = result.lineage
    assert lineage.source_lines == len(flat)
    assert lineage.valid + lineage.invalid + lineage.blank_lines == len(flat)
    assert {i.line for i in result.issues} <= set(range(1, len(flat) + 1))


@pytest.fixture
def deps(db: Database, tmp_path: Path) -> DatasetDeps:
    create_tenant(db, "acme")
    return DatasetDeps(db=db, settings=DatasetSettings(chunk_bytes=13, trainer_grpc_target=""),
                       files_dir=tmp_path / "files", models_dir=tmp_path / "models")


LINE_REF = re.compile(r"line (\d+): ")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=600) | st.lists(lines, max_size=10).map(lambda ls: b"\n".join(ls)),
       policy=st.sampled_from(["strict", "lenient"]))
def test_uploads_of_anything_are_stored_or_refused_naming_lines(deps: DatasetDeps, content: bytes, policy: str) -> None:
    chunks = [content[i:i + 13] for i in range(0, len(content), 13)]
    total_lines = content.count(b"\n") + (0 if content.endswith(b"\n") or not content else 1)
    try:
        row = service.store_upload(deps, "acme", "any.jsonl", "fine-tune", chunks, policy=policy)
    except InvalidArgument as err:
        assert err.param == "file"
        if "no training examples" not in err.message:
            named = [int(n) for n in LINE_REF.findall(err.message)]
            assert named and all(1 <= n <= total_lines for n in named)
        return
    assert row.example_count >= 1
    stored = b"".join(service.read_content(deps, "acme", row.id))
    if policy == "strict":
        assert stored == content and row.invalid_lines == 0
    else:
        issues = json.loads(b"".join(service.report_json_chunks(service.get_report(deps, "acme", file_id=row.id))))
        assert issues["issues_total"] == len(issues["issues"]) == row.issues_total
        assert all(1 <= i["line"] <= total_lines for i in issues["issues"])
        kept = stored.split(b"\n")
        assert all(parse_line(n, raw)[0] is not None for n, raw in enumerate(kept, 1) if raw.strip())
