"""Batch kernels behind :mod:`.run`: per-line analysis (parse, validate, hash, MinHash) of a
chunk of lines, and vectorised exact / near duplicate detection over compact arrays.

They compute exactly what the list-based stages of :mod:`.clean` compute (same content hashes,
the same datasketch MinHash values and LSH bands, the same first-occurrence-wins order), but
keep only fixed-size numbers per example in memory so that a million examples fit in a few
hundred MB, and let the per-line work run in several processes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
from datasketch import MinHash, MinHashLSH

from .clean import LSH_MAX_THRESHOLD, MINHASH_SEED, NUM_PERM, SHINGLE_WORDS, SHORT_SHINGLE_WORDS, SHORT_TEXT_WORDS
from .export import to_openai
from .formats import FORMATS, UNKNOWN, Example, LineIssue, parse_line
from .split import bucket

FORMAT_CODES: Final[tuple[str, ...]] = (*FORMATS, UNKNOWN)
MINHASH_BATCH: Final = 256
"""Examples whose shingles are permuted in one numpy operation (bounds the temporary arrays)."""

_FMIX_M1: Final = np.uint32(0x85EBCA6B)
_FMIX_M2: Final = np.uint32(0xC2B2AE35)


@lru_cache(maxsize=4)
def permutations(num_perm: int = NUM_PERM, seed: int = MINHASH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters ``(a, b)`` for ``MinHash(num_perm, seed)``."""
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


@lru_cache(maxsize=8)
def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """``(bands, rows)`` datasketch's LSH picks for the near-duplicate threshold."""
    lsh = MinHashLSH(threshold=min(threshold, LSH_MAX_THRESHOLD), num_perm=num_perm)
    return lsh.b, lsh.r


def _shingle_bytes(text: str) -> list[bytes]:
    """:func:`.clean.shingles` of a normalised text, sorted, as UTF-8 (what ``minhash`` feeds datasketch)."""
    words = text.split()
    size = SHINGLE_WORDS if len(words) >= SHORT_TEXT_WORDS else SHORT_SHINGLE_WORDS
    if len(words) < size:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)]


def _minhash_numpy(texts: Sequence[str], num_perm: int, seed: int) -> np.ndarray:
    a, b = permutations(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    sha1 = hashlib.sha1
    for start in range(0, len(texts), MINHASH_BATCH):
        batch = texts[start : start + MINHASH_BATCH]
        digests: list[bytes] = []
        offsets: list[int] = []
        for text in batch:
            offsets.append(len(digests))
            # Duplicated shingles do not change a minimum: datasketch sees the set, we may see repeats.
            digests.extend(sha1(s).digest()[:4] for s in _shingle_bytes(text))
        hv = np.frombuffer(b"".join(digests), dtype="<u4").astype(np.uint32)
        hv = hv ^ (hv >> np.uint32(16))
        hv = hv * _FMIX_M1
        hv = hv ^ (hv >> np.uint32(13))
        hv = hv * _FMIX_M2
        hv = hv ^ (hv >> np.uint32(16))
        phv = hv[:, None] * a + b
        out[start : start + len(batch)] = np.minimum.reduceat(phv, np.asarray(offsets, dtype=np.intp), axis=0)
    return out


def minhash_signatures(texts: Sequence[str], num_perm: int = NUM_PERM, seed: int = MINHASH_SEED) -> np.ndarray:
    """datasketch ``MinHash`` (scheme affine32, sha1_hash32) hash values of each text's shingles,
    one row of ``num_perm`` uint32 per text, bit for bit what :func:`.clean.minhash` gives.

    ``texts`` must be normalised (:func:`normalized`: words separated by single spaces). With
    numba the shingling, SHA-1 and permutations run compiled (:mod:`._minhash_jit`); without it,
    in numpy."""
    if _jit is None or not texts:
        return _minhash_numpy(texts, num_perm, seed)
    a, b = permutations(num_perm, seed)
    encoded = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    ends = np.cumsum(lengths)
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    _jit.signatures(buf, ends - lengths, ends, a.astype(np.uint64), b.astype(np.uint64), out)
    return out


try:  # pragma: no branch
    from . import _minhash_jit as _jit
except ImportError:  # numba missing: the numpy path gives the same values, slower
    _jit = None  # type: ignore[assignment]


_BAND_MULTIPLIERS: Final = (np.random.RandomState(20261122).randint(1, 2**62, size=NUM_PERM, dtype=np.uint64)
                            | np.uint64(1))


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """A 64-bit key per (example, band); equal bands give equal keys (candidates are re-checked exactly)."""
    sig = signatures.astype(np.uint64)
    keys = np.empty((len(signatures), bands), dtype=np.uint64)
    for band in range(bands):
        part = sig[:, band * rows : (band + 1) * rows] * _BAND_MULTIPLIERS[band * rows : (band + 1) * rows]
        keys[:, band] = part.sum(axis=1, dtype=np.uint64) ^ np.uint64(band)
    return keys


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of input lines and what to compute for them (picklable, for worker processes)."""

    first_line: int
    lines: list[bytes]
    format: str | None
    max_tokens: int | None
    count_tokens: Callable[[str], int]
    dedupe: bool
    near_dup_threshold: float
    validation_fraction: float
    seed: int


@dataclass
class ChunkResult:
    """Per chunk: counts, issues, and for each valid example its OpenAI export line, format code,
    content digest (sha256 of the normalised text), split decision, and MinHash data."""

    lines: int
    blank: int
    invalid: int
    issues: list[LineIssue]
    records: bytes
    """The valid examples' export lines, each followed by a newline."""
    formats: bytes
    digests: bytes
    validation: bytes
    has_conversation: bytes
    signatures: np.ndarray | None
    bands: np.ndarray | None


def normalized(example: Example) -> str:
    """:func:`.clean.normalized_text` (kept in one place)."""
    joined = "\n".join(f"{m.role}: {m.content}" for m in example.messages)
    return " ".join(joined.lower().split())


def analyse_chunk(task: ChunkTask) -> ChunkResult:
    """Parse and validate every line of the chunk, and hash the valid examples."""
    from .stats import example_tokens

    issues: list[LineIssue] = []
    records: list[bytes] = []
    formats = bytearray()
    digests: list[bytes] = []
    validation = bytearray()
    has_conv = bytearray()
    texts: list[str] = []
    blank = invalid = 0
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for line_no, raw in enumerate(task.lines, start=task.first_line):
        if not raw.strip():
            blank += 1
            continue
        example, line_issues = parse_line(line_no, raw, task.format)
        if example is not None and task.max_tokens is not None:
            n = example_tokens(example, task.count_tokens)
            if n > task.max_tokens:
                line_issues.append(LineIssue(line_no, "messages", f"{n} tokens, over the limit of {task.max_tokens}"))
                example = None
        if line_issues:
            invalid += 1
            issues.extend(line_issues)
            continue
        if example is None:  # pragma: no cover - parse_line gives an example or issues
            continue
        text = normalized(example)
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        records.append(dumps(to_openai(example)).encode("utf-8"))
        formats.append(FORMAT_CODES.index(example.source_format))
        digests.append(digest)
        if example.conversation_id is not None:
            key = f"conv:{example.conversation_id}"
            has_conv.append(1)
        else:
            key = f"hash:{digest.hex()}"
            has_conv.append(0)
        validation.append(bucket(task.seed, key) < task.validation_fraction)
        if task.dedupe:
            texts.append(text)
    signatures = bands = None
    if task.dedupe:
        signatures = minhash_signatures(texts)
        bands = band_keys(signatures, *lsh_bands(task.near_dup_threshold))
    return ChunkResult(len(task.lines), blank, invalid, issues, b"".join(r + b"\n" for r in records),
                       bytes(formats), b"".join(digests),
                       bytes(validation), bytes(has_conv), signatures, bands)


def first_occurrences(digests: bytes) -> np.ndarray:
    """For each 32-byte digest, the index of its first occurrence (itself when it is the first)."""
    n = len(digests) // 32
    if n == 0:
        return np.empty(0, dtype=np.int64)
    full = np.frombuffer(digests, dtype="V32")
    prefix = np.frombuffer(digests, dtype=np.uint64).reshape(n, 4)[:, 0]
    order = np.argsort(prefix, kind="stable")
    ordered = prefix[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    run_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    first = np.empty(n, dtype=np.int64)
    first[order] = order[starts[run_of]]
    clash = full != full[first]
    if clash.any():  # two different digests share 64 bits: settle those runs exactly
        run_index = np.empty(n, dtype=np.int64)
        run_index[order] = run_of
        for run in np.unique(run_index[clash]):
            members = np.sort(order[starts[run] : (starts[run + 1] if run + 1 < len(starts) else n)])
            seen: dict[bytes, int] = {}
            for i in members:
                first[i] = seen.setdefault(bytes(full[i]), int(i))
    return first


def near_duplicates(bands: np.ndarray, signature: Callable[[int], np.ndarray], threshold: float,
                    rows: int) -> dict[int, tuple[int, float]]:
    """``{index: (earliest kept match, similarity)}`` for every near duplicate among the examples.

    Same decisions as :func:`.clean.dedupe_near`: examples are taken in order; one is dropped
    when an earlier *kept* example shares an LSH band with it and their MinHash estimate is at
    least ``threshold``.  Only examples sharing a band key with an earlier one are examined.
    """
    n, nbands = bands.shape
    if n == 0:
        return {}
    orders, positions, run_starts = [], [], []
    suspect = np.zeros(n, dtype=bool)
    for band in range(nbands):
        key = bands[:, band]
        order = np.argsort(key, kind="stable").astype(np.int32)
        ordered = key[order]
        new_run = np.r_[True, ordered[1:] != ordered[:-1]]
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(n, dtype=np.int32), np.int32(0)))
        position = np.empty(n, dtype=np.int32)
        position[order] = np.arange(n, dtype=np.int32)
        del ordered
        suspect[order[~new_run]] = True
        orders.append(order)
        positions.append(position)
        run_starts.append(run_start)
    kept = np.ones(n, dtype=bool)
    removed: dict[int, tuple[int, float]] = {}
    for j in np.flatnonzero(suspect):
        candidates: set[int] = set()
        for band in range(nbands):
            p = positions[band][j]
            start = run_starts[band][p]
            if start < p:
                members = orders[band][start:p]
                candidates.update(members[kept[members]].tolist())
        if not candidates:
            continue
        mine = signature(int(j))
        size = len(mine)
        best: tuple[int, float] | None = None
        for i in sorted(candidates):
            other = signature(i)
            if not any(np.array_equal(mine[b * rows : (b + 1) * rows], other[b * rows : (b + 1) * rows])
                       for b in range(nbands)):
                continue  # the 64-bit band keys collided; datasketch would not propose it
            similarity = float(np.float64(np.count_nonzero(mine == other)) / np.float64(size))
            if similarity >= threshold:
                best = (i, similarity)
                break
        if best is not None:
            kept[j] = False
            removed[int(j)] = best
    return removed
