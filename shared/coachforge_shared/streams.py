"""Helpers for byte streams (uploaded files, gRPC chunk streams)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class TooLong(bytes):
    """A line longer than the ``max_line_bytes`` of :func:`iter_lines`: its first ``max_line_bytes``
    bytes (the rest was never kept); :attr:`length` is the line's real length in bytes (without its
    newline). Tell it from a line with ``isinstance(line, TooLong)``."""

    length: int

    def __new__(cls, head: bytes, length: int) -> TooLong:
        line = super().__new__(cls, head)
        line.length = length
        return line

    def __repr__(self) -> str:
        return f"TooLong(length={self.length})"


def iter_lines(chunks: Iterable[bytes], max_line_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line without ``\\n`` and trailing ``\\r``) from a byte stream, as
    ``bytes.split(b"\\n")`` cuts it (a last line without a newline is yielded when not empty).

    Each chunk is searched once (a line sent in many chunks is joined once, when it ends), so the
    work is linear in the stream's size. With ``max_line_bytes``, a line longer than that (counted
    without its newline) is never held whole: at most ``max_line_bytes`` of it are kept, the rest
    is skipped up to the next newline, and it is yielded as a :class:`TooLong` under its own line
    number. Without it (the default, for files validated when they were stored) one line is held
    in memory at a time, however long."""
    if max_line_bytes is not None and max_line_bytes < 0:
        raise ValueError("max_line_bytes must be >= 0")
    cap = max_line_bytes
    pieces: list[bytes] = []  # the current line's kept parts
    kept = 0  # bytes in pieces
    length = 0  # the current line's length so far (kept or skipped)
    line_no = 0

    def finish() -> bytes:
        line = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if cap is not None and length > cap:
            return TooLong(line, length)
        return line.rstrip(b"\r")

    for chunk in chunks:
        start = 0
        size = len(chunk)
        while start <= size:
            end = chunk.find(b"\n", start)
            stop = size if end < 0 else end
            if stop > start:
                n = stop - start
                length += n
                take = n if cap is None else min(n, cap - kept)  # past the cap nothing more is kept
                if take > 0:
                    pieces.append(chunk if take == size else chunk[start:start + take])
                    kept += take
            if end < 0:
                break
            line_no += 1
            yield line_no, finish()
            pieces, kept, length = [], 0, 0
            start = end + 1
    if length:
        yield line_no + 1, finish()
