"""The whole pipeline: parse -> validate -> token limit -> dedupe -> quality -> PII -> split -> stats.

Lines are parsed one at a time.  Without an explicit ``format`` the file format is detected
from the first :data:`.formats.DEFAULT_DETECT_LINES` recognisable lines, which are the only
raw lines held in memory together; every line is then converted with that format.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from . import fast
from .clean import (
    DEFAULT_NEAR_DUP_THRESHOLD,
    MAX_SAMPLES,
    NUM_PERM,
    PII_KINDS,
    RemovedSample,
    StageReport,
    content_hash,
    preview,
    quality,
    quality_reason,
    scrub_example,
)
from .export import to_openai_record
from .fast import FORMAT_CODES, ChunkResult, ChunkTask, analyse_chunk
from .formats import DEFAULT_DETECT_LINES, Example, LineIssue, Message, detect_file_format
from .split import DEFAULT_VALIDATION_FRACTION, bucket
from .stats import DatasetStats, StatsAccumulator, TokenCounter, compute_stats

Policy = Literal["strict", "lenient"]
DEFAULT_MIN_QUALITY: Final = 0.0
CHUNK_LINES: Final = 2000
"""Lines analysed per task (per worker process call)."""


def whitespace_tokens(text: str) -> int:
    """A tokenizer stand-in: the number of whitespace-separated words."""
    return len(text.split())


@dataclass(frozen=True)
class Lineage:
    """How many examples each stage saw and removed.

    ``source_lines`` counts every input line; ``blank_lines`` are skipped silently;
    ``invalid`` counts lines with at least one issue (token limit included); ``valid`` =
    ``source_lines - blank_lines - invalid``.  ``pii_replacements`` is per kind.
    """

    source_lines: int = 0
    blank_lines: int = 0
    invalid: int = 0
    valid: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    low_quality: int = 0
    pii_replacements: dict[str, int] = field(default_factory=dict)
    train: int = 0
    validation: int = 0


@dataclass(frozen=True)
class PipelineResult:
    """The pipeline's output.

    ``rejected`` is true under the strict policy when any line had an issue; then ``train`` and
    ``validation`` are empty and ``issues`` lists every problem of every line.
    """

    format: str | None
    rejected: bool
    train: list[Example]
    validation: list[Example]
    issues: list[LineIssue]
    lineage: Lineage
    reports: list[StageReport]
    stats: DatasetStats


@dataclass(frozen=True)
class PipelineFiles:
    """:func:`run_pipeline_to_files`'s output: like :class:`PipelineResult`, with the splits
    written as OpenAI chat JSONL to ``train_path`` and ``validation_path`` instead of returned."""

    format: str | None
    rejected: bool
    issues: list[LineIssue]
    lineage: Lineage
    reports: list[StageReport]
    stats: DatasetStats
    train_path: Path
    validation_path: Path


def _detect(lines: Iterator[bytes], max_lines: int) -> tuple[str | None, list[bytes]]:
    """Read lines until ``max_lines`` recognisable ones are seen; return the format and the buffer."""
    buffered: list[bytes] = []
    recognised = 0
    for raw in lines:
        buffered.append(raw)
        if raw.strip():
            recognised += 1
            if recognised >= max_lines:
                break
    return detect_file_format(buffered, max_lines), buffered


def _chunks(lines: Iterator[bytes], size: int) -> Iterator[tuple[int, list[bytes]]]:
    first = 1
    while chunk := list(islice(lines, size)):
        yield first, chunk
        first += len(chunk)


def _map_ordered(tasks: Iterator[ChunkTask], workers: int) -> Iterator[ChunkResult]:
    """``analyse_chunk`` over ``tasks`` in order; with ``workers > 1`` in that many processes, with
    at most two chunks per worker read ahead (so the input is never read into memory whole)."""
    first = next(tasks, None)
    if first is None:
        return
    second = next(tasks, None)
    if workers <= 1 or second is None:
        yield analyse_chunk(first)
        if second is not None:
            yield analyse_chunk(second)
            yield from map(analyse_chunk, tasks)
        return
    ctx = mp.get_context("forkserver")
    with ctx.Pool(workers) as pool:
        window: deque[Any] = deque()
        for task in chain([first, second], tasks):
            window.append(pool.apply_async(analyse_chunk, (task,)))
            if len(window) >= 2 * workers:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()


@dataclass
class _Analysis:
    """Pass 1 over the input: counts and issues, plus per valid example (in input order) its
    OpenAI export line (spilled to ``records``), format code, digest, split bit and MinHash data."""

    format: str | None
    source: int = 0
    blank: int = 0
    invalid: int = 0
    issues: list[LineIssue] = field(default_factory=list)
    formats: bytearray = field(default_factory=bytearray)
    digests: bytearray = field(default_factory=bytearray)
    validation: bytearray = field(default_factory=bytearray)
    has_conversation: bytearray = field(default_factory=bytearray)
    bands: list[np.ndarray] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return len(self.formats)


def _analyse(lines: Iterable[bytes], work: Path, *, format: str | None, detect: str, dedupe: bool,
             near_dup_threshold: float, validation_fraction: float, seed: int, max_tokens: int | None,
             count_tokens: TokenCounter, workers: int) -> _Analysis:
    iterator = iter(lines)
    fmt = format
    head: list[bytes] = []
    if fmt is None and detect == "file":
        fmt, head = _detect(iterator, DEFAULT_DETECT_LINES)
    result = _Analysis(fmt)
    tasks = (ChunkTask(first, chunk, fmt, max_tokens, count_tokens, dedupe, near_dup_threshold,
                       validation_fraction, seed)
             for first, chunk in _chunks(chain(head, iterator), CHUNK_LINES))
    with (work / "records.jsonl").open("wb") as records, (work / "signatures.u32").open("wb") as signatures:
        for chunk in _map_ordered(tasks, workers):
            result.source += chunk.lines
            result.blank += chunk.blank
            result.invalid += chunk.invalid
            result.issues.extend(chunk.issues)
            records.write(chunk.records)
            result.formats += chunk.formats
            result.digests += chunk.digests
            result.validation += chunk.validation
            result.has_conversation += chunk.has_conversation
            if chunk.signatures is not None and chunk.bands is not None and len(chunk.bands):
                signatures.write(chunk.signatures.tobytes())
                result.bands.append(chunk.bands)
    head.clear()
    return result


def _decode(record: bytes, fmt_code: int) -> Example:
    obj = json.loads(record)
    messages = tuple(Message(m["role"], m["content"], m.get("weight")) for m in obj["messages"])
    return Example(messages, FORMAT_CODES[fmt_code], obj.get("conversation_id"))


def _run(lines: Iterable[bytes], work: Path, emit: Callable[[bool, Example | None, bytes], None], *,
         need_examples: bool, format: str | None, detect: str, policy: Policy, dedupe: bool,
         near_dup_threshold: float, min_quality: float, scrub_pii: bool, validation_fraction: float, seed: int,
         max_tokens: int | None, count_tokens: TokenCounter, stats: bool,
         workers: int) -> tuple[str | None, bool, list[LineIssue], Lineage, list[StageReport], DatasetStats]:
    """The pipeline over compact per-example state; ``emit(is_validation, example, record)`` gets
    every kept example in order (``example`` only when ``need_examples`` or a stage decoded it)."""
    if policy not in ("strict", "lenient"):
        raise ValueError("policy must be 'strict' or 'lenient'")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError("validation_fraction must be in [0, 1)")
    if dedupe and not 0.0 < near_dup_threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    a = _analyse(lines, work, format=format, detect=detect, dedupe=dedupe, near_dup_threshold=near_dup_threshold,
                 validation_fraction=validation_fraction, seed=seed, max_tokens=max_tokens,
                 count_tokens=count_tokens, workers=workers)
    valid = a.valid
    if policy == "strict" and a.issues:
        return (a.format, True, a.issues,
                Lineage(a.source, a.blank, a.invalid, valid, pii_replacements=dict.fromkeys(PII_KINDS, 0)),
                [], compute_stats([], count_tokens))

    # Exact duplicates: first occurrence wins (indices are positions among the valid examples).
    keep = np.ones(valid, dtype=bool)
    exact_samples: list[tuple[int, int, str]] = []  # (valid index, stage index, reason)
    near_samples: list[tuple[int, int, str]] = []
    if dedupe and valid:
        first = fast.first_occurrences(bytes(a.digests))
        duplicate = first != np.arange(valid)
        keep &= ~duplicate
        for i in np.flatnonzero(duplicate)[:MAX_SAMPLES]:
            exact_samples.append((int(i), int(i), f"exact duplicate of example {int(first[i])}"))
        unique = np.flatnonzero(~duplicate)
        bands, rows = fast.lsh_bands(near_dup_threshold)
        all_bands = np.concatenate(a.bands) if a.bands else np.empty((0, bands), dtype=np.uint64)
        a.bands.clear()
        row_bytes = NUM_PERM * 4
        # Signatures are read row by row (only examples sharing a band with an earlier one need
        # theirs), not mapped, so the file's pages never count towards this process's memory.
        with (work / "signatures.u32").open("rb") as sig_file:
            fd = sig_file.fileno()
            removed = fast.near_duplicates(
                all_bands[unique],
                lambda i: np.frombuffer(os.pread(fd, row_bytes, int(unique[i]) * row_bytes), dtype=np.uint32),
                near_dup_threshold, rows)
        del all_bands
        for j in sorted(removed)[:MAX_SAMPLES]:
            match, similarity = removed[j]
            near_samples.append((int(unique[j]), j, f"near duplicate of example {match} "
                                                    f"(similarity {similarity:.2f})"))
        if removed:
            keep[unique[np.fromiter(removed, dtype=np.int64, count=len(removed))]] = False
        exact_removed, near_removed = int(duplicate.sum()), len(removed)
    else:
        exact_removed = near_removed = 0

    previews: dict[int, list[tuple[list[RemovedSample], int, str]]] = {}
    exact_list: list[RemovedSample] = []
    near_list: list[RemovedSample] = []
    for target, samples in ((exact_list, exact_samples), (near_list, near_samples)):
        for vi, index, reason in samples:
            previews.setdefault(vi, []).append((target, index, reason))
    quality_list: list[RemovedSample] = []
    pii_list: list[RemovedSample] = []
    pii_total: Counter[str] = Counter()
    low_quality = 0
    stage_index = pii_index = 0
    counts = {"train": 0, "validation": 0}
    acc = StatsAccumulator(count_tokens) if stats else None
    with (work / "records.jsonl").open("rb") as records:
        for vi, record in enumerate(records):
            record = record[:-1]
            example: Example | None = None
            if vi in previews:
                example = _decode(record, a.formats[vi])
                for target, index, reason in previews[vi]:
                    target.append(RemovedSample(index, reason, preview(example)))
            if not keep[vi]:
                continue
            if need_examples or min_quality > 0.0 or scrub_pii or acc is not None:
                example = example or _decode(record, a.formats[vi])
            if min_quality > 0.0:
                assert example is not None
                q = quality(example)
                index, stage_index = stage_index, stage_index + 1
                if q.score < min_quality:
                    low_quality += 1
                    if len(quality_list) < MAX_SAMPLES:
                        quality_list.append(RemovedSample(index, quality_reason(q, min_quality), preview(example)))
                    continue
            is_validation = bool(a.validation[vi])
            if scrub_pii:
                assert example is not None
                scrubbed, changed = scrub_example(example)
                index, pii_index = pii_index, pii_index + 1
                if changed:
                    pii_total.update(changed)
                    if len(pii_list) < MAX_SAMPLES:
                        pii_list.append(RemovedSample(index, ", ".join(
                            f"{kind} x{changed[kind]}" for kind in PII_KINDS if changed[kind]), preview(scrubbed)))
                    example = scrubbed
                    record = to_openai_record(example)
                    if not a.has_conversation[vi]:
                        is_validation = bucket(seed, f"hash:{content_hash(example)}") < validation_fraction
            counts["validation" if is_validation else "train"] += 1
            if acc is not None:
                assert example is not None
                acc.add(example)
            emit(is_validation, example, record)

    reports: list[StageReport] = []
    if dedupe:
        reports.append(StageReport("exact_dedupe", exact_removed, tuple(exact_list),
                                   {"exact_duplicates": exact_removed}))
        reports.append(StageReport("near_dedupe", near_removed, tuple(near_list),
                                   {"near_duplicates": near_removed}))
    reports.append(StageReport("quality", low_quality, tuple(quality_list), {"low_quality": low_quality}))
    pii = dict.fromkeys(PII_KINDS, 0)
    if scrub_pii:
        pii = {kind: pii_total[kind] for kind in PII_KINDS}
        reports.append(StageReport("pii", 0, tuple(pii_list), dict(pii)))
    lineage = Lineage(a.source, a.blank, a.invalid, valid, exact_removed, near_removed, low_quality, pii,
                      counts["train"], counts["validation"])
    final_stats = acc.result() if acc is not None else compute_stats([], count_tokens)
    return a.format, False, a.issues, lineage, reports, final_stats


def run_pipeline(
    lines: Iterable[bytes],
    *,
    format: str | None = None,
    detect: Literal["file", "line"] = "file",
    policy: Policy = "lenient",
    dedupe: bool = True,
    near_dup_threshold: float = DEFAULT_NEAR_DUP_THRESHOLD,
    min_quality: float = DEFAULT_MIN_QUALITY,
    scrub_pii: bool = False,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 0,
    max_tokens: int | None = None,
    count_tokens: TokenCounter = whitespace_tokens,
    workers: int = 1,
    work_dir: Path | None = None,
) -> PipelineResult:
    """Run every stage over raw JSONL lines; same input and settings give identical output.

    ``format=None`` detects the file's format (see the module docstring), or, with
    ``detect="line"``, each line's own format (for several files of different formats; the
    result's ``format`` is then None and ``stats.format_mix`` tells the mix).  ``dedupe`` turns on
    both exact and near-duplicate removal (``near_dup_threshold``; 1.0 still catches
    near-identical texts whose MinHash estimate is exactly 1).  ``min_quality`` 0 keeps every
    example.  ``workers`` > 1 parses and hashes in that many processes (``count_tokens`` must
    then be picklable); ``work_dir`` holds the temporary spill files (default: the system's).

    The result is exactly what chaining the list stages of :mod:`.clean` and :mod:`.split`
    gives; this function only keeps less in memory on the way.
    """
    train: list[Example] = []
    validation: list[Example] = []

    def emit(is_validation: bool, example: Example | None, record: bytes) -> None:
        assert example is not None
        (validation if is_validation else train).append(example)

    with tempfile.TemporaryDirectory(dir=work_dir, prefix="pipeline-") as tmp:
        fmt, rejected, issues, lineage, reports, stats = _run(
            lines, Path(tmp), emit, need_examples=True, format=format, detect=detect, policy=policy, dedupe=dedupe,
            near_dup_threshold=near_dup_threshold, min_quality=min_quality, scrub_pii=scrub_pii,
            validation_fraction=validation_fraction, seed=seed, max_tokens=max_tokens, count_tokens=count_tokens,
            stats=True, workers=workers)
    return PipelineResult(format=fmt, rejected=rejected, train=train, validation=validation, issues=issues,
                          lineage=lineage, reports=reports, stats=stats)


def run_pipeline_to_files(
    lines: Iterable[bytes],
    out_dir: Path,
    *,
    format: str | None = None,
    detect: Literal["file", "line"] = "file",
    policy: Policy = "lenient",
    dedupe: bool = True,
    near_dup_threshold: float = DEFAULT_NEAR_DUP_THRESHOLD,
    min_quality: float = DEFAULT_MIN_QUALITY,
    scrub_pii: bool = False,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 0,
    max_tokens: int | None = None,
    count_tokens: TokenCounter = whitespace_tokens,
    stats: bool = True,
    workers: int = 1,
) -> PipelineFiles:
    """:func:`run_pipeline` for data that should not sit in memory: the splits are written to
    ``out_dir/train.jsonl`` and ``out_dir/validation.jsonl`` (OpenAI chat JSONL, what
    :func:`.export.export_lines` writes for ``"openai"``) while the examples stream through, and
    spill files live in ``out_dir`` until the run ends.  ``stats=False`` skips the statistics
    (they then count nothing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, validation_path = out_dir / "train.jsonl", out_dir / "validation.jsonl"
    with (train_path.open("wb") as train, validation_path.open("wb") as valid,
          tempfile.TemporaryDirectory(dir=out_dir, prefix=".pipeline-") as tmp):

        def emit(is_validation: bool, example: Example | None, record: bytes) -> None:
            out = valid if is_validation else train
            out.write(record)
            out.write(b"\n")

        fmt, rejected, issues, lineage, reports, final_stats = _run(
            lines, Path(tmp), emit, need_examples=False, format=format, detect=detect, policy=policy,
            dedupe=dedupe, near_dup_threshold=near_dup_threshold, min_quality=min_quality, scrub_pii=scrub_pii,
            validation_fraction=validation_fraction, seed=seed, max_tokens=max_tokens, count_tokens=count_tokens,
            stats=stats, workers=workers)
    return PipelineFiles(format=fmt, rejected=rejected, issues=issues, lineage=lineage, reports=reports,
                         stats=final_stats, train_path=train_path, validation_path=validation_path)
