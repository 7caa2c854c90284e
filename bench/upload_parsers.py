"""Upload parsers on pathological inputs, at size n and 4n: the time of each and their ratio
(about 4 means linear; about 16 quadratic).

* ``iter_lines``: one line of n bytes arriving in 1 KiB chunks, read whole (no cap) and with a
  1 MiB ``max_line_bytes`` cap (the dataset service's way with uploads);
* ``parse_line`` of a chatml line whose text is n/17 ``<|im_start|>user\\n`` and no ``<|im_end|>``.

``--former`` also times the implementations these replaced (re-scanning the joined buffer for each
chunk; the ``(.*?)<|im_end|>`` pattern), at a smaller n since they are quadratic.

    .venv/bin/python bench/upload_parsers.py [--n 4000000] [--former]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator

from coachforge_dataset.pipeline import parse_line
from coachforge_shared.streams import iter_lines

CHUNK = 1024


def chunks(n: int) -> Iterator[bytes]:
    piece = b"a" * CHUNK
    for _ in range(n // CHUNK):
        yield piece
    yield b"\n"


def chatml_line(n: int) -> bytes:
    return json.dumps({"text": "<|im_start|>user\n" * (n // 17)}).encode()


def former_iter_lines(parts: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    buf = b""
    line_no = 0
    for chunk in parts:
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for line in complete:
            line_no += 1
            yield line_no, line.rstrip(b"\r")
    if buf:
        yield line_no + 1, buf.rstrip(b"\r")


FORMER_CHATML_TURN = re.compile(r"<\|im_start\|>([^\n<]*)\n(.*?)<\|im_end\|>\n?", re.DOTALL)


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name: str, n: int, work: Callable[[int], object], runs: int = 3) -> None:
    small, large = best_of(runs, lambda: work(n)), best_of(runs, lambda: work(4 * n))
    print(f"{name:<44} n={n:>9}: {small * 1000:9.1f} ms   4n: {large * 1000:9.1f} ms   ratio {large / small:5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4_000_000, help="bytes of the smaller input (default 4 MB)")
    parser.add_argument("--former", action="store_true", help="also time the former (quadratic) implementations")
    args = parser.parse_args()
    n = args.n
    report("iter_lines, one long line, no cap", n, lambda m: list(iter_lines(chunks(m))))
    report("iter_lines, one long line, 1 MiB cap", n, lambda m: list(iter_lines(chunks(m), max_line_bytes=1 << 20)))
    report("parse_line, chatml, unterminated starts", n, lambda m: parse_line(1, chatml_line(m)))
    if args.former:
        small = max(n // 40, 17 * 64)
        report("former iter_lines, one long line", small, lambda m: list(former_iter_lines(chunks(m))), runs=1)
        report("former chatml pattern, unterminated starts", small // 10,
               lambda m: list(FORMER_CHATML_TURN.finditer(json.loads(chatml_line(m))["text"])), runs=1)


if __name__ == "__main__":
    main()
