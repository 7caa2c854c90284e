"""Fuzzing the upload parsers the way an attacker would: arbitrary bytes and mutated valid lines of
every format never make the line parser or format detection raise (only report issues); the
chatml scanner finds exactly the turns the former regular expression found; and the real gRPC
``UploadFileStream``, fed valid and garbage data cut into random chunks, answers OK or
INVALID_ARGUMENT / RESOURCE_EXHAUSTED as an independent reading of the same bytes predicts, never
INTERNAL or UNKNOWN. Example counts are bounded so that the file runs in well under a minute."""

from __future__ import annotations

import itertools
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge_dataset import grpc as dataset_grpc
from coachforge_dataset.pipeline import FORMATS, detect_file_format, detect_format, parse_line
from coachforge_dataset.pipeline.formats import _chatml_turns
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.auth import Authenticator, create_tenant
from coachforge_shared.db import Database
from coachforge_shared.grpc_server import GrpcServerThread, InternalChannel

MOD = {"operations": [{"op": "reduce_intensity", "workout_id": "w3", "new_zone": 2, "reason": "TSB -24",
                       "confidence": 0.8}], "message": "Easy today."}
VALID_LINES = [json.dumps(obj).encode() for obj in (
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    {"instruction": "Do it", "input": "ctx", "output": "done"},
    {"text": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>"},
    {"athlete_context": "Today: TSB -24.", "question": "Run?", "modification": MOD},
)]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid line of some format with a few random edits: bytes replaced, inserted, deleted,
    slices repeated, the line cut short."""
    line = bytearray(draw(st.sampled_from(VALID_LINES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(line)))
        edit = draw(st.sampled_from(["replace", "insert", "delete", "repeat", "cut"]))
        if edit == "replace" and at < len(line):
            line[at] = draw(st.integers(min_value=0, max_value=255))
        elif edit == "insert":
            line[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"<|im_start|>", b"<|im_end|>", b"\\n", b'"', b"[", b"{", b"99999999999999999999", b"\\ud800"]))
        elif edit == "delete":
            del line[at:at + draw(st.integers(min_value=1, max_value=6))]
        elif edit == "repeat":
            line[at:at] = line[at:at + draw(st.integers(min_value=1, max_value=12))] * 3
        else:
            del line[at:]
    return bytes(line)


lines = st.one_of(st.binary(max_size=200), mutated(), st.sampled_from(VALID_LINES))


@settings(max_examples=400, deadline=None)
@given(raw=lines, fmt=st.sampled_from([None, *FORMATS]))
def test_parse_line_never_raises_on_any_bytes_or_mutated_lines(raw: bytes, fmt: str | None) -> None:
    example, issues = parse_line(7, raw.replace(b"\n", b" "), fmt)
    assert (example is None) == bool(issues)
    assert all(i.line == 7 and i.field and i.reason for i in issues)


@settings(max_examples=100, deadline=None)
@given(body=st.lists(lines, max_size=12), max_lines=st.integers(min_value=1, max_value=5))
def test_format_detection_never_raises(body: list[bytes], max_lines: int) -> None:
    found = detect_file_format(body, max_lines=max_lines)
    assert found is None or found in FORMATS
    for raw in body:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            assert detect_format(obj) in (*FORMATS, "unknown")


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper than 64 levels"),
    (b'{"messages": ' + b"[" * 70 + b"]" * 70 + b"}", "nested deeper than 64 levels"),
    (b'{"instruction": "x", "output": ' + b"9" * 5000 + b"}", "invalid JSON"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}',
     "lone UTF-16 surrogate"),
])
def test_hostile_json_is_an_issue_not_a_crash(raw: bytes, reason: str) -> None:
    example, issues = parse_line(3, raw)
    assert example is None and [(i.line, i.field) for i in issues] == [(3, "line")]
    assert reason in issues[0].reason


# The pattern the chatml reader used before its linear scanner (quadratic on many unterminated starts).
FORMER_CHATML_TURN = re.compile(r"<\|im_start\|>([^\n<]*)\n(.*?)<\|im_end\|>\n?", re.DOTALL)
chatml_texts = st.lists(st.sampled_from(["<|im_start|>", "<|im_end|>", "\n", "<", "user", "assistant", "x y",
                                         " ", "|", "<|im_"]), max_size=40).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=chatml_texts)
def test_chatml_scanner_finds_what_the_former_pattern_found(text: str) -> None:
    expected = [(m.start(), m.end(), m.group(1), m.group(2)) for m in FORMER_CHATML_TURN.finditer(text)]
    assert list(_chatml_turns(text)) == expected


def test_many_unterminated_chatml_starts_are_one_issue() -> None:
    text = "<|im_start|>user\n" * 20_000
    example, issues = parse_line(1, json.dumps({"text": text}).encode())
    assert example is None
    assert [(i.field, i.reason) for i in issues] == [("text", "unterminated or malformed chatml at character 0")]


# -- the gRPC upload stream ---------------------------------------------------------------------

MAX_UPLOAD = 4096
MAX_LINE = 256


@pytest.fixture
def stub(db: Database, tmp_path: Path) -> Iterator[tuple[dataset_pb2_grpc.DatasetServiceStub, InternalChannel]]:
    create_tenant(db, "acme")
    deps = DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target="", max_upload_bytes=MAX_UPLOAD,
                                                       max_line_bytes=MAX_LINE, chunk_bytes=64),
                       files_dir=tmp_path / "files", models_dir=tmp_path / "models")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = GrpcServerThread([dataset_grpc.registration(deps)], Authenticator(db, "internal-test-token"),
                              f"127.0.0.1:{port}").start()
    channel = InternalChannel(f"127.0.0.1:{port}", "internal-test-token")
    try:
        yield dataset_pb2_grpc.DatasetServiceStub(channel.channel), channel
    finally:
        channel.close()
        server.stop()


def predicted(content: bytes, policy: str) -> tuple[str, int]:
    """What the upload must answer, read independently of the service: (status, examples)."""
    if len(content) > MAX_UPLOAD:
        return "RESOURCE_EXHAUSTED", 0
    raw_lines = content.split(b"\n")
    if raw_lines[-1] == b"":
        raw_lines.pop()
    examples = invalid = 0
    for number, raw in enumerate(raw_lines, start=1):
        line = raw.rstrip(b"\r")
        if len(raw) > MAX_LINE:
            invalid += 1
        elif line.strip():
            if parse_line(number, line)[0] is None:
                invalid += 1
            else:
                examples += 1
    if examples == 0 or (invalid and policy == "strict"):
        return "INVALID_ARGUMENT", 0
    return "OK", examples


upload_lines = st.one_of(st.sampled_from(VALID_LINES), mutated(), st.binary(max_size=60),
                         st.integers(min_value=MAX_LINE - 2, max_value=MAX_LINE * 3).map(lambda n: b"x" * n),
                         st.just(b""), st.just(b"\r"))
contents = st.one_of(st.lists(upload_lines, max_size=25).map(b"\n".join),
                     st.lists(upload_lines, max_size=25).map(lambda ls: b"\r\n".join(ls) + b"\n"),
                     st.binary(max_size=MAX_UPLOAD + 200),
                     st.builds(lambda a, b: a + b, st.lists(st.sampled_from(VALID_LINES), min_size=20, max_size=50)
                               .map(b"\n".join), st.binary(max_size=40)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(content=contents, cuts=st.lists(st.integers(min_value=0, max_value=MAX_UPLOAD + 300), max_size=12),
       policy=st.sampled_from(["strict", "lenient"]))
def test_upload_stream_of_any_chunks_answers_as_predicted_never_internal(
        stub: tuple[dataset_pb2_grpc.DatasetServiceStub, InternalChannel], content: bytes, cuts: list[int],
        policy: str) -> None:
    client, channel = stub
    points = sorted({0, len(content), *(c % (len(content) + 1) for c in cuts)})
    pieces = [content[a:b] for a, b in itertools.pairwise(points)]
    messages = [dataset_pb2.UploadFileChunk(filename="fuzz.jsonl", policy=policy, data=pieces[0] if pieces else b"")]
    messages += [dataset_pb2.UploadFileChunk(data=p) for p in pieces[1:]]
    status, examples = predicted(content, policy)
    try:
        stored = client.UploadFileStream(iter(messages), metadata=channel.metadata("acme"), timeout=30)
    except grpc.RpcError as err:
        assert err.code().name == status, (err.code(), err.details())
        return
    assert status == "OK" and stored.example_count == examples
