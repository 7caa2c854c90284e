"""The whole pipeline: parse -> validate -> token limit -> dedupe -> quality -> PII -> split -> stats.

Lines are parsed one at a time.  Without an explicit ``format`` the file format is detected
from the first :data:`.formats.DEFAULT_DETECT_LINES` recognisable lines, which are the only
raw lines held in memory together; every line is then converted with that format.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Final, Literal

from .clean import (
    DEFAULT_NEAR_DUP_THRESHOLD,
    PII_KINDS,
    StageReport,
    dedupe_exact,
    dedupe_near,
    filter_quality,
)
from .clean import scrub_pii as scrub_pii_stage
from .formats import DEFAULT_DETECT_LINES, Example, LineIssue, detect_file_format, parse_line
from .split import DEFAULT_VALIDATION_FRACTION, split_examples
from .stats import DatasetStats, TokenCounter, compute_stats, example_tokens

Policy = Literal["strict", "lenient"]
DEFAULT_MIN_QUALITY: Final = 0.0


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


def _detect(lines: Iterator[bytes], max_lines: int) -> tuple[str | None, list[bytes]]:
    """Read lines until ``max_lines`` recognisable ones are seen; return the format and the buffer."""
    buffered: list[bytes] = []
    for raw in lines:
        buffered.append(raw)
        if sum(1 for b in buffered if b.strip()) >= max_lines:
            break
    return detect_file_format(buffered, max_lines), buffered


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
) -> PipelineResult:
    """Run every stage over raw JSONL lines; same input and settings give identical output.

    ``format=None`` detects the file's format (see the module docstring), or, with
    ``detect="line"``, each line's own format (for several files of different formats; the
    result's ``format`` is then None and ``stats.format_mix`` tells the mix).  ``dedupe`` turns on
    both exact and near-duplicate removal (``near_dup_threshold``; 1.0 still catches
    near-identical texts whose MinHash estimate is exactly 1).  ``min_quality`` 0 keeps every
    example.
    """
    if policy not in ("strict", "lenient"):
        raise ValueError("policy must be 'strict' or 'lenient'")
    iterator = iter(lines)
    fmt = format
    head: list[bytes] = []
    if fmt is None and detect == "file":
        fmt, head = _detect(iterator, DEFAULT_DETECT_LINES)

    issues: list[LineIssue] = []
    examples: list[Example] = []
    source = blank = invalid = 0
    for line_no, raw in enumerate(chain(head, iterator), start=1):
        source += 1
        if not raw.strip():
            blank += 1
            continue
        example, line_issues = parse_line(line_no, raw, fmt)
        if example is not None and max_tokens is not None:
            n = example_tokens(example, count_tokens)
            if n > max_tokens:
                line_issues.append(LineIssue(line_no, "messages", f"{n} tokens, over the limit of {max_tokens}"))
                example = None
        if line_issues:
            invalid += 1
            issues.extend(line_issues)
        elif example is not None:
            examples.append(example)
    head.clear()

    valid = len(examples)
    if policy == "strict" and issues:
        return PipelineResult(
            format=fmt, rejected=True, train=[], validation=[], issues=issues,
            lineage=Lineage(source, blank, invalid, valid, pii_replacements=dict.fromkeys(PII_KINDS, 0)),
            reports=[], stats=compute_stats([], count_tokens),
        )

    reports: list[StageReport] = []
    exact = near = 0
    if dedupe:
        examples, report = dedupe_exact(examples)
        exact = report.removed
        reports.append(report)
        examples, report = dedupe_near(examples, near_dup_threshold)
        near = report.removed
        reports.append(report)
    examples, report = filter_quality(examples, min_quality)
    low = report.removed
    reports.append(report)
    pii = dict.fromkeys(PII_KINDS, 0)
    if scrub_pii:
        examples, report = scrub_pii_stage(examples)
        pii = dict(report.counts)
        reports.append(report)
    train, validation = split_examples(examples, validation_fraction, seed)
    return PipelineResult(
        format=fmt,
        rejected=False,
        train=train,
        validation=validation,
        issues=issues,
        lineage=Lineage(source, blank, invalid, valid, exact, near, low, pii, len(train), len(validation)),
        reports=reports,
        stats=compute_stats(train + validation, count_tokens),
    )

