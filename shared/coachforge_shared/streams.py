"""Helpers for byte streams (uploaded files, gRPC chunk streams)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def iter_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line without newline) from a byte stream, keeping one line in memory."""
    buf = b""
    line_no = 0
    for chunk in chunks:
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for line in complete:
            line_no += 1
            yield line_no, line.rstrip(b"\r")
    if buf:
        yield line_no + 1, buf.rstrip(b"\r")
