"""The dataset service's processing core: a pure library (no database, web or network).

``formats`` converts input lines to :class:`Example`, ``clean`` deduplicates, scores and
scrubs, ``split`` makes a deterministic train/validation split, ``export`` writes examples
back out, ``stats`` summarises them and :func:`run_pipeline` chains everything.
"""

from .clean import (
    Quality,
    RemovedSample,
    StageReport,
    content_hash,
    dedupe_exact,
    dedupe_near,
    filter_quality,
    normalized_text,
    quality,
    quality_score,
    scrub_pii,
    scrub_text,
)
from .export import EXPORT_FORMATS, ExportError, export_jsonl, export_lines
from .formats import (
    FORMATS,
    UNKNOWN,
    Example,
    LineIssue,
    Message,
    convert_object,
    detect_file_format,
    detect_format,
    parse_eval_line,
    parse_line,
)
from .run import Lineage, PipelineFiles, PipelineResult, Policy, run_pipeline, run_pipeline_to_files, whitespace_tokens
from .split import group_key, split_examples
from .stats import DatasetStats, compute_stats

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "UNKNOWN",
    "DatasetStats",
    "Example",
    "ExportError",
    "LineIssue",
    "Lineage",
    "Message",
    "PipelineFiles",
    "PipelineResult",
    "Policy",
    "Quality",
    "RemovedSample",
    "StageReport",
    "compute_stats",
    "content_hash",
    "convert_object",
    "dedupe_exact",
    "dedupe_near",
    "detect_file_format",
    "detect_format",
    "export_jsonl",
    "export_lines",
    "filter_quality",
    "group_key",
    "normalized_text",
    "parse_eval_line",
    "parse_line",
    "quality",
    "quality_score",
    "run_pipeline",
    "run_pipeline_to_files",
    "scrub_pii",
    "scrub_text",
    "split_examples",
    "whitespace_tokens",
]
