"""Knowledge base search: BM25 index build time and search latency over synthetic chunks.

Builds the dataset service's knowledge index (:class:`KnowledgeIndex`: the service's tokenizer,
then ``bm25s``) over ``--chunks`` synthetic chunks, runs ``--queries`` searches (top 4) and prints
the build time and the p50/p95/p99 search latency in milliseconds. Text is made of sentences of
words drawn with a Zipf distribution from a vocabulary of a few thousand made-up words (seeded):
like prose, a few words are in most chunks and most words in few. Queries are 3 to 12 words
drawn the same way, so they carry the frequent words whose postings are long, as a conversation's
last turns do.

The baseline is a plain Python BM25 (the same formula and terms, term counts per chunk in
dictionaries, every chunk scored for every query) over a ``--baseline-chunks`` subset, against
the index built over the same subset. ``--service`` also measures the whole search call of the
service (``knowledge.service.search``: the knowledge base row, the cached index, ranking, the
chunks read back) on SQLite with the chunks stored as documents, the index already cached.

    .venv/bin/python bench/knowledge_search.py [--chunks 100000] [--queries 500] [--seed 0] [--service]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from coachforge_dataset.knowledge.retrieval import KnowledgeIndex, terms

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vi", "po", "se", "da", "fe", "gu", "ho", "ji", "zu", "be", "ar",
             "el", "on", "us"]


def vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


class Prose:
    """Sentences of Zipf-distributed words (exponent ``s``) from a made-up vocabulary."""

    def __init__(self, seed: int, vocab_size: int = 4000, s: float = 1.07) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab = vocabulary(random.Random(seed), vocab_size)
        weights = 1.0 / np.arange(1, vocab_size + 1) ** s
        self.cdf = np.cumsum(weights / weights.sum())
        order = self.rng.permutation(vocab_size)  # which word is frequent: not alphabetical
        self.ranked = [self.vocab[i] for i in order]

    def words(self, n: int) -> list[str]:
        picks = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), len(self.ranked) - 1)
        return [self.ranked[i] for i in picks]

    def chunk(self) -> str:
        """About 150 words in sentences of 6 to 20 words (~170 approximate tokens)."""
        sentences = []
        for length in self.rng.integers(6, 21, size=int(self.rng.integers(7, 13))):
            ws = self.words(int(length))
            sentences.append(" ".join(ws).capitalize() + ".")
        return " ".join(sentences)

    def query(self) -> str:
        return " ".join(self.words(int(self.rng.integers(3, 13))))


def percentiles(samples: Sequence[float]) -> str:
    ms = np.array(samples) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return f"p50 {p50:.2f} ms  p95 {p95:.2f} ms  p99 {p99:.2f} ms  (mean {statistics.fmean(ms):.2f} ms)"


def timed(fn: Callable[[str], object], queries: Sequence[str]) -> list[float]:
    out = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - start)
    return out


class NaiveBM25:
    """Lucene's BM25 in plain Python: every chunk's term counts scored for every query."""

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.docs = [Counter(terms(t)) for t in texts]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / len(self.docs)
        df: Counter[str] = Counter()
        for d in self.docs:
            df.update(d.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.k1, self.b = k1, b

    def search(self, query: str, k: int) -> list[int]:
        q = [t for t in terms(query) if t in self.idf]
        scores = []
        for i, (doc, length) in enumerate(zip(self.docs, self.lengths, strict=True)):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg)
            s = sum(self.idf[t] * doc[t] / (doc[t] + norm) for t in q if t in doc)
            if s > 0:
                scores.append((-s, i))
        return [i for _, i in sorted(scores)[:k]]


def service_search(chunks: list[str], queries: list[str]) -> None:
    from sqlalchemy import insert, update

    from coachforge_dataset.knowledge import service as knowledge
    from coachforge_dataset.knowledge.chunking import approx_tokens
    from coachforge_dataset.knowledge.schemas import CreateKnowledgeBase, SearchKnowledgeBase
    from coachforge_dataset.models import KnowledgeBase, KnowledgeChunk, KnowledgeDocument
    from coachforge_dataset.service import DatasetDeps
    from coachforge_dataset.settings import DatasetSettings
    from coachforge_shared import migrate
    from coachforge_shared.auth import create_tenant
    from coachforge_shared.db import Database
    from coachforge_shared.ids import new_id
    from coachforge_shared.logging import configure_logging

    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        migrate.upgrade(url)
        db = Database(url)
        create_tenant(db, "bench")
        deps = DatasetDeps(db=db, settings=DatasetSettings(trainer_grpc_target=""), files_dir=Path(tmp) / "files",
                           models_dir=Path(tmp) / "models")
        kb = knowledge.create_knowledge_base(deps, "bench", CreateKnowledgeBase(name="bench"))
        start = time.perf_counter()
        per_doc = 100  # the chunks as they are, stored as rows: this measures searches, not chunking
        with db.session() as s:
            for i in range(0, len(chunks), per_doc):
                doc_id = new_id("kbdoc")
                part = chunks[i:i + per_doc]
                s.execute(insert(KnowledgeDocument).values(
                    id=doc_id, tenant_id="bench", knowledge_base_id=kb.id, filename=f"doc {i // per_doc}", bytes=0,
                    sha256="", chunk_count=len(part), token_count=0, status="completed"))
                s.execute(insert(KnowledgeChunk), [
                    {"id": new_id("kbchunk"), "knowledge_base_id": kb.id, "document_id": doc_id, "ordinal": j,
                     "heading": "", "text": text, "tokens": approx_tokens(text), "char_start": 0,
                     "char_end": len(text)} for j, text in enumerate(part)])
            s.execute(update(KnowledgeBase).where(KnowledgeBase.id == kb.id).values(
                chunk_count=len(chunks), revision=KnowledgeBase.revision + 1))
        print(f"service: {len(chunks)} chunks stored in SQLite in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        knowledge.search(deps, "bench", kb.id, SearchKnowledgeBase(query=queries[0]))
        print(f"service: first search (index built from the database) {time.perf_counter() - start:.2f} s")
        samples = timed(lambda q: knowledge.search(deps, "bench", kb.id, SearchKnowledgeBase(query=q)), queries)
        print(f"service: search (top 4, index cached, SQLite): {percentiles(samples)}")
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--baseline-chunks", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--service", action="store_true", help="also measure the service's search on SQLite")
    args = parser.parse_args()

    prose = Prose(args.seed)
    start = time.perf_counter()
    chunks = [prose.chunk() for _ in range(args.chunks)]
    queries = [prose.query() for _ in range(args.queries)]
    words = sum(len(c.split()) for c in chunks)
    print(f"corpus: {len(chunks)} chunks, {words / len(chunks):.0f} words a chunk, "
          f"{len(prose.vocab)} word vocabulary (generated in {time.perf_counter() - start:.1f} s)")

    start = time.perf_counter()
    index = KnowledgeIndex(chunks)
    print(f"index build: {time.perf_counter() - start:.2f} s")
    index.search(queries[0], 4)  # first call out of the measure
    samples = timed(lambda q: index.search(q, 4), queries)
    print(f"search over {len(chunks)} chunks (top 4): {percentiles(samples)}")

    subset = chunks[:args.baseline_chunks]
    small = KnowledgeIndex(subset)
    naive = NaiveBM25(subset)
    few = queries[:50]
    for q in few[:10]:  # the same ranking, or the comparison means nothing
        assert [h.position for h in small.search(q, 4)] == naive.search(q, 4), q
    fast = timed(lambda q: small.search(q, 4), few)
    slow = timed(lambda q: naive.search(q, 4), few)
    print(f"baseline over {len(subset)} chunks, {len(few)} queries: plain Python BM25 {percentiles(slow)}")
    print(f"                                    index              {percentiles(fast)}")
    speedup = statistics.median(slow) / statistics.median(fast)
    print(f"                                    median speed-up    {speedup:.0f}x")

    if args.service:
        service_search(chunks, queries)


if __name__ == "__main__":
    main()
