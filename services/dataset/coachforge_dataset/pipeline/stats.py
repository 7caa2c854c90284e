"""Dataset statistics: counts, tokens per role and per example, format mix, quality histogram."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from .clean import quality_score
from .formats import ROLES, Example

TokenCounter = Callable[[str], int]
TOKEN_BUCKET_EDGES: Final[tuple[int, ...]] = (64, 128, 256, 512, 1024, 2048, 4096)
QUALITY_BUCKETS: Final = 10


def token_bucket(tokens: int) -> str:
    """The histogram label for an example's token count: ``"0-63"``, ..., ``"4096+"``."""
    low = 0
    for edge in TOKEN_BUCKET_EDGES:
        if tokens < edge:
            return f"{low}-{edge - 1}"
        low = edge
    return f"{low}+"


def token_bucket_labels() -> list[str]:
    """All token histogram labels, in order."""
    lows = (0, *TOKEN_BUCKET_EDGES)
    return [f"{lo}-{hi - 1}" for lo, hi in zip(lows, TOKEN_BUCKET_EDGES, strict=False)] + [f"{lows[-1]}+"]


def quality_bucket(score: float) -> str:
    """The quality histogram label: ``"0.0-0.1"`` ... ``"0.9-1.0"`` (1.0 falls in the last)."""
    i = min(int(score * QUALITY_BUCKETS), QUALITY_BUCKETS - 1)
    return f"{i / QUALITY_BUCKETS:.1f}-{(i + 1) / QUALITY_BUCKETS:.1f}"


@dataclass(frozen=True)
class DatasetStats:
    """Statistics of a list of examples; histograms list every bucket, empty ones included."""

    examples: int
    turns: int
    tokens_total: int
    tokens_per_role: dict[str, int] = field(default_factory=dict)
    token_histogram: dict[str, int] = field(default_factory=dict)
    format_mix: dict[str, int] = field(default_factory=dict)
    quality_histogram: dict[str, int] = field(default_factory=dict)


def example_tokens(example: Example, count_tokens: TokenCounter) -> int:
    """Tokens over all turns' contents (no chat-template overhead)."""
    return sum(count_tokens(m.content) for m in example.messages)


class StatsAccumulator:
    """:class:`DatasetStats` built one example at a time (nothing is kept but the counters)."""

    def __init__(self, count_tokens: TokenCounter, score: Callable[[Example], float] = quality_score) -> None:
        self.count_tokens = count_tokens
        self.score = score
        self.examples = 0
        self.turns = 0
        self.per_role: Counter[str] = Counter({role: 0 for role in ROLES})
        self.hist: Counter[str] = Counter({label: 0 for label in token_bucket_labels()})
        self.quality_hist: Counter[str] = Counter(
            {quality_bucket(i / QUALITY_BUCKETS): 0 for i in range(QUALITY_BUCKETS)})
        self.formats: Counter[str] = Counter()

    def add(self, ex: Example) -> None:
        total = 0
        for m in ex.messages:
            n = self.count_tokens(m.content)
            self.per_role[m.role] += n
            total += n
        self.examples += 1
        self.turns += len(ex.messages)
        self.hist[token_bucket(total)] += 1
        self.formats[ex.source_format] += 1
        self.quality_hist[quality_bucket(self.score(ex))] += 1

    def result(self) -> DatasetStats:
        return DatasetStats(
            examples=self.examples,
            turns=self.turns,
            tokens_total=sum(self.per_role.values()),
            tokens_per_role=dict(self.per_role),
            token_histogram=dict(self.hist),
            format_mix=dict(sorted(self.formats.items())),
            quality_histogram=dict(self.quality_hist),
        )


def compute_stats(
    examples: Sequence[Example],
    count_tokens: TokenCounter,
    score: Callable[[Example], float] = quality_score,
) -> DatasetStats:
    """Compute :class:`DatasetStats`; ``count_tokens`` should be the base model's tokenizer."""
    acc = StatsAccumulator(count_tokens, score)
    for ex in examples:
        acc.add(ex)
    return acc.result()
