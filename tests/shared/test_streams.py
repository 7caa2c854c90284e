"""``iter_lines``: any chunking of a stream gives the lines ``bytes.split(b"\\n")`` gives, with their
numbers; with ``max_line_bytes``, exactly the longer lines come back as ``TooLong`` (never held
whole), and the lines after them keep their numbers."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coachforge_shared.streams import TooLong, iter_lines

# Streams made of short pieces that often hold newlines, carriage returns and long runs.
streams = st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\r\n", b"x" * 17, b"\n\n", b"{}", b" "]),
                   max_size=60).map(b"".join) | st.binary(max_size=300)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)] + [b""]  # an empty chunk too


def split_lines(data: bytes) -> list[bytes]:
    """The raw lines (``\\r`` kept) of ``data``: split on ``\\n``, the empty piece after a last newline left out."""
    lines = data.split(b"\n")
    return lines[:-1] if lines[-1] == b"" else lines


@settings(max_examples=300, deadline=None)
@given(data=streams, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30),
       cap=st.none() | st.integers(min_value=0, max_value=20))
def test_any_chunking_gives_the_split_lines_and_marks_exactly_the_long_ones(data: bytes, cuts: list[int],
                                                                           cap: int | None) -> None:
    got = list(iter_lines(chunked(data, cuts), max_line_bytes=cap))
    raw = split_lines(data)
    assert [n for n, _ in got] == list(range(1, len(raw) + 1))
    for (_, line), expected in zip(got, raw, strict=True):
        if cap is not None and len(expected) > cap:
            assert isinstance(line, TooLong)
            assert line.length == len(expected) and bytes(line) == expected[:cap]
        else:
            assert not isinstance(line, TooLong)
            assert line == expected.rstrip(b"\r")


def test_a_long_line_in_many_chunks_is_never_held_whole() -> None:
    piece = b"y" * 65536
    count = 256  # a 16 MiB line, then two short ones

    def stream() -> Iterator[bytes]:
        for _ in range(count):
            yield bytes(piece)  # a fresh chunk each time, as a socket gives them
        yield b"\nshort\r\nlast"

    tracemalloc.start()
    try:
        lines = list(iter_lines(stream(), max_line_bytes=1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    first = lines[0][1]
    assert isinstance(first, TooLong) and first.length == len(piece) * count and len(first) == 1000
    assert lines[1:] == [(2, b"short"), (3, b"last")]
    assert peak < 2 * 1024**2  # a few chunks and the kept head, not the 16 MiB line


def test_without_a_cap_a_long_line_is_joined_once_and_whole() -> None:
    lines = list(iter_lines(iter([b"ab"] * 5000 + [b"\r\n", b"\n", b"z"])))
    assert lines == [(1, b"ab" * 5000), (2, b""), (3, b"z")]


def test_the_cap_counts_carriage_returns_and_must_not_be_negative() -> None:
    assert list(iter_lines([b"abc\r\nabcd\n"], max_line_bytes=4)) == [(1, b"abc"), (2, b"abcd")]
    [(_, line)] = list(iter_lines([b"abcd\r\n"], max_line_bytes=4))
    assert isinstance(line, TooLong) and line.length == 5
    with pytest.raises(ValueError):
        list(iter_lines([b"a"], max_line_bytes=-1))
