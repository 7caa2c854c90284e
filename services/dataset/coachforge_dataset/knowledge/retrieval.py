"""BM25 retrieval over a knowledge base's chunks (the ``bm25s`` library), the in-process cache of
the indexes, and the selection of ranked chunks within a token budget.

Deterministic: the same chunks in the same order and the same query give the same ranking, equal
scores being ranked in the order the chunks were indexed (documents in the order they were added,
each document's chunks in order)."""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

logging.getLogger("bm25s").setLevel(logging.WARNING)  # the library sets DEBUG: a line for every index built

WORD = re.compile(r"[^\W_]+")
"""A term: a run of letters and digits (anything else separates terms)."""
STOPWORDS = frozenset(STOPWORDS_EN)
"""English stopwords (the ``bm25s`` library's list), left out of indexes and queries."""


def terms(text: str) -> list[str]:
    """The terms BM25 sees of ``text``, for indexing and for queries alike: lowercased runs of
    letters and digits, English stopwords left out."""
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]


@dataclass(frozen=True)
class Hit:
    """A chunk a query matched: its position in the index and its BM25 score."""

    position: int
    score: float


class KnowledgeIndex:
    """A BM25 index (Lucene's variant) of texts, searched by position: position ``i`` is the
    ``i``-th text given."""

    def __init__(self, texts: Iterable[str], k1: float = 1.5, b: float = 0.75) -> None:
        corpus = [terms(t) for t in texts]
        self.size = len(corpus)
        self._bm25: bm25s.BM25 | None = None
        if any(corpus):
            self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
            self._bm25.index(corpus, show_progress=False)

    def search(self, query: str, k: int) -> list[Hit]:
        """The ``k`` best texts for ``query`` by score (only texts with at least one of the query's
        terms), equal scores in position order."""
        if self._bm25 is None or k <= 0:
            return []
        ids = self._bm25.get_tokens_ids(terms(query))
        if not ids:
            return []
        scores = self._bm25.get_scores_from_ids(ids)
        matched = np.flatnonzero(scores > 0)
        if len(matched) > k:  # keep every text scoring at least the k-th best, so ties are all seen
            kth = np.partition(scores[matched], len(matched) - k)[len(matched) - k]
            matched = matched[scores[matched] >= kth]
        order = np.lexsort((matched, -scores[matched]))[:k]
        return [Hit(int(p), float(scores[p])) for p in matched[order]]


T = TypeVar("T")


def within_budget(ranked: Sequence[T], tokens: Callable[[T], int], max_tokens: int | None) -> list[T]:
    """The items of ``ranked`` kept, in rank order, when each is taken if it still fits in
    ``max_tokens`` with those taken before it (one that does not fit is skipped and the next ones
    are still tried); all of them when ``max_tokens`` is None."""
    if max_tokens is None:
        return list(ranked)
    kept: list[T] = []
    used = 0
    for item in ranked:
        size = tokens(item)
        if used + size <= max_tokens:
            kept.append(item)
            used += size
    return kept


@dataclass(frozen=True)
class CachedIndex:
    """A knowledge base's index at one revision, with the chunk id of each position."""

    revision: int
    chunk_ids: list[str]
    index: KnowledgeIndex


class IndexCache:
    """The indexes of the most recently searched knowledge bases (``size`` of them), each rebuilt
    when its knowledge base's revision changed. Safe to use from several threads; a knowledge base's
    index is built by one thread at a time while searches of other knowledge bases go on."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, CachedIndex] = OrderedDict()
        self._building: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _fresh(self, key: str, revision: int) -> CachedIndex | None:
        entry = self._entries.get(key)
        if entry is None or entry.revision != revision:
            return None
        self._entries.move_to_end(key)
        return entry

    def get(self, key: str, revision: int, build: Callable[[], CachedIndex]) -> tuple[CachedIndex, bool]:
        """The index of ``key`` at ``revision``, and whether it was built by this call (``build``
        makes it when the cache has none at that revision)."""
        with self._lock:
            entry = self._fresh(key, revision)
            if entry is not None:
                return entry, False
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                entry = self._fresh(key, revision)
                if entry is not None:
                    return entry, False
            entry = build()
            with self._lock:
                self._entries[key] = entry
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return entry, True

    def drop(self, key: str) -> None:
        """Forget ``key``'s index (its knowledge base was deleted)."""
        with self._lock:
            self._entries.pop(key, None)
            self._building.pop(key, None)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries
