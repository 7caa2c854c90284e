"""Dataset service metrics. Labels are bounded: tenant, and whether a search found its knowledge
base's index in memory (never a knowledge base id)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

KNOWLEDGE_SEARCH = Histogram(
    "coachforge_knowledge_search_seconds",
    "Time to answer one knowledge base search (index lookup or rebuild, ranking, reading the chunks), by "
    "index: cached (the process had the knowledge base's index at its current revision) or built.",
    ["tenant", "index"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
KNOWLEDGE_INDEX_BUILDS = Histogram(
    "coachforge_knowledge_index_build_seconds",
    "Time to build a knowledge base's search index from its chunks in the database.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
KNOWLEDGE_DOCUMENTS = Counter(
    "coachforge_knowledge_documents_total", "Knowledge documents added and deleted.", ["tenant", "action"])
