"""The checks every completion request passes before it is routed, tried with hostile values: too many
choices, non-positive or non-integer max_tokens, a seed beyond 64 bits, NUL characters that a
database could not keep (model, user, metadata), and bodies nested deeper than the limit or too deep
for the JSON parser itself — each a 400 naming the field, never a 500."""

from __future__ import annotations

import json

import pytest

from coachforge_inference.validation import CHAT, check_metadata, nesting_depth, parse_body, validate
from coachforge_shared.errors import InvalidArgument

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 0}, "n"), ({"n": 17}, "n"), ({"n": True}, "n"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"seed": 2**80}, "seed"), ({"seed": "1"}, "seed"),
    ({"model": "m\x00"}, "model"), ({"user": "u\x00"}, "user"),
])
def test_bad_fields_are_refused_naming_them(extra: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        validate(CHAT, {**OK, **extra})
    assert refused.value.param == param


def test_good_requests_pass() -> None:
    assert validate(CHAT, {**OK, "n": 16, "max_tokens": 5, "seed": -(2**63), "user": "u"}) == "m"
    assert validate(CHAT, {**OK, "n": 20}, max_n=20) == "m"


def test_metadata_with_nul_is_refused() -> None:
    for metadata in ({"k\x00": "v"}, {"k": "v\x00"}):
        with pytest.raises(InvalidArgument) as refused:
            check_metadata(metadata)
        assert refused.value.param == "metadata"


def test_nesting_is_limited_also_beyond_what_the_parser_can_read() -> None:
    assert nesting_depth({"a": [1, {"b": []}]}, 32) == 4 and nesting_depth("x", 32) == 0
    assert parse_body(json.dumps({**OK, "tools": [[[[1]]]]}).encode(), 32)["model"] == "m"
    deep = json.dumps({**OK, "tools": json.loads("[" * 40 + "]" * 40)}).encode()
    too_deep_for_parser = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for raw in (deep, too_deep_for_parser):
        with pytest.raises(InvalidArgument) as refused:
            parse_body(raw, 32)
        assert refused.value.param == "body" and refused.value.code == "nesting_too_deep"
    for raw, message in ((b"[1]", "JSON object"), (b"{nope", "not valid JSON")):
        with pytest.raises(InvalidArgument, match=message):
            parse_body(raw, 32)
