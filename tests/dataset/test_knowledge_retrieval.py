"""BM25 retrieval of knowledge chunks: the one tokenizer, exact rankings on a small hand-made
corpus (with the reason each order is right), ties in index order, the token budget selection,
and the per-process index cache."""

from __future__ import annotations

import threading

import pytest

from coachforge_dataset.knowledge.retrieval import CachedIndex, IndexCache, KnowledgeIndex, terms, within_budget

CORPUS = [
    ("polarized", "Polarized training spends about 80 percent of sessions at low intensity and 20 percent at high "
                  "intensity, with little time in the moderate zone between the two thresholds."),
    ("taper", "A taper cuts training volume by 40 to 60 percent over the last one to three weeks before a race while "
              "keeping some intensity, so fatigue drops and fitness stays."),
    ("recovery", "Recovery days are very easy sessions or full rest. Soreness, a raised resting heart rate and poor "
                 "sleep are signs that recovery is not complete."),
    ("nutrition", "During long sessions take 60 to 90 grams of carbohydrate per hour. After hard training, protein and "
                  "carbohydrate speed the recovery of muscle glycogen."),
    ("sleep", "Sleep is when adaptation happens: most endurance athletes need eight hours or more, and a short night "
              "before a hard session lowers its quality."),
    ("intervals", "High intensity intervals such as five times four minutes above threshold raise VO2max; schedule "
                  "them after an easy day, never two days in a row."),
]
NAMES = [name for name, _ in CORPUS]


def test_terms_lowercase_split_on_non_alphanumerics_and_drop_stopwords() -> None:
    assert terms("The TAPER: 2-3 weeks, before a race!") == ["taper", "2", "3", "weeks", "before", "race"]
    assert terms("VO2max_5x4 Über-distance") == ["vo2max", "5x4", "über", "distance"]
    assert terms("it is the and of") == [] and terms("") == []


@pytest.fixture(scope="module")
def index() -> KnowledgeIndex:
    return KnowledgeIndex(text for _, text in CORPUS)


def ranked(index: KnowledgeIndex, query: str, k: int = 10) -> list[str]:
    return [NAMES[h.position] for h in index.search(query, k)]


@pytest.mark.parametrize(("query", "expected"), [
    # taper, before and race all in the taper document; "long" only in nutrition (idf of a term in
    # one document) beats "before", which sleep shares with taper (two documents)
    ("how long should my taper be before a race", ["taper", "nutrition", "sleep"]),
    # polarized says "intensity" twice and "high" once; intervals once each in as long a text;
    # taper only "intensity", in a longer text
    ("high intensity", ["polarized", "intervals", "taper"]),
    # recovery has "recovery" twice and "sleep" once; nutrition ("recovery") and sleep ("sleep")
    # match one term of the same document frequency once in texts of the same length: equal
    # scores, ranked in index order
    ("sleep and recovery", ["recovery", "nutrition", "sleep"]),
    ("carbohydrate per hour", ["nutrition"]),
    # intervals has "easy" and "day"; recovery only "easy" ("days" is another term: no stemming)
    ("easy day", ["intervals", "recovery"]),
    # only stopwords and words no document has: nothing, rather than everything at score 0
    ("what is the weather", []),
])
def test_rankings_on_a_small_corpus(index: KnowledgeIndex, query: str, expected: list[str]) -> None:
    assert ranked(index, query) == expected


def test_scores_decrease_and_k_cuts_the_list(index: KnowledgeIndex) -> None:
    hits = index.search("high intensity", 10)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and hits[-1].score > 0
    assert ranked(index, "high intensity", 2) == ["polarized", "intervals"]
    assert index.search("high intensity", 0) == []


def test_ties_follow_index_order_whatever_k() -> None:
    twins = KnowledgeIndex(["easy run", "hard run", "easy ride", "easy swim", "easy row"])
    assert [h.position for h in twins.search("easy", 10)] == [0, 2, 3, 4]
    assert [h.position for h in twins.search("easy", 2)] == [0, 2]  # not whichever the partition kept
    reordered = KnowledgeIndex([t for _, t in CORPUS][::-1])
    assert [NAMES[::-1][h.position] for h in reordered.search("sleep and recovery", 10)] == [
        "recovery", "sleep", "nutrition"]


def test_same_corpus_same_ranking() -> None:
    first = KnowledgeIndex(text for _, text in CORPUS).search("training intensity before a race", 6)
    again = KnowledgeIndex(text for _, text in CORPUS).search("training intensity before a race", 6)
    assert first == again and [NAMES[h.position] for h in first] == [
        "taper", "polarized", "sleep", "nutrition", "intervals"]  # recovery has none of the terms


def test_an_empty_index_finds_nothing() -> None:
    assert KnowledgeIndex([]).search("taper", 4) == []
    assert KnowledgeIndex(["...", "the and of"]).search("taper", 4) == []


def test_budget_keeps_what_fits_in_rank_order() -> None:
    items = [("a", 50), ("b", 120), ("c", 40), ("d", 30), ("e", 10)]
    size = dict(items).__getitem__
    names = [n for n, _ in items]
    assert within_budget(names, size, None) == names
    assert within_budget(names, size, 1000) == names
    # a (50), b would make 170: skipped, c (90), d would make 120: skipped, e (100)
    assert within_budget(names, size, 100) == ["a", "c", "e"]
    assert within_budget(names, size, 80) == ["a", "d"]  # then c, e would pass 80
    assert within_budget(names, size, 49) == ["c"]  # a and b too big alone; then d and e would pass 49
    assert within_budget(names, size, 5) == []
    assert within_budget([], size, 10) == []


def entry(revision: int, built: list[int]) -> CachedIndex:
    built.append(revision)
    return CachedIndex(revision, ["c1"], KnowledgeIndex(["taper"]))


def test_the_cache_rebuilds_on_a_new_revision_and_drops_the_least_recently_used() -> None:
    cache = IndexCache(size=2)
    built: list[int] = []
    first, was_built = cache.get("kb-a", 1, lambda: entry(1, built))
    assert was_built and first.revision == 1
    again, was_built = cache.get("kb-a", 1, lambda: entry(1, built))
    assert again is first and not was_built
    newer, was_built = cache.get("kb-a", 2, lambda: entry(2, built))
    assert was_built and newer.revision == 2 and built == [1, 2]
    cache.get("kb-b", 1, lambda: entry(1, built))
    cache.get("kb-a", 2, lambda: entry(2, built))  # kb-a used last: kb-b goes first
    cache.get("kb-c", 1, lambda: entry(1, built))
    assert "kb-a" in cache and "kb-b" not in cache and "kb-c" in cache
    cache.drop("kb-a")
    assert "kb-a" not in cache


def test_one_build_per_knowledge_base_when_searches_arrive_together() -> None:
    cache = IndexCache(size=4)
    built: list[int] = []
    release = threading.Event()

    def slow() -> CachedIndex:
        release.wait(5)
        return entry(7, built)

    results: list[CachedIndex] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("kb-a", 7, slow)[0])) for _ in range(4)]
    for t in threads:
        t.start()
    release.set()
    for t in threads:
        t.join()
    assert built == [7] and len(results) == 4 and all(r is results[0] for r in results)
